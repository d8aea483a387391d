"""Opening a job's source for upload, with every check made before a byte is sent.

A source is an absolute local path (or a ``file://`` URL). ``open_source``
either returns an open, validated file or raises ``InvalidInput`` / ``TooLarge``
with a message a person can act on. It never follows a path outside
``WSUPLOAD_ALLOWED_ROOTS``, and it says nothing about files there beyond
"outside the allowed roots", so a producer cannot probe the worker's disk.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from tasks import formats
from tasks.errors import InvalidInput, TooLarge


@dataclass
class OpenedSource:
    """A validated source, positioned at its first byte. Close it when done."""

    source: str
    filename: str
    size: int
    media_kind: str
    content_type: str
    file: BinaryIO

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> OpenedSource:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def local_path(source: str) -> Path:
    """The path a source names, or ``InvalidInput`` for anything else."""
    if not isinstance(source, str) or not source.strip():
        raise InvalidInput("the source is empty")
    if "\x00" in source:
        raise InvalidInput("the source contains a NUL character")
    if "://" in source:
        parts = urlsplit(source)
        if parts.scheme != "file":
            raise InvalidInput(
                f"unsupported source scheme {parts.scheme!r}: expected an absolute file path or file:// URL"
            )
        if parts.netloc not in ("", "localhost"):
            raise InvalidInput("file:// URLs must not name a host")
        source = unquote(parts.path)
    path = Path(source)
    if not path.is_absolute():
        raise InvalidInput(f"{source!r} is not an absolute path (producers must send absolute paths)")
    return path


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def open_source(source: str, *, max_bytes: int, allowed_roots: Sequence[Path] = ()) -> OpenedSource:
    path = local_path(source)
    # Resolve symlinks and '..' before the roots check, and check the roots
    # before anything that would reveal whether the file exists.
    resolved = path.resolve()
    if allowed_roots and not _inside(resolved, allowed_roots):
        raise InvalidInput(f"{source!r} is outside WSUPLOAD_ALLOWED_ROOTS")
    filename = path.name
    kind = formats.media_kind(filename)
    if kind is None:
        supported = ", ".join(formats.SUPPORTED_EXTENSIONS)
        raise InvalidInput(f"{filename!r} does not have a supported extension (supported: {supported})")

    try:
        # O_NOFOLLOW: the path was resolved above, so a symlink here means it was
        # swapped in since. O_NONBLOCK: opening a FIFO must not hang the worker.
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InvalidInput(f"{source!r} does not exist") from None
    except PermissionError:
        raise InvalidInput(f"{source!r} is not readable by the worker") from None
    except OSError as exc:
        raise InvalidInput(f"{source!r} cannot be opened: {exc.strerror}") from None

    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise InvalidInput(f"{source!r} is not a regular file")
    os.set_blocking(fd, True)
    file = os.fdopen(fd, "rb", buffering=0)
    try:
        if info.st_size == 0:
            raise InvalidInput(f"{source!r} is empty")
        if info.st_size > max_bytes:
            raise TooLarge(
                f"{source!r} is {info.st_size} bytes, over the limit of {max_bytes} bytes (WSUPLOAD_MAX_BYTES)"
            )
        try:
            head = file.read(formats.SNIFF_BYTES) or b""
            file.seek(0)
        except OSError as exc:
            raise InvalidInput(f"{source!r} cannot be read: {exc.strerror}") from None
        if not formats.sniff_matches(filename, head):
            raise InvalidInput(f"{source!r} does not look like a .{formats.extension_of(filename)} file ({kind})")
    except BaseException:
        file.close()
        raise
    return OpenedSource(
        source=source,
        filename=filename,
        size=info.st_size,
        media_kind=kind,
        content_type=formats.content_type(filename),
        file=file,
    )
