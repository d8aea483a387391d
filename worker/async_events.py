"""The asyncio producer's one subscription to ``wsupload:ended`` and ``wsupload:events``, shared by its waits.

A web backend awaits many jobs at once, one request each: with a subscription per
wait, a thousand requests would hold a thousand connections, and every job's end
would be read and parsed once per request. Here an ``AsyncProducer`` holds one
connection (``Hub``), opened by the first wait and closed once none is left; each
message is parsed once and handed to the waits (``Watch``) that asked for its job.

A wait registers (``Hub.watch``) before it reads the documents: the subscription is
then live, so an end between the two is not lost. When the connection fails, every
``Watch`` raises that error at its next look, and each wait rides the outage out on its
own (``tasks.recovery.outage``): it registers again, which connects again, and reads again.
Delivery only: what a wait makes of an end is ``worker.async_producer``'s.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Iterable
from typing import Any

import redis.asyncio

from wsupload.tasks.store import keys
from wsupload.tasks.store.results import JobDoc

IDLE_CHECK = 1.0
"""Seconds the subscription is kept once no wait is left (and the longest it listens without looking)."""
DRAIN_CHUNK = 25
"""Messages handled in one go before the loop gets its turn."""


class Watch:
    """One wait's share of the subscription: the ends and events of its jobs since it last looked."""

    def __init__(self, hub: Hub, job_ids: Iterable[str], *, events: bool, every_end: bool) -> None:
        self.hub = hub
        self.jobs = set(job_ids)
        self.events = events
        """Also the jobs named on ``wsupload:events`` (every change, not only ends)."""
        self.every_end = every_end
        """Woken by any job's end, its own or not (a batch's wait, which knows counters, not members)."""
        self.ended: dict[str, JobDoc] = {}
        self.touched: set[str] = set()
        self.error: BaseException | None = None
        self._wake = asyncio.Event()

    def deliver(self, job_id: str, doc: JobDoc | None) -> None:
        """A message about ``job_id``: its final document (an end), or None (an event)."""
        if doc is not None:
            self.ended[job_id] = doc
        self.touched.add(job_id)
        self._wake.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._wake.set()

    async def next(self, timeout: float) -> tuple[dict[str, JobDoc], set[str]]:
        """What arrived (ends, and the jobs touched), waiting up to ``timeout`` s for something.

        Raises the subscription's connection error, if it failed meanwhile.
        """
        if not (self.touched or self.error):
            self._wake.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
        if self.error is not None:
            raise copy.copy(self.error)  # one error object per raiser: each wait's traceback is its own
        ended, touched = self.ended, self.touched
        self.ended, self.touched = {}, set()
        return ended, touched

    def close(self) -> None:
        """Leave the subscription (the hub closes its connection when no wait is left)."""
        self.hub.forget(self)


class Hub:
    """One subscription for one client, opened when a wait needs it and closed when none is left."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.watches: set[Watch] = set()
        self.by_job: dict[str, set[Watch]] = {}
        self.every_end: set[Watch] = set()
        self._listener: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._empty_since = 0.0

    async def watch(self, job_ids: Iterable[str], *, events: bool = False, every_end: bool = False) -> Watch:
        """Register a wait; returns once the subscription is live (raises its connection error if it is not)."""
        watch = Watch(self, job_ids, events=events, every_end=every_end)
        self.watches.add(watch)
        if every_end:
            self.every_end.add(watch)
        for job_id in watch.jobs:
            self.by_job.setdefault(job_id, set()).add(watch)
        try:
            if self._listener is None:
                loop = asyncio.get_running_loop()
                self._ready = ready = loop.create_future()
                self._listener = asyncio.create_task(self._listen(ready))
            assert self._ready is not None
            await asyncio.shield(self._ready)
        except BaseException:
            self.forget(watch)
            raise
        return watch

    def forget(self, watch: Watch) -> None:
        self.watches.discard(watch)
        self.every_end.discard(watch)
        self.drop(watch, list(watch.jobs))
        if not self.watches:
            self._empty_since = time.monotonic()

    def drop(self, watch: Watch, job_ids: Iterable[str]) -> None:
        """``watch`` no longer needs these jobs' messages (they ended)."""
        for job_id in job_ids:
            watch.jobs.discard(job_id)
            held = self.by_job.get(job_id)
            if held is not None:
                held.discard(watch)
                if not held:
                    del self.by_job[job_id]

    async def aclose(self) -> None:
        """Stop listening (the producer is closing)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    async def _listen(self, ready: asyncio.Future[None]) -> None:
        pubsub = None
        try:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(keys.ENDED_CHANNEL, keys.EVENTS_CHANNEL)
            ready.set_result(None)
            handled = 0
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=IDLE_CHECK)
                if not self.watches and (message is None or time.monotonic() - self._empty_since >= IDLE_CHECK):
                    # Unused for a while (kept that long for the next wait of a busy backend). No
                    # await between this look and the reset: a wait registering after it starts a new listener.
                    self._listener = None
                    return
                if message is None:
                    continue
                self._dispatch(message)
                handled += 1
                if handled % DRAIN_CHUNK == 0:
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            if not ready.done():
                ready.cancel()
            raise
        except Exception as error:  # a connection lost (or refused): every wait hears of it and rides it out
            if self._listener is asyncio.current_task():
                self._listener = None
            if not ready.done():
                ready.set_exception(error)
            for watch in list(self.watches):
                watch.fail(error)
                self.forget(watch)
        finally:
            if pubsub is not None:
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        ended = (channel.decode() if isinstance(channel, bytes) else channel) == keys.ENDED_CHANNEL
        try:
            body = json.loads(message["data"])
            job_id = body["job_id"]
        except (ValueError, KeyError, TypeError):
            return  # not ours to judge: the waits' re-reads find the stored document
        if not isinstance(job_id, str):
            return
        mine = self.by_job.get(job_id, ())
        if ended:
            for watch in [*mine, *self.every_end]:
                watch.deliver(job_id, dict(body))
        else:
            for watch in mine:
                if watch.events:
                    watch.deliver(job_id, None)
