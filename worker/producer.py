"""The Python producer API: enqueue uploads, read their status, wait for them.

Needs Redis only, never the API key. Each job's ``queued`` document is written
before its message is sent, so a poller never sees "unknown" for a real job.
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

import redis
from celery import Celery

from config.errors import WsuploadError
from config.settings import UPLOAD_TASK_NAME, Settings
from tasks import results
from tasks.results import JobDoc, ResultStore
from worker.app import create_app

RECHECK_SECONDS = 1.0


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


class Producer:
    def __init__(self, settings: Settings, *, client: redis.Redis | None = None, app: Celery | None = None) -> None:
        self.settings = settings
        self.redis = client or redis.Redis.from_url(settings.redis_url)
        self.store = ResultStore(self.redis, settings.result_ttl)
        self.app = app or create_app(settings)

    def enqueue(self, sources: Sequence[str]) -> list[Job]:
        now = results.utcnow()
        jobs = [Job(uuid.uuid4().hex, normalize_source(source)) for source in sources]
        self.store.create(results.new_doc(job.job_id, job.source, now) for job in jobs)
        sent: list[Job] = []
        try:
            with self.app.producer_or_acquire() as producer:
                for job in jobs:
                    self.app.send_task(
                        UPLOAD_TASK_NAME,
                        args=[job.job_id, job.source],
                        task_id=job.job_id,
                        queue=self.settings.queue,
                        producer=producer,
                    )
                    sent.append(job)
        except Exception as exc:
            # Unsent jobs never existed: remove their documents rather than
            # leave pollers waiting on a "queued" job nobody will run.
            self.store.delete(job.job_id for job in jobs[len(sent) :])
            raise EnqueueError(f"sent {len(sent)} of {len(jobs)} jobs before the broker failed: {exc}", sent) from exc
        return jobs

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
