"""A rate limit shared by every worker process and host, kept in Redis.

Two knobs, both optional, and a consequence: ``WSUPLOAD_RATE_LIMIT`` upload requests per second
across the fleet (requests spaced at least 1/rate apart: one key holds the time
the next one may go), ``WSUPLOAD_MAX_CONCURRENT_UPLOADS`` requests in
flight across the fleet (a sorted set of leases that expire, so a killed worker
cannot hold a slot forever); when either is set, a 429 from the API also
pauses every worker until its ``Retry-After`` (or the backoff) has passed.

Each check is one Lua script (``rate_limit_*.lua``), so it is atomic and costs one round
trip; time comes from Redis (``TIME``) so hosts with skewed clocks agree.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from wsupload.tasks.observe import telemetry
from wsupload.tasks.recovery import lease
from wsupload.tasks.store import keys, lua

TAT_KEY, ACTIVE_KEY, PAUSE_KEY = keys.RATE_TAT, keys.RATE_ACTIVE, keys.RATE_PAUSE

SLOT_LEASES = 5
"""A slot expires this many job leases after its last renewal: a dead worker's slots free up within it."""


class RateLimitTimeout(Exception):
    """No slot came free before the deadline."""


class FleetLimiter:
    def __init__(
        self,
        client: redis.Redis,
        *,
        per_second: float = 0.0,
        max_concurrent: int = 0,
        lease_seconds: float = 3600.0,
        sleep: Callable[[float], None] = lease.sleep,
    ) -> None:
        self.redis = client
        self.interval_ms = int(1000 / per_second) if per_second > 0 else 0
        self.max_concurrent = max_concurrent
        self.lease_ms = int(lease_seconds * 1000)
        self.sleep = sleep
        self._acquire = lua.script(client, "rate_limit_acquire")
        self._pause = lua.script(client, "rate_limit_pause")

    @property
    def active(self) -> bool:
        """Whether any fleet limit is configured. Without one there is nothing to check:
        each job still honours its own 429s, and no Redis round trip is spent per request."""
        return bool(self.interval_ms or self.max_concurrent)

    def try_acquire(self, token: str) -> float:
        """0 if the request may go now, else seconds to wait before asking again."""
        args: list[Any] = [self.interval_ms, self.max_concurrent, self.lease_ms, token]
        wait_ms = int(self._acquire(keys=[TAT_KEY, ACTIVE_KEY, PAUSE_KEY], args=args))
        return wait_ms / 1000

    @contextmanager
    def slot(self, deadline: float | None = None) -> Iterator[None]:
        """Wait for permission to send one request; hold a concurrency slot meanwhile."""
        if not self.active:
            yield
            return
        token = uuid.uuid4().hex
        began = time.monotonic()
        while (wait := self.try_acquire(token)) > 0:
            if deadline is not None and time.monotonic() + wait > deadline:
                raise RateLimitTimeout(f"no upload slot within the time left ({wait:.1f} s more needed)")
            lease.allow(wait + 1.0)  # the job is alive while it waits its turn, for this wait only
            self.sleep(wait)  # cut short by the job's cancel (lease.sleep)
        telemetry.limiter_wait(time.monotonic() - began)
        holder = lease.current()
        if holder is not None and self.max_concurrent:
            holder.slot = token  # the worker's renewer keeps the slot while the job keeps its lease
        try:
            yield
        finally:
            if holder is not None:
                holder.slot = None
            if self.max_concurrent:
                self.redis.zrem(ACTIVE_KEY, token)

    def pause(self, seconds: float) -> None:
        """Hold every worker's next request for ``seconds`` (after a 429)."""
        if seconds > 0 and self.active:
            self._pause(keys=[PAUSE_KEY], args=[int(seconds * 1000)])
