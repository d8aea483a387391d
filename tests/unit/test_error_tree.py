"""``wsupload.errors`` draws the whole error hierarchy; the drawing must be the real class tree.

Every module of the package is imported first, so a ``WsuploadError`` subclass
defined anywhere (not only in ``wsupload.errors``) shows up and fails the test
until it is drawn and moved there.
"""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import wsupload
from wsupload import errors
from wsupload.errors import WsuploadError

_LINE = re.compile(r"^(?P<indent>[ │├└─]*)(?P<name>[A-Z][A-Za-z]+)\b")


def drawn_tree(doc: str) -> set[tuple[str, str]]:
    """(parent, child) pairs read from the box-drawing tree in a docstring."""
    pairs: set[tuple[str, str]] = set()
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        match = _LINE.match(line.strip("\n")[4:] if line.startswith("    ") else "")
        if match is None:
            continue
        depth = len(match.group("indent"))
        name = match.group("name")
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            pairs.add((stack[-1][1], name))
        elif name != "WsuploadError":
            raise AssertionError(f"{name} is drawn outside the tree")
        stack.append((depth, name))
    return pairs


def real_tree(root: type[BaseException]) -> set[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for child in root.__subclasses__():
        pairs.add((root.__name__, child.__name__))
        pairs |= real_tree(child)
    return pairs


def import_every_module() -> None:
    for module in pkgutil.walk_packages(wsupload.__path__, prefix="wsupload."):
        importlib.import_module(module.name)


def test_the_drawing_is_the_class_tree() -> None:
    import_every_module()
    assert errors.__doc__ is not None
    assert drawn_tree(errors.__doc__) == real_tree(WsuploadError)


def test_every_error_class_lives_in_the_errors_module() -> None:
    import_every_module()
    stack: list[type[BaseException]] = [WsuploadError]
    while stack:
        cls = stack.pop()
        assert cls.__module__ == "wsupload.errors", f"{cls.__name__} is defined in {cls.__module__}"
        stack.extend(cls.__subclasses__())


@pytest.mark.parametrize(
    ("doc", "missing"),
    [
        ("    WsuploadError\n    └── UploadError\n", ("UploadError", "PermanentError")),
        ("    WsuploadError\n    ├── UploadError\n    │   └── PermanentError\n", None),
    ],
)
def test_the_reader_sees_nesting(doc: str, missing: tuple[str, str] | None) -> None:
    """A control: the drawing reader tells a child from a sibling, so a misdrawn class fails."""
    pairs = drawn_tree(doc)
    if missing is None:
        assert pairs == {("WsuploadError", "UploadError"), ("UploadError", "PermanentError")}
    else:
        assert missing not in pairs
        assert pairs == {("WsuploadError", "UploadError")}
