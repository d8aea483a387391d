"""Byte progress of a large upload: counted where the body hands blocks to the socket, written at most once a second.

The upload body (``tasks.wavespeed.multipart``, both flows) calls ``sent(done, total)`` before
each block it hands over, on the thread that sends it. Around each attempt at a file larger
than ``WSUPLOAD_PROGRESS_THRESHOLD`` the job runner (``tasks.job``) makes a ``Reporter`` that
thread's calls go to (``reporting``). Without one (a small file, progress off) a call costs a
thread-local lookup and nothing else: never a Redis call.

A reporter writes from the upload thread itself, not through a background writer: one round
trip a second beside a send of megabytes does not slow it, and the writes stay in order with
the attempt's own, so a progress write can never land after the ``retrying`` or terminal
document that follows it. The write is the fenced save (``ResultStore.save`` with the
delivery's generation): a delivery that was superseded, or whose job ended meanwhile, gets
``Superseded``, which stops the send as a lost lease does. A write that fails because Redis
is away is skipped and said once (until a progress write succeeds again); the upload goes on.

``due`` is the once-a-second policy, pure; the reporter's clock is injected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis

log = logging.getLogger(__name__)

INTERVAL = 1.0
"""Seconds between two progress writes of one job, at least."""


def tracked(size: int, threshold: int) -> bool:
    """Whether an upload of ``size`` bytes reports progress (``threshold`` 0: none does)."""
    return threshold > 0 and size > threshold


def due(last: float, now: float, interval: float = INTERVAL) -> bool:
    """Whether a progress write may go out at ``now``: ``interval`` after the last one (or the attempt's start)."""
    return now - last >= interval


@dataclass
class Reporter:
    """One attempt's progress: ``write(bytes_sent, bytes_total)`` called at most once per ``INTERVAL``.

    The first write comes one interval after the reporter is made, so an upload that takes
    less than that writes none.
    """

    write: Callable[[int, int], None]
    clock: Callable[[], float] = time.monotonic
    last: float = field(init=False)

    def __post_init__(self) -> None:
        self.last = self.clock()

    def sent(self, done: int, total: int) -> None:
        now = self.clock()
        if not due(self.last, now):
            return
        self.last = now  # a failed write is not tried again at the next block, but a second later
        try:
            self.write(done, total)
        except redis.RedisError as exc:
            _outage.failed(exc)
        else:
            _outage.succeeded()


class _Outage:
    """Says once that progress writes fail, until one succeeds again (the upload threads share it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failing = False

    def failed(self, exc: redis.RedisError) -> None:
        with self._lock:
            say, self._failing = not self._failing, True
        if say:
            log.warning(
                "a progress write failed (%s: %s); uploads go on without progress. Said once until one succeeds",
                type(exc).__name__,
                exc,
            )

    def succeeded(self) -> None:
        if self._failing:
            with self._lock:
                self._failing = False


_outage = _Outage()
_local = threading.local()


@contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """The body's ``sent`` calls on this thread go to ``reporter`` meanwhile."""
    previous = getattr(_local, "reporter", None)
    _local.reporter = reporter
    try:
        yield reporter
    finally:
        _local.reporter = previous


def sent(done: int, total: int) -> None:
    """``done`` of ``total`` bytes handed to the socket by this thread's upload (the body calls this per block)."""
    reporter: Reporter | None = getattr(_local, "reporter", None)
    if reporter is not None:
        reporter.sent(done, total)
