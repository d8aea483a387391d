"""Enqueueing: ``Producer.enqueue`` of many jobs against Celery's ``send_task`` once per job.

Onto a queue nobody consumes, on the run's private Redis; flushed between rounds.
Part of ``make bench`` (``run.py``).
"""

from __future__ import annotations

import time

from benchmarks.harness import Row, median
from wsupload.config import Settings
from wsupload.config.settings import UPLOAD_TASK_NAME
from wsupload.worker.dev.local_services import LocalRedis
from wsupload.worker.producer import Producer


def bench(redis: LocalRedis, count: int, repeats: int) -> list[Row]:
    settings = Settings.from_env({"REDIS_URL": redis.url, "WSUPLOAD_QUEUE": "bench-nobody-listens"})
    producer = Producer(settings)
    sources = [f"/media/{n}.png" for n in range(count)]
    fast, slow = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        producer.enqueue(sources)
        fast.append(time.perf_counter() - start)
        producer.redis.flushdb()
        start = time.perf_counter()
        with producer.app.producer_or_acquire() as publisher:
            for n, source in enumerate(sources):
                producer.app.send_task(
                    UPLOAD_TASK_NAME, args=[str(n), source], queue=settings.queue, producer=publisher
                )
        slow.append(time.perf_counter() - start)
        producer.redis.flushdb()
    return [
        Row(
            f"enqueue {count} jobs (producer API)",
            median(fast),
            "s",
            "Celery send_task per job",
            median(slow),
            "< 2 s",
            median(fast) < 2,
            runs=fast,
        )
    ]
