"""benchmarks/ imports without a cycle: the shared modules are leaves, each benchmark imports them at its top.

The graph is read from the source with ``ast``, every import counted wherever it
sits (one moved into a function to dodge a cycle is still an edge). The checker is
shown to find cycles too: on small graphs, and on modules written to a temporary
folder the way benchmarks/ was before (a shared helper importing ``run`` back).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE = "benchmarks"
FOLDER = Path(__file__).resolve().parents[2] / PACKAGE
SHARED = {"harness", "versions"}


def imports_of(source: str, *, top_only: bool = False) -> set[str]:
    """Names under ``benchmarks.`` that a module directly in the package imports (``top_only``: outside defs)."""
    tree = ast.parse(source)
    statements: Iterable[ast.stmt] = tree.body
    if top_only:
        statements = [s for s in tree.body if not isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    found: set[str] = set()
    for node in (n for statement in statements for n in ast.walk(statement)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                first, _, rest = alias.name.partition(".")
                if first == PACKAGE and rest:
                    found.add(rest.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            parts = node.module.split(".") if node.module else []
            if node.level == 1:  # from . import x, from .x import y
                parts = [PACKAGE, *parts]
            if node.level > 1 or parts[:1] != [PACKAGE]:
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from benchmarks import x, y
                found.update(alias.name for alias in node.names)
    return found


def import_graph(folder: Path, *, top_only: bool = False) -> dict[str, set[str]]:
    """Module name → the package's modules it imports, for every ``*.py`` directly in ``folder``."""
    modules = {path.stem: path for path in folder.glob("*.py") if path.stem != "__init__"}
    return {
        name: imports_of(path.read_text(), top_only=top_only) & modules.keys() for name, path in sorted(modules.items())
    }


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts (``[a, b, a]``), or None if the graph has none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if cycle := visit(target):
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start):
            return cycle
    return None


def test_benchmarks_have_no_import_cycle() -> None:
    graph = import_graph(FOLDER)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in benchmarks/: " + " → ".join(cycle or [])
    assert graph["run"] >= {"harness", "versions", "leases", "overhead"}  # the parser saw the real edges


def test_the_shared_modules_import_no_benchmark() -> None:
    graph = import_graph(FOLDER)
    assert graph["harness"] == set()
    assert graph["versions"] <= {"harness"}


def test_every_import_of_a_benchmarks_module_is_at_the_top() -> None:
    everywhere, at_top = import_graph(FOLDER), import_graph(FOLDER, top_only=True)
    local = {name: sorted(everywhere[name] - at_top[name]) for name in everywhere if everywhere[name] - at_top[name]}
    assert local == {}, f"imports inside functions (a cycle dodged?): {local}"


def test_imports_of_reads_every_form_of_import() -> None:
    source = """
import os
import benchmarks
import benchmarks.a
from benchmarks.b import thing
from benchmarks import c, d as e
from . import f
from .g import other
from .. import elsewhere
from wsupload.tasks import keys

def later():
    from benchmarks.h import late
"""
    assert imports_of(source) == {"a", "b", "c", "d", "f", "g", "h"}
    assert imports_of(source, top_only=True) == {"a", "b", "c", "d", "f", "g"}


def test_find_cycle_finds_one_and_only_when_there_is_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    layered = {"run": {"leases", "harness"}, "leases": {"harness", "versions"}, "versions": {"harness"}}
    assert find_cycle(layered) is None
    assert find_cycle({"x": {"y", "z"}, "y": {"z"}, "z": set()}) is None  # a diamond is not a cycle


def test_the_checks_catch_a_cycle_dodged_inside_a_function(tmp_path: Path) -> None:
    """The shape benchmarks/ had: run imports a module that imports run back, inside a function."""
    (tmp_path / "run.py").write_text("from benchmarks import overhead\nfrom benchmarks.harness import KEY\n")
    (tmp_path / "harness.py").write_text("KEY = 'k'\n")
    (tmp_path / "overhead.py").write_text("def main() -> None:\n    from benchmarks.run import KEY\n")
    assert find_cycle(import_graph(tmp_path)) == ["overhead", "run", "overhead"]
    assert import_graph(tmp_path, top_only=True)["overhead"] == set()
