"""The Python producer API: enqueue uploads, read their status, wait for them, cancel them.

Needs Redis only, never the API key. Enqueueing itself is ``tasks.enqueue``.
Waiting listens on ``wsupload:ended``, which carries each job's final document,
instead of polling; it re-reads unfinished documents once a second (up to
``RECHECK_CHUNK`` of them, in turn) for progress and as a safety net in case a
notification was missed. Both waits
ride out a Redis restart (``tasks.recovery.outage``): they reconnect, re-subscribe and
re-read, so nothing that ended while Redis was away is missed.

Over TLS, a certificate or host name that does not verify raises ``TlsRefused`` (one line
naming the host and the reason, the password masked), never redis-py's or py-amqp's error:
a producer's first call pings Redis (and an enqueue opens its RabbitMQ connection) before
anything is written, and every call turns an error a refusal caused into it (``worker.tls``).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import redis

from wsupload.config.settings import Settings
from wsupload.errors import EnqueueError, WsuploadError
from wsupload.tasks.enqueue import Batch, Enqueuer, Flow, Job, normalize_source
from wsupload.tasks.recovery.outage import OUTAGE_LIMIT, REDIS_DOWN, Outage
from wsupload.tasks.store import cancels, lua, pauses, results
from wsupload.tasks.store.cancels import CancelOutcome
from wsupload.tasks.store.connections import redis_client
from wsupload.tasks.store.results import JobDoc
from wsupload.worker import tls

if TYPE_CHECKING:
    from celery import Celery
    from redis.commands.core import Script

T = TypeVar("T")
__all__ = ["Batch", "CancelOutcome", "EnqueueError", "Job", "Producer", "WaitOutcome", "normalize_source"]

RECHECK_SECONDS = 1.0
"""How often ``wait`` re-reads documents of jobs not ended (their progress: running, retrying)."""
RECHECK_CHUNK = 1000
"""The most documents one re-read takes: a wait on 100,000 jobs re-reads them in turn, 1,000 a
second, instead of all of them every second. Ends do not need it: they come as events, and a
wait that lost its connection (and so perhaps events) reads every document again."""
PROGRESS_EVERY = 0.1
"""At most this often (seconds) is ``on_update`` called while waiting."""
BATCH_REFRESH = 0.2
WAKE_EVERY = 0.01
"""After a wake-up that brought ends, ``wait`` reads again no sooner than this (seconds): jobs
that end meanwhile are read in one go. A lone job's end is read as soon as it comes.

Woken once per ended job, a producer waiting on a busy batch spent ~0.1 ms of CPU a job
reading the ends, about a tenth of what the job cost the worker (a socket read and timeout
changes per message); 10 ms between wake-ups is invisible to whoever waits."""


@dataclass(frozen=True)
class WaitOutcome:
    docs: list[JobDoc | None]
    timed_out: bool

    @property
    def all_succeeded(self) -> bool:
        return not self.timed_out and all(d is not None and d["status"] == results.SUCCEEDED for d in self.docs)


def is_finished(doc: JobDoc | None) -> bool:
    """Ended (any status but queued, running, retrying: ``results.is_end``), or unknown (never enqueued, or expired)."""
    return doc is None or results.is_end(doc["status"])


def ended_doc(data: bytes | str, wanted: set[str]) -> JobDoc | None:
    """The final document a ``wsupload:ended`` message carries, if it is one of ``wanted``'s and has ended."""
    try:
        doc = json.loads(data)
        if doc["job_id"] in wanted and is_finished(doc):
            return dict(doc)
    except (ValueError, KeyError, TypeError):
        pass  # not ours to judge: the refresh reads the stored document
    return None


class Rechecks:
    """Which of the jobs not ended a wait re-reads next: ``RECHECK_CHUNK`` at a time, in turn."""

    def __init__(self) -> None:
        self.turn: deque[str] = deque()

    def next(self, pending: set[str]) -> list[str]:
        """The next jobs to re-read (a new round starts with every job of ``pending``)."""
        if not self.turn:
            self.turn.extend(pending)
        refresh: list[str] = []
        while self.turn and len(refresh) < RECHECK_CHUNK:
            job_id = self.turn.popleft()
            if job_id in pending:
                refresh.append(job_id)
        return refresh


class Producer(Enqueuer):
    """Enqueue (see ``tasks.enqueue``), then read status and wait."""

    outage_limit = OUTAGE_LIMIT
    """With no timeout, how long (seconds) a wait keeps trying while Redis is unreachable."""

    def __init__(self, settings: Settings, *, client: redis.Redis | None = None, app: Celery | None = None) -> None:
        super().__init__(settings, client or redis_client(settings.redis_url))
        self._app = app
        self._cancel: Script | None = None
        self._verified = {"redis": False, "amqp": False}
        """Whether this producer's TLS was checked (and verified) yet, per broker: once each, at first use."""

    def _checked(self, *, publishing: bool = False) -> AbstractContextManager[None]:
        """Around a call: TLS checked at first use; an error a refusal caused raised as ``TlsRefused``."""
        if not self._verified["redis"] and tls.uses_tls(self.settings.redis_url):
            self._verified["redis"] = tls.check_redis(self.redis, self.settings.redis_url)
        if publishing and not self._verified["amqp"] and self.settings.broker_is_amqp:
            broker = self.settings.effective_broker_url
            self._verified["amqp"] = not tls.uses_tls(broker) or tls.check_amqp(broker)
        return tls.refusals_raised(self.settings)

    def _drive(self, flow: Flow) -> None:
        with self._checked(publishing=True):
            super()._drive(flow)

    @property
    def app(self) -> Celery:
        """A Celery app for control commands (ping); enqueueing does not need it."""
        if self._app is None:
            from wsupload.worker.app import create_app  # Celery loads here, not when a web backend imports Producer

            self._app = create_app(self.settings)
        return self._app

    def close(self) -> None:
        """Close the broker connections this producer opened (RabbitMQ's, and the control app's pool)."""
        super().close()
        if self._app is not None:
            self._app.close()

    def status(self, job_ids: Sequence[str]) -> list[JobDoc | None]:
        with self._checked():
            return self._read(job_ids)

    def _read(self, job_ids: Sequence[str]) -> list[JobDoc | None]:
        """The documents, Redis's errors as they are: a wait rides them out (``status`` says them as ``TlsRefused``)."""
        return self.store.get_many(job_ids)

    def cancel(self, job_ids: Sequence[str]) -> list[CancelOutcome]:
        """Cancel jobs: each that has not ended ends ``cancelled`` now; one outcome per id, in order.

        A queued job never runs (the worker that meets its message only acknowledges it);
        a running one is stopped by its worker within a second (``worker.cancel_watch``).
        A job that had ended is left as it was (``outcome == "ended"``, ``status`` its end);
        one with no document is ``unknown``. Works with no worker running: the end and the
        request are in Redis (``tasks.store.cancels``).
        """
        if self._cancel is None:
            self._cancel = lua.script(self.redis, cancels.SCRIPT)
        found: list[CancelOutcome] = []
        with self._checked():
            for chunk in results.chunks(cancels.unique(job_ids), cancels.CHUNK):
                now = results.utcnow()
                script_keys, args = cancels.call(chunk, self.settings.result_ttl, now, time.time())
                found += cancels.outcomes(chunk, self._cancel(keys=script_keys, args=args), now)
        return cancels.in_order(job_ids, found)

    def cancel_batch(self, batch_id: str) -> list[CancelOutcome]:
        """``cancel`` every member of the batch (its id, not its name: ``batches.resolve``)."""
        with self._checked():
            job_ids = self.batches.job_ids(batch_id)
        return self.cancel(job_ids)

    def pause(self, queue: str) -> bool:
        """Pause ``queue`` fleet-wide (its name, or ``interactive`` / ``bulk``): within a second no worker
        starts a new job of it; running jobs finish. Kept in Redis until ``resume``, across worker
        restarts (``tasks.store.pauses``). Whether it was running until now."""
        named = self.queue_named(queue)
        with self._checked():
            return pauses.pause(self.redis, named)

    def resume(self, queue: str) -> bool:
        """Resume ``queue``: workers take its jobs again within a second. Whether it was paused until now."""
        named = self.queue_named(queue)
        with self._checked():
            return pauses.resume(self.redis, named)

    def paused(self) -> set[str]:
        """The queues paused now."""
        with self._checked():
            return pauses.paused(self.redis)

    def queue_named(self, name: str) -> str:
        """The queue ``name`` means (``interactive``, ``bulk`` or a queue's own name); ``InvalidInput`` for another."""
        return pauses.queue_named(name, self.settings.queue, self.settings.bulk_queue)

    def wait(
        self,
        job_ids: Sequence[str],
        timeout: float | None = None,
        on_update: Callable[[list[JobDoc | None]], None] | None = None,
    ) -> WaitOutcome:
        """Block until every job has ended (or is unknown), or ``timeout`` passes.

        Rides out a Redis outage (see ``tasks.recovery.outage``): a timeout that passes
        meanwhile returns the documents last read, marked timed out.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        docs: dict[str, JobDoc | None] = {}

        def timed_out() -> WaitOutcome:
            ordered = [docs[job_id] for job_id in job_ids]
            if on_update:
                on_update(ordered)
            return WaitOutcome(ordered, timed_out=True)

        return self._riding_out(
            deadline, lambda outage: self._wait_jobs(job_ids, docs, deadline, on_update, outage), timed_out
        )

    def _wait_jobs(
        self,
        job_ids: Sequence[str],
        docs: dict[str, JobDoc | None],
        deadline: float | None,
        on_update: Callable[[list[JobDoc | None]], None] | None,
        outage: Outage,
    ) -> WaitOutcome:
        """One connection's worth of ``wait``: ``docs`` keeps what was read for the next one."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            # Subscribe before reading: an event between the two is not lost, and
            # after a reconnect the read finds what ended while Redis was away.
            pubsub.subscribe(results.ENDED_CHANNEL)
            outage.connected()  # a restart between this and the first read is waited out too
            unread = [
                job_id for job_id in dict.fromkeys(job_ids) if job_id not in docs or not is_finished(docs[job_id])
            ]
            docs.update(zip(unread, self._read(unread), strict=True))
            outage.recovered()
            # Kept up to date as reads come in: each loop costs what changed, not every job.
            pending = {job_id for job_id in unread if not is_finished(docs[job_id])}
            last_recheck, last_update, last_wake = time.monotonic(), float("-inf"), float("-inf")
            rechecks = Rechecks()
            while True:
                now = time.monotonic()
                if on_update and (now - last_update >= PROGRESS_EVERY or not pending):
                    on_update([docs[job_id] for job_id in job_ids])
                    last_update = now
                if not pending:
                    return WaitOutcome([docs[job_id] for job_id in job_ids], timed_out=False)
                left = None if deadline is None else deadline - now
                if left is not None and left <= 0:
                    if on_update:
                        on_update([docs[job_id] for job_id in job_ids])
                    return WaitOutcome([docs[job_id] for job_id in job_ids], timed_out=True)
                pause = last_wake + WAKE_EVERY - now
                if pause > 0:  # the ends that arrive meanwhile wait in the socket, to be read in one go
                    time.sleep(pause if left is None else min(pause, left))
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                ended = self._next_ended(
                    pubsub, pending, RECHECK_SECONDS if left is None else min(RECHECK_SECONDS, left)
                )
                if ended:  # a wake-up that brought no end (a subscription's answer, a timeout) asks no pause
                    last_wake = time.monotonic()
                docs.update(ended)
                pending.difference_update(ended)
                if pending and time.monotonic() - last_recheck >= RECHECK_SECONDS:
                    refresh = rechecks.next(pending)
                    docs.update(zip(refresh, self._read(refresh), strict=True))
                    pending.difference_update(job_id for job_id in refresh if is_finished(docs[job_id]))
                    last_recheck = time.monotonic()
        finally:
            pubsub.close()

    def wait_batch(
        self,
        batch_id: str,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Block until every member has ended (counted in ``done``); returns (batch info, timed out).

        Reads the batch's counters, not its members, so it costs the same for
        ten jobs as for ten thousand; woken by job events, at most every 0.2 s.
        Rides out a Redis outage like ``wait``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        known: dict[str, Any] = {}
        return self._riding_out(
            deadline,
            lambda outage: self._wait_batch(batch_id, known, deadline, on_update, outage),
            lambda: (dict(known), True),
        )

    def _riding_out(self, deadline: float | None, attempt: Callable[[Outage], T], timed_out: Callable[[], T]) -> T:
        """``attempt`` again after each Redis outage (backing off), until it returns or ``deadline`` passes."""
        with self._checked():
            return self._retried(deadline, attempt, timed_out)

    def _retried(self, deadline: float | None, attempt: Callable[[Outage], T], timed_out: Callable[[], T]) -> T:
        outage = Outage(deadline, self.outage_limit)
        while True:
            try:
                return attempt(outage)
            except REDIS_DOWN:
                delay = outage.failed(time.monotonic())
                if delay is None:
                    raise
                time.sleep(delay)  # the outage's backoff
                if deadline is not None and time.monotonic() >= deadline:
                    return timed_out()

    def _wait_batch(
        self,
        batch_id: str,
        known: dict[str, Any],
        deadline: float | None,
        on_update: Callable[[dict[str, Any]], None] | None,
        outage: Outage,
    ) -> tuple[dict[str, Any], bool]:
        """One connection's worth of ``wait_batch``: ``known`` keeps the counters last read."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            # Counters are read after (re)subscribing, so nothing that ended meanwhile is missed.
            pubsub.subscribe(results.ENDED_CHANNEL)
            outage.connected()
            last_read = 0.0
            while True:
                # At most one read per BATCH_REFRESH: a burst of events costs one read.
                time.sleep(max(0.0, last_read + BATCH_REFRESH - time.monotonic()))
                last_read = time.monotonic()
                info = self.batches.get(batch_id)
                if info is None:
                    raise WsuploadError(f"no batch {batch_id!r} (never created, or expired)")
                known.clear()
                known.update(info)
                outage.recovered()
                if on_update:
                    on_update(info)
                if info["done"] >= info["total"]:
                    return info, False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return info, True
                self._next_ended(pubsub, set(), RECHECK_SECONDS if left is None else min(RECHECK_SECONDS, left))
        finally:
            pubsub.close()

    @staticmethod
    def _next_ended(pubsub: redis.client.PubSub, wanted: set[str], timeout: float) -> dict[str, JobDoc]:
        """Final documents of jobs among ``wanted`` that ended, draining what is already queued.

        ``wsupload:ended`` carries the whole document: no read, and the jobs that
        ended since the last wake-up (at most one per ``WAKE_EVERY``) come in one go.
        Intermediate changes (running, retrying) are picked up by the once-a-second
        refresh, which is enough for progress.
        """
        ended: dict[str, JobDoc] = {}
        message = pubsub.get_message(timeout=timeout)
        while message is not None:
            doc = ended_doc(message["data"], wanted)
            if doc is not None:
                ended[doc["job_id"]] = doc
            message = pubsub.get_message(timeout=0)
        return ended
