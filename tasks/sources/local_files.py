"""Local files as sources: absolute paths or ``file://`` URLs, confined to allowed roots.

Never follows a path outside ``WSUPLOAD_ALLOWED_ROOTS`` (symlinks and ``..``
resolved first), and says nothing about files there beyond "outside the
allowed roots", so a producer cannot probe the worker's disk.

A file may still be written while it is uploaded. Its size and modification
time at opening are kept, and an attempt whose file no longer has them fails
with ``SourceChanged`` before the request is complete: the job then opens the
file again and sends what it holds now.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from wsupload.errors import InvalidInput, SourceChanged
from wsupload.tasks.sources import formats
from wsupload.tasks.sources.media import OpenedSource, Readable, require_content, require_media_kind


def local_path(source: str) -> Path:
    """The path a local source names, or ``InvalidInput``."""
    if source.startswith("file:"):
        parts = urlsplit(source)
        if parts.netloc not in ("", "localhost"):
            raise InvalidInput("file:// URLs must not name a host")
        source = unquote(parts.path)
    path = Path(source)
    if not path.is_absolute():
        raise InvalidInput(f"{source!r} is not an absolute path (producers must send absolute paths)")
    return path


def resolved(source: str, path: Path) -> Path:
    """``path`` with its symbolic links and ``..`` resolved; a loop of links, or a path the
    system refuses to resolve, is ``InvalidInput`` naming ``source`` (``Path.resolve`` raises
    ``RuntimeError`` for a loop, which would end the job as an internal error)."""
    try:
        return path.resolve()
    except RuntimeError:
        raise InvalidInput(f"{source!r} cannot be resolved: its symbolic links form a loop") from None
    except OSError as exc:
        raise InvalidInput(f"{source!r} cannot be resolved: {exc.strerror or exc}") from None


def inside_roots(path: Path, roots: Sequence[Path]) -> bool:
    """``path`` (already resolved) is one of ``roots`` or below one."""
    return any(path == root or root in path.parents for root in roots)


def open_local(source: str, allowed_roots: Sequence[Path] = ()) -> OpenedSource:
    path = local_path(source)
    # Resolve symlinks and '..' before the roots check, and check the roots
    # before anything that would reveal whether the file exists.
    real = resolved(source, path)
    if allowed_roots and not inside_roots(real, allowed_roots):
        raise InvalidInput(f"{source!r} is outside WSUPLOAD_ALLOWED_ROOTS")
    kind = require_media_kind(path.name)

    try:
        # O_NOFOLLOW: the path was resolved above, so a symlink here means it was
        # swapped in since. O_NONBLOCK: opening a FIFO must not hang the worker.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
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
        try:
            # At offset 0 without moving the file's position: the first attempt reads on from there, unseeked.
            head = os.pread(fd, formats.SNIFF_BYTES, 0)
        except OSError as exc:
            raise InvalidInput(f"{source!r} cannot be read: {exc.strerror}") from None
        require_content(source, path.name, info.st_size, head)
    except BaseException:
        file.close()
        raise
    at_start = [True]

    def from_start() -> Readable:
        if at_start:
            at_start.clear()  # nothing has read it yet
        else:
            file.seek(0)
        return file

    def check_unchanged() -> None:
        # fstat on the open descriptor: the file being read, even if its path was renamed over.
        now = os.fstat(file.fileno())
        if now.st_size != info.st_size:
            raise SourceChanged(
                f"{source!r} changed while it was being uploaded: "
                f"it was {info.st_size} bytes when opened, {now.st_size} now"
            )
        if now.st_mtime_ns != info.st_mtime_ns:
            raise SourceChanged(f"{source!r} changed while it was being uploaded: it was modified since it was opened")

    return OpenedSource(
        source=source,
        filename=path.name,
        size=info.st_size,
        media_kind=kind,
        content_type=formats.content_type(path.name),
        open_stream=from_start,
        release=file.close,
        check_unchanged=check_unchanged,
    )
