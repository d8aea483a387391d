"""Another version of this code, runnable beside this checkout: a git commit installed into a venv of its own.

``install`` takes any tree git knows (a commit, or ``checkout_tree()``: this checkout
as it stands) with that tree's own pinned dependencies (``git archive`` + ``pip
install -c constraints.txt``), so a before/after is measured in one run on the same
machine. Which commit to compare with is always the caller's argument (``--before
COMMIT`` on the command line): past designs' figures are frozen in
``benchmarks/HISTORY.md``, not pinned here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from benchmarks.harness import ROOT

PRODUCER_ROUND = Path(__file__).resolve().parent / "producer_round.py"
"""Run by a version's own interpreter: its own producer enqueues files and waits for them (any version's API)."""


def git(*args: str, env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def commit_exists(ref: str) -> bool:
    found = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{ref}^{{commit}}"], capture_output=True)
    return found.returncode == 0


def commit(ref: str) -> str:
    """``argparse`` type of a ``--before`` option: ``ref``, if this clone has that commit."""
    if not commit_exists(ref):
        raise argparse.ArgumentTypeError(f"no commit {ref!r} in this clone (a shallow clone lacks old ones)")
    return ref


def install(ref: str, work: Path) -> str:
    """A venv holding tree ``ref`` of this repository, with that tree's pinned dependencies; its python."""
    source, venv = work / "src", work / "venv"
    source.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-c", str(source / "constraints.txt"), str(source)], check=True)
    shutil.rmtree(source)  # the venv holds an installed copy: nothing can import from here by accident
    return python


def console_script(python: str, name: str) -> str:
    """The console script ``name`` of the venv whose interpreter is ``python`` (every version installs ``wsupload``)."""
    return str(Path(python).parent / name)


def checkout_tree() -> str:
    """This checkout as it stands (uncommitted and untracked files too) as a git tree, for ``install``.

    Built in a throwaway index, so the checkout's own index, HEAD and files are
    left alone; only loose objects are written, as ``git stash create`` would.
    """
    with tempfile.TemporaryDirectory(prefix="wsupload-index-") as tmp:
        env = os.environ | {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git("add", "--all", env=env)
        return git("write-tree", env=env)


RESULT_FILES = ("benchmarks/RESULTS.md", "benchmarks/results.png")
"""What ``make bench`` itself writes: changed by the last run, not changes to the code measured."""


def checkout_label() -> str:
    """``now (<HEAD> + changes)``: what ``checkout_tree`` holds, for a results table (the result files aside)."""
    changed = git("status", "--porcelain", "--", ".", *(f":(exclude){path}" for path in RESULT_FILES))
    return f"now ({git('rev-parse', '--short', 'HEAD')}{' + changes' if changed else ''})"
