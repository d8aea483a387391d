"""Waiting, within a bound, for the results Redis to take writes again before a message goes back (RabbitMQ).

A job whose outcome Redis will not take (down, full, read-only, refusing for now)
hands its message back with requeue. On RabbitMQ that message is delivered again
at once, so without a pause every worker would loop on it, logging each time, and
a quorum queue's delivery-limit (20 by default on RabbitMQ 4.x) would drop it.
``wait_for_writes`` probes Redis every second or so until it takes a write, the
budget runs out or the worker stops; it never raises and never writes anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from wsupload.tasks.store import keys

MAX_WAIT = 30.0
"""Seconds at most a delivery holds its message waiting for Redis."""


def wait_budget(early_ack_after: float, cap: float = MAX_WAIT) -> float:
    """How long a delivery may wait: ``cap``, and well inside the early-ack point (half of it)."""
    return max(0.0, min(cap, early_ack_after / 2))


def takes_writes(client: redis.Redis) -> bool:
    """Whether Redis takes a write now: ``LPUSHX`` on a key that never exists is refused like any
    write (full, read-only, MISCONF) yet creates nothing. A ``PING`` answers on a full Redis."""
    try:
        client.lpushx(keys.BROKER_WRITE_PROBE, "probe")
    except (redis.RedisError, OSError):
        return False
    return True


def wait_for_writes(
    probe: Callable[[], bool],
    *,
    budget: float,
    stopping: Callable[[], bool],
    every: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Probe every ``every`` s until it succeeds (True), or ``budget`` s pass or ``stopping()`` (False)."""
    deadline = clock() + budget
    while True:
        if stopping():
            return False
        left = deadline - clock()
        if left <= 0:
            return False
        sleep(min(every, left))
        if probe():
            return True
