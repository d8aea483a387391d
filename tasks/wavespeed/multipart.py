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

Over a plain socket a large local file need not pass through Python at all:
``spans`` gives the body as its head, ``FileSpan`` pieces of the file that the
connection hands to ``sendfile`` (page cache to socket, no copy into the
process), and its tail, with the same lease tick, progress and change checks
per piece as ``read``. TLS cannot take it (the bytes must be encrypted here),
nor can a stream that is not a regular file: those read.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn

from wsupload.errors import SourceChanged
from wsupload.tasks.observe import upload_progress
from wsupload.tasks.recovery import lease
from wsupload.tasks.sources.media import OpenedSource, Readable


def _quote(value: str) -> str:
    # HTML5 form encoding, as browsers and urllib3 do: escape what would end the
    # quoted string or the header line.
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class _Randomness(threading.local):
    """This thread's store of the operating system's random bytes, for boundaries."""

    store = b""
    used = 0


_random = _Randomness()
RANDOM_STORE = 4096
"""Random bytes asked of the system at once: 256 boundaries, one ``getrandom`` (which lets the GIL go) each 256 jobs."""


def _forget_randomness() -> None:
    global _random
    _random = _Randomness()  # a forked child never repeats its parent's boundaries


os.register_at_fork(after_in_child=_forget_randomness)


def boundary() -> str:
    """32 hex digits of the system's random bytes, as ``secrets.token_hex(16)``, from this thread's store."""
    mine = _random
    if mine.used + 16 > len(mine.store):
        mine.store, mine.used = os.urandom(RANDOM_STORE), 0
    start = mine.used
    mine.used = start + 16
    return mine.store[start : start + 16].hex()


SENDFILE_MIN = 1024 * 1024
"""Files smaller than this are read: their whole body goes out in one send, head and tail included."""


class FileSpan:
    """``count`` bytes of an open regular file from ``offset``: a piece of a body for ``socket.sendfile``."""

    __slots__ = ("count", "file", "offset", "sent")

    def __init__(self, file: Readable, offset: int, count: int) -> None:
        self.file = file
        self.offset = offset
        self.count = count
        self.sent = 0

    def __bool__(self) -> bool:
        return self.count > 0

    def __len__(self) -> int:
        return self.count

    def send_to(self, sock: socket.socket) -> None:
        """Send it (``sendfile``, waiting within the socket's timeout); fewer bytes only where the file ended."""
        self.sent = sock.sendfile(self.file, self.offset, self.count)  # type: ignore[arg-type]


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
        self.boundary = boundary()
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
        self._started = False

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
        self._started = True
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

    def sendfile_ok(self) -> bool:
        """Whether ``spans`` applies: a regular file of at least ``SENDFILE_MIN`` bytes, not read from yet."""
        if self._size < SENDFILE_MIN or self._started:
            return False
        try:
            fileno = self._file.fileno()  # type: ignore[attr-defined]
            return stat.S_ISREG(os.fstat(fileno).st_mode) and "b" in getattr(self._file, "mode", "b")
        except (AttributeError, OSError, ValueError):
            return False

    def spans(self, block: int) -> Iterator[bytes | FileSpan]:
        """The body as its head, ``FileSpan`` pieces of at most ``block`` bytes, and its tail (see ``sendfile_ok``).

        The consumer sends each piece before asking for the next: a span found short
        then (the file shrank) raises ``SourceChanged``, as ``read`` does, before the tail.
        """
        self._started = True
        head, self._head = self._head, b""
        if head:
            yield head
        offset = self._file.tell()  # type: ignore[attr-defined]
        # The last block is read, not sent from the file: it is checked in hand, as ``read`` does,
        # so a raw body (the direct flow's PUT, no tail to withhold) is never completed with
        # bytes of a file that changed, even while the kernel would have been sending them.
        while self._remaining > block:
            lease.tick()
            upload_progress.sent(self._size - self._remaining, self._size)
            span = FileSpan(self._file, offset, block)
            yield span
            if span.sent < span.count:
                self._remaining -= span.sent
                self._changed()
            offset += span.count
            self._remaining -= span.count
        lease.tick()
        upload_progress.sent(self._size - self._remaining, self._size)
        self._file.seek(offset)  # type: ignore[attr-defined]
        last = self._file.read(self._remaining)
        if len(last) < self._remaining:
            self._remaining -= len(last)
            self._changed()
        self._remaining = 0
        if self._check is not None:
            self._check()  # last file byte in hand, not yet sent (nor the closing boundary): abort rather than complete
        tail, self._tail = self._tail, b""
        yield last + tail

    def _changed(self) -> NoReturn:
        if self._check is not None:
            self._check()  # names the source and what changed
        read = self._size - self._remaining
        raise SourceChanged(f"the file ended after {read} of its {self._size} bytes: it shrank while it was uploaded")
