"""The Python producer API: enqueue uploads, read their status, wait for them.

Needs Redis only, never the API key. Each job's ``queued`` document is written
before its message, in the same transaction, so a poller never sees "unknown"
for a real job; messages are built by ``worker.wire`` and pipelined, so 10,000
jobs cost a handful of round trips. Interactive jobs go to ``WSUPLOAD_QUEUE``,
bulk ones to ``WSUPLOAD_BULK_QUEUE``.
Waiting listens on ``wsupload:events`` instead of polling, and re-reads the
documents once a second as a safety net in case a notification was missed.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery

from config.errors import WsuploadError
from config.settings import Settings
from tasks import results
from tasks.batches import BatchStore
from tasks.discovery import Found
from tasks.results import JobDoc, ResultStore
from worker import wire
from worker.app import create_app

RECHECK_SECONDS = 1.0
CHUNK = 2000
"""Jobs per Redis transaction when enqueueing."""
BATCH_REFRESH = 0.2


class EnqueueError(WsuploadError):
    """Some jobs could not be sent; ``sent`` lists those that were."""

    def __init__(self, message: str, sent: list[Job]) -> None:
        super().__init__(message, sent)
        self.sent = sent


@dataclass(frozen=True)
class Job:
    job_id: str
    source: str


@dataclass(frozen=True)
class WaitOutcome:
    docs: list[JobDoc | None]
    timed_out: bool

    @property
    def all_succeeded(self) -> bool:
        return not self.timed_out and all(d is not None and d["status"] == results.SUCCEEDED for d in self.docs)


def normalize_source(source: str) -> str:
    """Local paths become absolute (the worker has no idea of the producer's cwd)."""
    source = source.strip()
    if source and "://" not in source:
        return os.path.abspath(source)
    return source


def is_finished(doc: JobDoc | None) -> bool:
    """Terminal, or unknown (never enqueued, or its document expired)."""
    return doc is None or doc["status"] in results.TERMINAL


@dataclass(frozen=True)
class Batch:
    batch_id: str
    name: str | None
    jobs: list[Job]


class Producer:
    def __init__(self, settings: Settings, *, client: redis.Redis | None = None, app: Celery | None = None) -> None:
        self.settings = settings
        self.redis = client or redis.Redis.from_url(settings.redis_url)
        self.store = ResultStore(self.redis, settings.result_ttl)
        self.batches = BatchStore(self.redis, settings.result_ttl)
        self._app = app

    @property
    def app(self) -> Celery:
        """A Celery app for control commands (ping); enqueueing does not need it."""
        if self._app is None:
            self._app = create_app(self.settings)
        return self._app

    def enqueue(
        self, sources: Sequence[str], *, bulk: bool = False, options: dict[str, Any] | None = None
    ) -> list[Job]:
        """One job per source, on the interactive queue unless ``bulk``."""
        jobs = [Job(uuid.uuid4().hex, normalize_source(source)) for source in sources]
        self._push(jobs, bulk=bulk, options=options)
        return jobs

    def enqueue_batch(
        self,
        sources: Sequence[Found | str],
        *,
        name: str | None = None,
        bulk: bool = True,
        options: dict[str, Any] | None = None,
    ) -> Batch:
        """Many jobs under one batch id; bulk queue and deduplication unless told otherwise."""
        found = [item if isinstance(item, Found) else Found(item) for item in sources]
        jobs = [Job(uuid.uuid4().hex, normalize_source(item.source)) for item in found]
        batch_id = uuid.uuid4().hex
        total = sum(item.size or 0 for item in found)
        self._push(jobs, bulk=bulk, options={"dedup": True, **(options or {})}, batch=(batch_id, name, total))
        return Batch(batch_id, name, jobs)

    def _push(
        self,
        jobs: list[Job],
        *,
        bulk: bool,
        options: dict[str, Any] | None,
        batch: tuple[str, str | None, int] | None = None,
    ) -> None:
        """Documents, then messages, a chunk per transaction: each chunk is sent whole or not at all."""
        queue = self.settings.bulk_queue if bulk else self.settings.queue
        now = results.utcnow()
        batch_id = batch[0] if batch else None
        sent: list[Job] = []
        try:
            for start in range(0, max(len(jobs), 1), CHUNK):
                chunk = jobs[start : start + CHUNK]
                pipe = self.redis.pipeline(transaction=True)
                if batch and start == 0:
                    self.batches.create(pipe, batch[0], batch[1], [j.job_id for j in jobs], batch[2])
                self.store.create((results.new_doc(j.job_id, j.source, now, batch_id) for j in chunk), pipe)
                for job in chunk:
                    pipe.lpush(queue, wire.upload_message(job.job_id, job.source, queue, options))
                pipe.execute()
                sent.extend(chunk)
        except redis.RedisError as exc:
            if batch_id and sent:
                self.redis.hset(results.batch_key(batch_id), "total", len(sent))
            raise EnqueueError(f"sent {len(sent)} of {len(jobs)} jobs before Redis failed: {exc}", sent) from exc

    def status(self, job_ids: Sequence[str]) -> list[JobDoc | None]:
        return self.store.get_many(job_ids)

    def wait(
        self,
        job_ids: Sequence[str],
        timeout: float | None = None,
        on_update: Callable[[list[JobDoc | None]], None] | None = None,
    ) -> WaitOutcome:
        """Block until every job is terminal (or unknown), or ``timeout`` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        wanted = set(job_ids)
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        # Subscribe before the first read: an event between the two is not lost.
        pubsub.subscribe(results.EVENTS_CHANNEL)
        try:
            docs = dict(zip(job_ids, self.status(job_ids), strict=True))
            last_full_read = time.monotonic()
            while True:
                if on_update:
                    on_update([docs[job_id] for job_id in job_ids])
                pending = [job_id for job_id in job_ids if not is_finished(docs[job_id])]
                if not pending:
                    return WaitOutcome([docs[job_id] for job_id in job_ids], timed_out=False)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return WaitOutcome([docs[job_id] for job_id in job_ids], timed_out=True)
                changed = self._next_changes(
                    pubsub, wanted, RECHECK_SECONDS if left is None else min(RECHECK_SECONDS, left)
                )
                if time.monotonic() - last_full_read >= RECHECK_SECONDS:
                    changed.update(pending)
                    last_full_read = time.monotonic()
                refresh = list(changed)
                docs.update(zip(refresh, self.status(refresh), strict=True))
        finally:
            pubsub.close()

    def wait_batch(
        self,
        batch_id: str,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Block until every member is terminal; returns (batch info, timed out).

        Reads the batch's counters, not its members, so it costs the same for
        ten jobs as for ten thousand; woken by job events, at most every 0.2 s.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        pubsub.subscribe(results.EVENTS_CHANNEL)
        try:
            last_read = 0.0
            while True:
                # At most one read per BATCH_REFRESH: a burst of events costs one read.
                time.sleep(max(0.0, last_read + BATCH_REFRESH - time.monotonic()))
                last_read = time.monotonic()
                info = self.batches.get(batch_id)
                if info is None:
                    raise WsuploadError(f"no batch {batch_id!r} (never created, or expired)")
                if on_update:
                    on_update(info)
                if info["done"] >= info["total"]:
                    return info, False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return info, True
                self._next_changes(pubsub, set(), RECHECK_SECONDS if left is None else min(RECHECK_SECONDS, left))
        finally:
            pubsub.close()

    @staticmethod
    def _next_changes(pubsub: redis.client.PubSub, wanted: set[str], timeout: float) -> set[str]:
        """Job ids among ``wanted`` that changed status, draining what is already queued."""
        changed: set[str] = set()
        message = pubsub.get_message(timeout=timeout)
        while message is not None:
            try:
                job_id = json.loads(message["data"])["job_id"]
            except (ValueError, KeyError, TypeError):
                job_id = None
            if job_id in wanted:
                changed.add(job_id)
            message = pubsub.get_message(timeout=0)
        return changed
