"""Putting jobs on the queue: documents and messages, written together.

Each job's ``queued`` document is written before its message, in the same
transaction, so a poller never sees "unknown" for a real job. Messages are
built by ``tasks.wire`` and pipelined, a chunk of jobs per transaction, so
10,000 jobs cost a handful of round trips. Interactive jobs go to
``WSUPLOAD_QUEUE``, bulk ones to ``WSUPLOAD_BULK_QUEUE``. Used by the producer
API and by scheduled scans, which run inside workers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from config.errors import WsuploadError
from config.settings import Settings
from tasks import results, wire
from tasks.batches import BatchStore
from tasks.discovery import Found
from tasks.results import ResultStore

CHUNK = 2000
"""Jobs per Redis transaction when enqueueing."""


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
class Batch:
    batch_id: str
    name: str | None
    jobs: list[Job]


def normalize_source(source: str) -> str:
    """Local paths become absolute (the worker has no idea of the producer's cwd)."""
    source = source.strip()
    if source and "://" not in source:
        return os.path.abspath(source)
    return source


class Enqueuer:
    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self.store = ResultStore(self.redis, settings.result_ttl)
        self.batches = BatchStore(self.redis, settings.result_ttl)

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
