"""What every kind of source hands the uploader, and the media checks they share.

A source is opened once per job (validated: it exists, is non-empty, has a
supported extension and content that sniffs as it) and then streamed from its
first byte once per upload attempt. Where the store can, it also offers a
time-limited URL to the object instead of its bytes (``presign``). A source
that can change under an open handle (a local file) also says whether it
still is what was opened (``check_unchanged``), so an upload of bytes that no
longer exist is never completed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from wsupload.errors import InvalidInput
from wsupload.tasks.sources import formats


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass
class OpenedSource:
    source: str
    filename: str
    size: int
    media_kind: str
    content_type: str
    open_stream: Callable[[], Readable]
    """A fresh stream from the first byte; each upload attempt calls it again."""
    release: Callable[[], None] = lambda: None
    presign: Callable[[int], str] | None = None
    """A GET URL valid for N seconds, for stores that can make one."""
    check_unchanged: Callable[[], None] | None = None
    """Raises ``SourceChanged`` if the source moved since it was opened; called once the
    last byte of an attempt is read. None where the store pins the content itself
    (an object store's ``If-Match``)."""

    def close(self) -> None:
        self.release()

    def __enter__(self) -> OpenedSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def require_media_kind(filename: str) -> str:
    kind = formats.media_kind(filename)
    if kind is None:
        supported = ", ".join(formats.SUPPORTED_EXTENSIONS)
        raise InvalidInput(f"{filename!r} does not have a supported extension (supported: {supported})")
    return kind


def require_content(source: str, filename: str, size: int, head: bytes) -> None:
    """Non-empty, and the leading bytes fit the extension."""
    if size == 0:
        raise InvalidInput(f"{source!r} is empty")
    if not formats.sniff_matches(filename, head):
        kind = formats.media_kind(filename)
        raise InvalidInput(f"{source!r} does not look like a .{formats.extension_of(filename)} file ({kind})")
