"""Completion → caller: how long after a job's ``finished_at`` ``Producer.wait`` returns, one job at a time.

One worker against a zero-latency sandbox; 10 warm-up jobs, then 20 measured, each
enqueued and awaited alone; both ends read one clock. Part of ``make bench`` (``run.py``).
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from benchmarks.harness import ZERO_LATENCY_CONCURRENCY, Fleet, Row, make_media, median, sandbox
from wsupload.worker.dev.local_services import LocalRedis


def bench(redis: LocalRedis, work: Path) -> list[Row]:
    files = [str(make_media(work / f"z{n:04d}.mp4", 10 * 1000)) for n in range(30)]
    with sandbox() as url:
        fleet = Fleet(redis, url, work, count=1, concurrency=ZERO_LATENCY_CONCURRENCY)
        try:
            fleet.run(files[:10])  # warm
            latencies = []
            for path in files[10:]:
                (job,) = fleet.producer.enqueue([path])
                outcome = fleet.producer.wait([job.job_id], timeout=60)
                returned = time.time()
                finished = datetime.fromisoformat(outcome.docs[0]["finished_at"]).timestamp()  # type: ignore[index]
                latencies.append((returned - finished) * 1000)
        finally:
            fleet.stop()
    return [
        Row(
            "completion → caller: wait() returns after the job ends (median)",
            median(latencies),
            "ms",
            target="< 50 ms",
            met=median(latencies) < 50,
            runs=latencies,
        )
    ]
