"""One Redis broker beside one RabbitMQ broker, on the same work, in one run: the scaling guide's figures.

Two rows per measurement, the RabbitMQ one with the Redis one as its baseline:

- **enqueue**: ``count`` jobs through ``Producer.enqueue`` onto a queue nobody
  consumes. On Redis one Lua commit writes documents and messages; on RabbitMQ the
  documents go to Redis and the messages are published with confirms, so the
  call returns only when the broker holds every job.
- **end to end**: ``jobs`` small files (20 KB) through one worker (concurrency
  ``concurrency``) against a zero-latency sandbox, enqueue to the last job's
  success: what one broker sustains when the uploads themselves cost little.

Both brokers run here: the Redis is the run's private redis-server (it also holds
the results in both cases), RabbitMQ the machine's server on 127.0.0.1:5672 in a
vhost of the run's own (``tests/integration/rabbit.py``). Rounds alternate between the brokers
so both meet the same machine conditions. ``python -m benchmarks.brokers`` runs it alone.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from benchmarks.harness import KEY, Row, busy_cores, clean_env, cpu_note, make_media, sandbox, table
from tests.integration.rabbit import RabbitUnavailable, rabbit_vhost
from wsupload.config import Settings
from wsupload.worker.dev.local_services import LocalRedis, WorkerProcess, start_redis
from wsupload.worker.producer import Producer

SMALL = 20 * 1000
"""Bytes per file in the end-to-end rows: small, so the broker's share of a job shows."""


def producer_env(redis_url: str, broker_url: str | None, queue: str) -> dict[str, str]:
    env = {"REDIS_URL": redis_url, "WSUPLOAD_QUEUE": queue, "WSUPLOAD_BULK_QUEUE": f"{queue}.bulk"}
    if broker_url:
        env["WSUPLOAD_BROKER_URL"] = broker_url
    return env


def enqueue_seconds(redis: LocalRedis, broker_url: str | None, count: int) -> float:
    """Seconds for one ``enqueue`` of ``count`` jobs onto a fresh queue nobody consumes."""
    producer = Producer(Settings.from_env(producer_env(redis.url, broker_url, f"bench-{uuid.uuid4().hex[:8]}")))
    sources = [f"/media/{n}.png" for n in range(count)]
    try:
        start = time.perf_counter()
        producer.enqueue(sources)
        return time.perf_counter() - start
    finally:
        producer.redis.flushdb()


def end_to_end_rate(
    redis: LocalRedis, broker_url: str | None, url: str, work: Path, files: list[str], concurrency: int
) -> tuple[float, float]:
    """Jobs per second through one worker on this broker, and the cores busy meanwhile."""
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    env = clean_env() | producer_env(redis.url, broker_url, queue)
    env |= {"WAVESPEED_BASE_URL": url, "WAVESPEED_API_KEY": KEY}
    producer = Producer(Settings.from_env({k: v for k, v in env.items() if k != "WAVESPEED_API_KEY"}))
    worker = WorkerProcess(env=env, log_path=work / f"worker-{queue}.log", concurrency=concurrency).start()
    try:
        worker.wait_ready(producer.app)

        def run() -> float:
            start = time.perf_counter()
            jobs = producer.enqueue(files)
            outcome = producer.wait([job.job_id for job in jobs], timeout=600)
            assert outcome.all_succeeded, [d for d in outcome.docs if d and d["status"] != "succeeded"][:3]
            return len(files) / (time.perf_counter() - start)

        return busy_cores(run)
    finally:
        worker.stop()
        producer.redis.flushdb()


def bench(redis: LocalRedis, work: Path, quick: bool) -> list[Row]:
    """The rows as ``make bench`` measures them (``quick``: 1,000 enqueued, 100 end to end, one round)."""
    return measure(
        redis,
        work,
        enqueue_count=1000 if quick else 10_000,
        jobs=100 if quick else 1000,
        concurrency=32,
        rounds=1 if quick else 3,
    )


def measure(
    redis: LocalRedis, work: Path, *, enqueue_count: int, jobs: int, concurrency: int, rounds: int
) -> list[Row]:
    with ExitStack() as stack:
        try:
            amqp_url = stack.enter_context(rabbit_vhost())
        except RabbitUnavailable as exc:
            return [Row("Redis broker vs RabbitMQ broker", float("nan"), "", note=f"not measured: {exc}")]
        on_redis, on_rabbit = [], []
        for _ in range(rounds):
            on_redis.append(enqueue_seconds(redis, None, enqueue_count))
            on_rabbit.append(enqueue_seconds(redis, amqp_url, enqueue_count))
        rabbit_rate = enqueue_count / statistics.median(on_rabbit)
        redis_rate = enqueue_count / statistics.median(on_redis)
        rows = [
            Row(
                f"enqueue {enqueue_count} jobs, RabbitMQ broker (publisher confirms), results in Redis",
                statistics.median(on_rabbit),
                "s",
                "Redis broker (one Lua commit)",
                statistics.median(on_redis),
                "< 2 s",
                statistics.median(on_rabbit) < 2,
                runs=on_rabbit,
                note=f"{rabbit_rate:.0f} jobs/s vs {redis_rate:.0f} jobs/s",
            )
        ]
        folder = work / "small"
        folder.mkdir(exist_ok=True)
        files = [str(make_media(folder / f"f{n:04d}.mp4", SMALL)) for n in range(jobs)]
        with sandbox(latency=0.0) as url:
            redis_runs, rabbit_runs = [], []
            for _ in range(rounds):
                redis_runs.append(end_to_end_rate(redis, None, url, work, files, concurrency))
                rabbit_runs.append(end_to_end_rate(redis, amqp_url, url, work, files, concurrency))
        rate = statistics.median([r for r, _ in rabbit_runs])
        rows.append(
            Row(
                f"{jobs} × 20 KB end to end, zero latency, one worker (concurrency {concurrency}), RabbitMQ broker",
                rate,
                "jobs/s",
                "Redis broker",
                statistics.median([r for r, _ in redis_runs]),
                runs=[r for r, _ in rabbit_runs],
                note=cpu_note(statistics.median([c for _, c in rabbit_runs + redis_runs])),
            )
        )
        return rows
    raise AssertionError("unreachable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round: checks the harness")
    args = parser.parse_args()
    redis = start_redis()
    try:
        with tempfile.TemporaryDirectory(prefix="wsupload-brokers-") as tmp:
            rows = bench(redis, Path(tmp), args.quick)
    finally:
        redis.stop()
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
