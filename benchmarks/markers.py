"""The marker sweep on RabbitMQ (``tasks.recovery.markers``): a long backlog is never published again, and its cost.

Three rows, measured in one run against the machine's RabbitMQ (a vhost of the run's own) and
the run's private Redis:

- **backlog**: ``backlog`` jobs enqueued (``Producer.enqueue_batch``, 10,000 a call) behind a worker that is
  SIGSTOPped first (it holds its prefetch and takes nothing more), then this process runs the
  workers' sweep (``worker.sweeper.sweep_for``) ``cycles`` times at a 1 s interval with a 1 s
  marker age: how many jobs it published again (the target: none), with the markers
  outstanding and the queue's ready count in the note.
- **a sweep round** over that backlog, with the marker round against the owed sweep alone
  (the baseline), rounds alternating: what the marker costs a worker every half lease.
- **a terminal write** (``ResultStore.save`` of a job's end) with the two entered sets to
  leave (``keys.entered``) against the same write without them, the sets holding the
  backlog, rounds alternating: what the entered sets cost each job at its end (the same
  script: no round trip more).

``python -m benchmarks.markers`` runs it alone (``--quick``: 10,000 jobs).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.harness import KEY, Row, clean_env, table
from tests.integration.rabbit import RabbitUnavailable, rabbit_vhost
from wsupload.config import Settings
from wsupload.tasks.recovery.early_ack_sweep import OwedSweep, Report
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import JobDoc, ResultStore, cancelled, utcnow
from wsupload.tasks.wire.amqp_publisher import ready_messages
from wsupload.worker.dev.local_services import LocalRedis, WorkerProcess, start_redis, wait_until
from wsupload.worker.producer import Producer
from wsupload.worker.sweeper import sweep_for

SAVES = 2000
"""Terminal writes per round of the end-of-job row."""
BATCH = 10_000
"""Jobs per ``enqueue_batch`` call."""


def env_for(redis: LocalRedis, amqp_url: str) -> dict[str, str]:
    queue = f"bench-markers-{uuid.uuid4().hex[:8]}"
    return {
        "REDIS_URL": redis.url,
        "WSUPLOAD_BROKER_URL": amqp_url,
        "WSUPLOAD_QUEUE": queue,
        "WSUPLOAD_BULK_QUEUE": f"{queue}.bulk",
        "WSUPLOAD_LEASE": "2",  # a sweep every second
        "WSUPLOAD_AMQP_MARKER_AGE": "1",
        "WSUPLOAD_AMQP_PUBLISH_GRACE": "5",
    }


def sweep_round(sweep: OwedSweep, queues: tuple[str, ...]) -> tuple[float, Report]:
    """One round, its lock freed first (the benchmark sweeps back to back); seconds and its report."""
    sweep.client.delete(*(keys.owed_lock(q) for q in queues))
    start = time.perf_counter()
    report = sweep.sweep()
    seconds = time.perf_counter() - start
    assert report is not None
    return seconds, report


def saves_per_second(store: ResultStore, docs: list[JobDoc]) -> float:
    start = time.perf_counter()
    for doc in docs:
        store.save(doc)
    return len(docs) / (time.perf_counter() - start)


def measure(redis: LocalRedis, work: Path, *, backlog: int, cycles: int, rounds: int) -> list[Row]:
    try:
        with rabbit_vhost("bench") as amqp_url:
            return _measure(redis, amqp_url, work, backlog=backlog, cycles=cycles, rounds=rounds)
    except RabbitUnavailable as exc:
        return [Row("marker sweep (RabbitMQ)", float("nan"), "", note=f"not measured: {exc}")]


def _measure(redis: LocalRedis, amqp_url: str, work: Path, *, backlog: int, cycles: int, rounds: int) -> list[Row]:
    env = env_for(redis, amqp_url)
    settings = Settings.from_env(env)
    producer = Producer(settings)
    queue = settings.bulk_queue  # where a batch goes
    worker_env = clean_env() | env | {"WAVESPEED_BASE_URL": "http://127.0.0.1:9", "WAVESPEED_API_KEY": KEY}
    worker = WorkerProcess(env=worker_env, log_path=work / "worker.log", concurrency=2).start()
    try:
        worker.wait_ready(producer.app)
        assert worker.process is not None
        os.killpg(worker.process.pid, signal.SIGSTOP)
        started = time.perf_counter()
        job_ids: list[str] = []
        for start in range(0, backlog, BATCH):  # one commit of 100,000 outlasts the client's socket timeout here
            batch = producer.enqueue_batch([f"/media/{n}.png" for n in range(start, min(start + BATCH, backlog))])
            job_ids += [job.job_id for job in batch.jobs]
        enqueue_seconds = time.perf_counter() - started
        first = producer.redis.zscore(keys.entered(queue), job_ids[0])
        assert first is not None
        wait_until(lambda: first <= producer.redis.time()[0] * 1000 - 1000, 30, what="a marker's age")

        sweep = sweep_for(settings, owner="bench")
        plain = sweep_for(settings, owner="bench")
        assert isinstance(sweep, OwedSweep)
        assert isinstance(plain, OwedSweep)
        plain.markers = None
        queues = sweep.queues
        reports: list[Report] = []
        try:
            for _ in range(cycles):  # at the workers' cadence: a marker goes, then waits among the backlog
                reports.append(wait_until(sweep.sweep, 10, interval=0.05, what="a sweep"))
            with_markers, alone = [], []
            for _ in range(rounds):
                with_markers.append(sweep_round(sweep, queues)[0])
                alone.append(sweep_round(plain, queues)[0])
        finally:
            sweep.publisher().close()
            plain.publisher().close()
        published = sum(len(r.lost) + len(r.published) for r in reports)
        markers_sent = sum(len(r.markers) for r in reports)
        outstanding = sum(producer.redis.exists(keys.marker(q)) for q in queues)
        ready = ready_messages(amqp_url, [queue])[0]

        # The end-of-job cost: terminal writes of other jobs, the entered sets holding the backlog.
        entered = [keys.entered(q) for q in queues]
        leaving, keeping = ResultStore(producer.redis, 3600, entered=entered), ResultStore(producer.redis, 3600)
        ids = iter(job_ids)
        with_sets: list[float] = []
        without: list[float] = []
        for _ in range(rounds):
            for store, rates in ((leaving, with_sets), (keeping, without)):
                chunk = [next(ids) for _ in range(SAVES)]  # jobs of the backlog not ended yet
                docs = [cancelled(doc, utcnow()) for doc in producer.status(chunk) if doc is not None]
                rates.append(saves_per_second(store, docs))
    finally:
        if worker.process is not None:
            os.killpg(worker.process.pid, signal.SIGCONT)
        worker.stop()
        producer.redis.flushdb()
        producer.close()
    return [
        Row(
            f"{backlog} jobs behind a SIGSTOPped worker, RabbitMQ, {cycles} sweeps: jobs published again",
            float(published),
            "jobs",
            target="0",
            met=published == 0,
            note=f"{markers_sent} marker sent, {outstanding} outstanding, {ready} ready on the queue;"
            f" enqueued in {enqueue_seconds:.1f} s",
        ),
        Row(
            f"a sweep round over {backlog} queued jobs, marker outstanding (RabbitMQ)",
            statistics.median(with_markers) * 1000,
            "ms",
            "the owed sweep alone",
            statistics.median(alone) * 1000,
            runs=[s * 1000 for s in with_markers],
        ),
        Row(
            f"terminal writes leaving the entered sets ({backlog} entries)",
            statistics.median(with_sets),
            "writes/s",
            "the same writes without them",
            statistics.median(without),
            runs=with_sets,
        ),
    ]


def bench(redis: LocalRedis, work: Path, quick: bool) -> list[Row]:
    """The rows as ``make bench`` measures them (``quick``: 10,000 jobs, one round)."""
    return measure(redis, work, backlog=10_000 if quick else 100_000, cycles=5, rounds=1 if quick else 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    redis = start_redis()
    try:
        with tempfile.TemporaryDirectory(prefix="wsupload-bench-") as tmp:
            rows = bench(redis, Path(tmp), quick)
    finally:
        redis.stop()
    print("\n".join(table(rows)))
    for row in rows:
        print(f"- {row.name}: {', '.join(f'{r:.3g}' for r in row.runs)} {row.note}")


if __name__ == "__main__":
    main()
