"""A multipart/form-data request body with one file field, read from disk on demand.

Without a field it is the file's bytes alone, with the same guarantees: the body of
the direct flow's PUT.

The API page's example (``files={"file": f}``) makes requests build the whole
body in memory: about twice the file size. This body has a known length (so the
request carries Content-Length, not chunked encoding) and hands the HTTP client
one block at a time, so memory stays flat whatever the file size.

Content-Length goes out before the body, so the body must be exactly the size
the source had when it was opened. A source that changed meanwhile (grew,
shrank, was rewritten) raises ``SourceChanged`` from ``read``: where it ends
early, or at the latest once its last byte is read and before the closing
boundary is handed over. The request is then aborted, and the server never
receives a complete body of bytes that no longer exist.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import NoReturn

from wsupload.errors import SourceChanged
from wsupload.tasks.observe import upload_progress
from wsupload.tasks.recovery import lease
from wsupload.tasks.sources.media import OpenedSource, Readable


def _quote(value: str) -> str:
    # HTML5 form encoding, as browsers and urllib3 do: escape what would end the
    # quoted string or the header line.
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class MultipartBody:
    """File-like body: ``read(n)`` returns the next block; ``len()`` is its exact size."""

    def __init__(
        self,
        file: Readable,
        *,
        field: str | None,
        filename: str,
        content_type: str,
        size: int,
        check: Callable[[], None] | None = None,
    ) -> None:
        self.boundary = secrets.token_hex(16)
        head = tail = b""  # field None: the file's bytes alone (the direct flow's PUT)
        if field is not None:
            head = (
                f"--{self.boundary}\r\n"
                f'Content-Disposition: form-data; name="{_quote(field)}"; filename="{_quote(filename)}"\r\n'
                f"Content-Type: {content_type}\r\n\r\n"
            ).encode()
            tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._file = file
        self._head = head
        self._tail = tail
        self._size = size
        self._remaining = size
        self._length = len(head) + size + len(tail)
        self._check = check

    @classmethod
    def for_source(cls, source: OpenedSource, *, field: str | None) -> MultipartBody:
        """One attempt's body: the source from its first byte, checked at its end (``field`` None: raw)."""
        return cls(
            source.open_stream(),
            field=field,
            filename=source.filename,
            content_type=source.content_type,
            size=source.size,
            check=source.check_unchanged,
        )

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes, filled from the head, the file and the tail in turn.

        Filling across the parts matters for small files: the whole body goes to
        the socket in one send, not three (each one a wake-up of the server).
        """
        lease.tick()  # bytes moving: the job is alive (and stops here if its delivery must)
        upload_progress.sent(self._size - self._remaining, self._size)  # file bytes the socket took so far
        want = self._length if size is None or size < 0 else size
        parts = []
        if self._head:
            parts.append(self._head[:want])
            self._head = self._head[want:]
            want -= len(parts[-1])
        if want > 0 and self._remaining > 0:
            block = self._file.read(min(want, self._remaining))
            if not block:
                # Content-Length is already on the wire: a short body would hang the server.
                self._changed()
            self._remaining -= len(block)
            want -= len(block)
            parts.append(block)
            if self._remaining == 0 and self._check is not None:
                # Last file byte read, closing boundary not yet handed over: the last
                # moment the request can still be aborted instead of completed.
                self._check()
        if want > 0 and self._remaining == 0 and self._tail:
            parts.append(self._tail[:want])
            self._tail = self._tail[want:]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _changed(self) -> NoReturn:
        if self._check is not None:
            self._check()  # names the source and what changed
        read = self._size - self._remaining
        raise SourceChanged(f"the file ended after {read} of its {self._size} bytes: it shrank while it was uploaded")
