"""docs/configuration.md's table of variables, rendered from the settings rows (``config.settings.VARIABLES``).

Documentation tooling, never imported at run time: ``python -m wsupload.config.docs_table``
(``make docs``) rewrites the table in docs/configuration.md in place, ``--check`` only
reports whether it is current, and a unit test fails while it is not.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from wsupload.config.settings import VARIABLES, Variable

HEADER = "| variable | default | meaning |"
# resolve(): this file is reached through the wsupload/config link; the page is beside the real folder.
PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
REGENERATE = "make docs"
"""The command that brings the page's table up to date (it runs ``python -m wsupload.config.docs_table``)."""


def render_table(variables: Iterable[Variable[Any]] = VARIABLES) -> str:
    """The Markdown table: one row per variable, in declaration order, ending with a newline."""
    lines = [HEADER, "| --- | --- | --- |"]
    lines += [f"| `{v.env}` | {v.default_cell()} | {v.meaning} |" for v in variables]
    return "\n".join(lines) + "\n"


def _table_span(page: str) -> tuple[int, int]:
    """Where the table is: from its header line to the blank line after it (not included)."""
    start = page.find("\n" + HEADER)
    if start < 0:
        raise ValueError(f"the page has no line starting {HEADER!r}")
    start += 1
    end = page.find("\n\n", start)
    return start, len(page) if end < 0 else end + 1


def current_table(page: str) -> str:
    start, end = _table_span(page)
    return page[start:end]


def with_table(page: str, table: str) -> str:
    start, end = _table_span(page)
    return page[:start] + table + page[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wsupload.config.docs_table", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the table is stale; change nothing")
    parser.add_argument("page", nargs="?", type=Path, default=PAGE)
    args = parser.parse_args(argv)
    text = args.page.read_text(encoding="utf-8")
    updated = with_table(text, render_table())
    if updated == text:
        print(f"{args.page}: configuration table is current")
        return 0
    if args.check:
        print(f"{args.page}: configuration table is stale; run `{REGENERATE}`", file=sys.stderr)
        return 1
    args.page.write_text(updated, encoding="utf-8")
    print(f"{args.page}: configuration table rewritten from config/settings.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
