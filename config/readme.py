"""The README's configuration table, rendered from the settings rows (``config.settings.VARIABLES``).

Documentation tooling, never imported at run time: ``python -m wsupload.config.readme``
(``make readme``) rewrites the table in README.md in place, ``--check`` only reports
whether it is current, and a unit test fails while it is not.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from wsupload.config.settings import VARIABLES, Variable

HEADER = "| variable | default | meaning |"
README = Path(__file__).resolve().parent.parent / "README.md"
REGENERATE = "make readme"
"""The command that brings the README's table up to date (it runs ``python -m wsupload.config.readme``)."""


def render_table(variables: Iterable[Variable[Any]] = VARIABLES) -> str:
    """The Markdown table: one row per variable, in declaration order, ending with a newline."""
    lines = [HEADER, "| --- | --- | --- |"]
    lines += [f"| `{v.env}` | {v.default_cell()} | {v.meaning} |" for v in variables]
    return "\n".join(lines) + "\n"


def _table_span(readme: str) -> tuple[int, int]:
    """Where the table is: from its header line to the blank line after it (not included)."""
    start = readme.find("\n" + HEADER)
    if start < 0:
        raise ValueError(f"README has no line starting {HEADER!r}")
    start += 1
    end = readme.find("\n\n", start)
    return start, len(readme) if end < 0 else end + 1


def current_table(readme: str) -> str:
    start, end = _table_span(readme)
    return readme[start:end]


def with_table(readme: str, table: str) -> str:
    start, end = _table_span(readme)
    return readme[:start] + table + readme[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wsupload.config.readme", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the table is stale; change nothing")
    parser.add_argument("readme", nargs="?", type=Path, default=README)
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    updated = with_table(text, render_table())
    if updated == text:
        print(f"{args.readme}: configuration table is current")
        return 0
    if args.check:
        print(f"{args.readme}: configuration table is stale; run `{REGENERATE}`", file=sys.stderr)
        return 1
    args.readme.write_text(updated, encoding="utf-8")
    print(f"{args.readme}: configuration table rewritten from config/settings.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
