"""Every relative link in README.md, CHANGELOG.md and docs/*.md resolves.

A link to a file must name one that exists in the repository; a link with ``#anchor``
into a Markdown file (or ``#anchor`` alone, into the page itself) must name one of its
headings, slugged as GitHub does: the heading's text lowercased, every character that is
not a letter, a digit, a space, ``-`` or ``_`` dropped, spaces turned into ``-``, and a
repeated slug suffixed ``-1``, ``-2``, … Only ATX headings (``## Title``) are read: the
pages use no other kind. Links inside code (fenced blocks, `` `spans` ``) are not links.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)
INLINE_LINK = re.compile(r"\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.MULTILINE)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def prose(text: str) -> str:
    """The page without fenced code blocks and with each code span replaced by ``code``."""
    kept, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            kept.append(line)
    return CODE_SPAN.sub("code", "\n".join(kept))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's Markdown text."""
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", heading)  # a link counts as its text
    text = re.sub(r"<[^>]*>", "", text).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def targets(text: str) -> list[str]:
    body = prose(text)
    return INLINE_LINK.findall(body) + REFERENCE_DEFINITION.findall(body)


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """One line per link of ``page`` that does not resolve."""
    problems = []
    for target in targets(page.read_text(encoding="utf-8")):
        if SCHEME.match(target) or target.startswith("//"):
            continue  # a URL: not this test's to check
        path, _, anchor = target.partition("#")
        path = unquote(path)
        if not path:
            dest = page
        elif path.startswith("/"):
            dest = root / path.lstrip("/")
        else:
            dest = page.parent / path
        where = f"{page.relative_to(root)}: ({target})"
        if not dest.resolve().is_relative_to(root.resolve()) or not dest.exists():
            problems.append(f"{where}: no file {path!r} in the repository")
        elif anchor and dest.suffix == ".md" and dest.is_file() and anchor not in anchors(dest.read_text("utf-8")):
            named = dest.resolve().relative_to(root.resolve())
            problems.append(f"{where}: {named} has no heading with anchor #{anchor}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert page.is_file()
    assert broken_links(page) == []


def test_the_pages_are_the_readme_the_changelog_and_the_docs() -> None:
    names = {str(page.relative_to(ROOT)) for page in PAGES}
    assert {"README.md", "CHANGELOG.md", "docs/README.md", "docs/configuration.md"} <= names


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Redis Sentinel", "redis-sentinel"),
        ("Flower and Celery's commands", "flower-and-celerys-commands"),
        ("Heartbeats, `wsupload workers` and `wsupload health`", "heartbeats-wsupload-workers-and-wsupload-health"),
        ("`WSUPLOAD_LEASE` and `consumer_timeout`", "wsupload_lease-and-consumer_timeout"),
        ("Wire contract (for producers in any language)", "wire-contract-for-producers-in-any-language"),
        ("Upgrading — from 0.0 to 0.1.0", "upgrading--from-00-to-010"),
        ("The [wire](wire-contract.md) contract", "the-wire-contract"),
        ("Accents: déjà vu", "accents-déjà-vu"),
    ],
)
def test_slugs_follow_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_a_repeated_heading_gets_a_numbered_anchor_and_code_is_not_a_heading() -> None:
    text = "# Notes\n\n## Notes\n\n```\n# not a heading\n```\n\n## Notes ##\n"
    assert anchors(text) == {"notes", "notes-1", "notes-2"}


def test_broken_files_and_anchors_are_reported_and_code_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## A section\n", encoding="utf-8")
    (tmp_path / "script.py").write_text("", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(
        "# Title\n\n"
        "[ok](docs/other.md#a-section) [ok](#title) [ok](script.py) [ok](https://example.com/x.md)\n"
        '[ok](<docs/other.md> "title") [ok][ref] `[code](missing.md)`\n\n'
        "```\n[fenced](missing.md)\n```\n\n"
        "[gone](docs/missing.md) [no heading](docs/other.md#b-section) [here](#nowhere)\n"
        "[outside](../elsewhere.md)\n\n"
        "[ref]: docs/other.md\n",
        encoding="utf-8",
    )
    assert broken_links(page, tmp_path) == [
        "README.md: (docs/missing.md): no file 'docs/missing.md' in the repository",
        "README.md: (docs/other.md#b-section): docs/other.md has no heading with anchor #b-section",
        "README.md: (#nowhere): README.md has no heading with anchor #nowhere",
        "README.md: (../elsewhere.md): no file '../elsewhere.md' in the repository",
    ]
