"""How a waiter rides out a Redis outage: the pause between attempts, and when to give up.

A Redis restart (a deploy, a failover, an AOF reload answering ``LOADING``)
must not end ``wait`` or ``batch wait``: they pause, reconnect and carry on.
They give up only when their own timeout passes (and then report a timeout,
as without an outage), or, with no timeout, once Redis has been unreachable
for ``OUTAGE_LIMIT`` seconds without a break: then the last connection error
is raised, which the CLI prints as one line (exit 2). A wait that has not
reached Redis even once fails at once: nothing then tells a blip from a wrong
``REDIS_URL``. Policy only: the waiters do the I/O (``worker.producer``,
``worker.async_producer``, and the Celery result backend's ``wait_for`` in
``wsupload.celery_backend``, which must not import ``worker``: hence here).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

OUTAGE_LIMIT = 60.0
"""Seconds Redis may stay unreachable, without a break, before a wait with no timeout gives up."""
FIRST_DELAY = 0.1
MAX_DELAY = 1.0
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
"""Errors that mean "not reachable right now" (``BusyLoadingError`` is a ``ConnectionError``)."""


def reconnect_delay(failures: int) -> float:
    """Seconds to pause after ``failures`` attempts in a row failed: 0.1 s doubling, at most 1 s."""
    return min(MAX_DELAY, FIRST_DELAY * 2.0 ** max(0, failures - 1))


@dataclass
class Outage:
    """One wait's view of Redis: reached yet, and unreachable since when."""

    deadline: float | None
    """The wait's own deadline (``time.monotonic``), if it has one."""
    limit: float = OUTAGE_LIMIT
    reached: bool = False
    since: float | None = None
    failures: int = 0

    def recovered(self) -> None:
        """Redis answered: the next outage starts its count afresh."""
        self.reached, self.since, self.failures = True, None, 0

    def connected(self) -> None:
        """A connection was made (a wait subscribed): Redis exists at that address, so an outage
        from now on is waited out, without ending the count of one already under way."""
        self.reached = True

    def failed(self, now: float) -> float | None:
        """An attempt failed at ``now``: seconds to pause before the next one, or None to give up."""
        if not self.reached:
            return None
        if self.since is None:
            self.since = now
        self.failures += 1
        if self.deadline is None and now - self.since >= self.limit:
            return None
        delay = reconnect_delay(self.failures)
        return delay if self.deadline is None else max(0.0, min(delay, self.deadline - now))
