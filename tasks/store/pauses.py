"""Paused queues, fleet-wide: the set at ``keys.PAUSED``, and what this worker process knows of it.

A producer's ``pause(queue)`` adds the queue's name to the set (kept until ``resume`` removes it,
so it outlives every worker and applies to workers started later) and announces the change on
``keys.PAUSE_CHANNEL``. A worker (``worker.pause_watch``) reads the set every ``LOOK_EVERY``
seconds, or at once when a change is announced, stops consuming the paused queues it serves and
consumes them again once resumed; running jobs finish. The tasks ask ``BOARD`` (no Redis round
trip, but for the first ask in a process that has not read the set yet) before a job starts, so a
message fetched before its queue was paused goes back to its queue instead of running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis

from wsupload.errors import InvalidInput
from wsupload.tasks.observe.bounds import clip
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import text

LOOK_EVERY = 0.5
"""Seconds between two reads of the paused set by each worker process (announcements come sooner)."""
STALE_AFTER = 10 * LOOK_EVERY
"""A board not updated for this long (its loop stopped, or cannot read Redis) is read again by the task that asks."""


def queue_named(name: str, interactive: str, bulk: str) -> str:
    """The queue ``name`` means: ``interactive`` and ``bulk`` stand for the two queues (``WSUPLOAD_QUEUE``,
    ``WSUPLOAD_BULK_QUEUE``); any other name must be one of them (``InvalidInput`` otherwise)."""
    named = {"interactive": interactive, "bulk": bulk}.get(name, name)
    if named not in (interactive, bulk):
        raise InvalidInput(
            f"no queue {clip(name)!r}: name the interactive queue ({interactive!r}, or 'interactive')"
            f" or the bulk queue ({bulk!r}, or 'bulk')"
        )
    return named


def fill_change(pipe: Any, queue: str, *, pause: bool) -> None:
    """Queue on ``pipe`` (a sync or an asyncio pipeline) the pause or resume of ``queue`` and its
    announcement; the pipeline's first reply says whether it changed (``changed``)."""
    if pause:
        pipe.sadd(keys.PAUSED, queue)
    else:
        pipe.srem(keys.PAUSED, queue)
    pipe.publish(keys.PAUSE_CHANNEL, queue)


def changed(replies: Sequence[Any]) -> bool:
    """Whether what ``fill_change`` queued changed anything: False when the queue was paused (running) already."""
    return bool(replies[0])


def pause(client: redis.Redis, queue: str) -> bool:
    """Pause ``queue`` fleet-wide; whether it was running until now (False: it was paused already)."""
    pipe = client.pipeline(transaction=True)
    fill_change(pipe, queue, pause=True)
    return changed(pipe.execute())


def resume(client: redis.Redis, queue: str) -> bool:
    """Resume ``queue`` fleet-wide; whether it was paused until now."""
    pipe = client.pipeline(transaction=True)
    fill_change(pipe, queue, pause=False)
    return changed(pipe.execute())


def paused(client: redis.Redis) -> set[str]:
    """The queues paused now."""
    return read(client.smembers(keys.PAUSED))


def read(members: Iterable[bytes | str]) -> set[str]:
    """``SMEMBERS``'s reply as queue names."""
    return {text(member) for member in members}


class Board:
    """This process's view of the paused queues, kept by ``worker.pause_watch``; read by the tasks."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._paused: frozenset[str] | None = None
        self._at = 0.0
        self._clock = clock
        self._lock = threading.Lock()

    def update(self, queues: Iterable[str]) -> None:
        with self._lock:
            self._paused = frozenset(queues)
            self._at = self._clock()

    def forget(self) -> None:
        """Back to "not read yet" (the worker stopped; tests)."""
        with self._lock:
            self._paused = None

    def is_paused(self, queue: str | None, load: Callable[[], set[str]]) -> bool:
        """Whether ``queue`` is paused; ``load`` reads the set when this process has not yet, or not for
        ``STALE_AFTER`` seconds (a read that fails: what was known, or not paused)."""
        if not queue:
            return False
        known = self._paused
        if known is None or self._clock() - self._at > STALE_AFTER:
            try:
                self.update(load())
            except redis.RedisError:
                return known is not None and queue in known
            known = self._paused or frozenset()
        return queue in known


BOARD = Board()
"""This process's board."""
LEFT_OUT: set[str] = set()
"""The queues this process's worker serves but was set up without, being paused (``worker.pause_watch``)."""
