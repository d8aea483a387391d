"""CPU per job of the queue path: this checkout, alone or beside another version of the code in one run.

"Before" is a git commit named on the command line, installed with its own pinned
dependencies into a venv of its own (``versions.install``); "now" is this checkout.
Each version gets its own redis-server and ``wsupload worker`` (with its own
default pool); one zero-latency sandbox serves both. Rounds alternate between the
versions, so both meet the same machine conditions: CPU time on a shared
virtual machine drifts by ±15 % within minutes, which a before/after taken in
separate runs cannot tell from a real change.

A round enqueues ``jobs`` small files through the version's own ``Producer``
(``benchmarks/producer_round.py``, run by that version's interpreter) and waits
for every job to succeed; its cost is the CPU time of the worker's process tree
plus the producer's, divided by the jobs.

``make bench`` runs ``bench``: this checkout against the direct thread pool, and
where its CPU goes; ``python -m benchmarks.run --cpu-before COMMIT`` adds the
before/after row. Run alone: ``python -m benchmarks.overhead --before COMMIT [--bulk]``.
What past designs measured here: ``benchmarks/HISTORY.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from benchmarks.harness import KEY, ZERO_LATENCY_CONCURRENCY, Row, baseline, clean_env, make_media, sandbox, tree_cpu
from benchmarks.versions import PRODUCER_ROUND, commit, console_script, install
from wsupload.config import Settings
from wsupload.tasks.job import JobRunner
from wsupload.tasks.sources.local_files import open_local
from wsupload.tasks.store.results import ResultStore, new_doc, utcnow
from wsupload.tasks.wavespeed.client import UploadClient
from wsupload.tasks.wire import encode
from wsupload.worker.dev.local_services import LocalRedis, start_redis, wait_until

CONCURRENCY = ZERO_LATENCY_CONCURRENCY
"""Threads of each version's worker (and of the direct baseline beside it)."""


@dataclass
class Version:
    label: str
    python: str
    worker_args: tuple[str, ...] = ("worker", "--concurrency", str(CONCURRENCY))
    redis: LocalRedis | None = None
    worker: subprocess.Popen[bytes] | None = None
    samples: list[float] = field(default_factory=list)
    worker_share: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)

    def cpu(self) -> float:
        assert self.worker is not None
        return tree_cpu(self.worker.pid)


@contextmanager
def running(version: Version, sandbox_url: str, key: str, work: Path) -> Iterator[Version]:
    version.redis = start_redis()
    env = clean_env() | {"REDIS_URL": version.redis.url, "WAVESPEED_BASE_URL": sandbox_url, "WAVESPEED_API_KEY": key}
    log = open(work / f"worker-{version.label}.log", "ab")  # noqa: SIM115
    # cwd outside the checkout: each interpreter imports only its own installed copy.
    version.worker = subprocess.Popen(
        # The console script every version installs, whatever its import names.
        [console_script(version.python, "wsupload"), *version.worker_args],
        env=env,
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield version
    finally:
        version.worker.terminate()
        version.worker.wait(timeout=30)
        log.close()
        version.redis.stop()


def one_round(version: Version, files: list[str], work: Path, bulk: bool = False) -> tuple[float, float]:
    """Run the files through ``version``; its (worker, producer) CPU seconds. ``bulk``: as bulk jobs."""
    assert version.redis is not None
    before = version.cpu()
    env = clean_env() | {"REDIS_URL": version.redis.url, "BENCH_BULK": "1" if bulk else "0"}
    out = subprocess.run(
        [version.python, str(PRODUCER_ROUND), *files], env=env, cwd=work, check=True, capture_output=True, text=True
    )
    producer = float(json.loads(out.stdout)["cpu"])
    return version.cpu() - before, producer


def dispatch_floor(version: Version, count: int) -> float:
    """Worker CPU per message (ms) for a task that returns at once: Celery's and kombu's share.

    Sends ``wsupload.marker`` messages naming a queue with no marker outstanding: the task
    makes one Redis call (nothing to record) and returns, while the message makes the whole
    trip (fetch, unacked bookkeeping, hand-over to a pool thread, ack). (Until this stop it sent
    upload messages without a job id, which the consumer moves aside to the dead-letter list
    before any task runs: the floor measured that path instead.)
    """
    assert version.redis is not None
    client = redis.Redis.from_url(version.redis.url)
    before = version.cpu()
    client.lpush("wsupload", *[floor_message("wsupload", n) for n in range(count)])
    wait_until(lambda: client.llen("wsupload") == 0 and client.hlen("unacked") == 0, 300, interval=0.01)
    client.close()
    return (version.cpu() - before) / count * 1000


def floor_message(queue: str, n: int) -> str:
    """A marker message in kombu's Redis envelope, for a queue that has none outstanding: nothing to record."""
    marker = encode.marker_message(f"bench-no-marker-{n % 10}", f"bench-{n}")
    return encode._redis_envelope(marker.body, marker.headers, queue)  # the envelope every Redis message has


def job_split(redis_url: str, sandbox_url: str, key: str, files: list[str], rounds: int) -> tuple[float, float]:
    """CPU per job (ms) in this process, no queue: (the upload alone, the whole job).

    The whole job is ``JobRunner.run`` on a job whose ``queued`` document is
    stored, as a producer leaves it: the upload plus the job's own bookkeeping
    (claiming it and reading its document, validating the file, recording the
    attempt before and the outcome after, the retry wrapper). One thread, no
    other load: the parts' shares, not the fleet's absolute figures.
    """
    env = {"REDIS_URL": redis_url, "WAVESPEED_BASE_URL": sandbox_url, "WAVESPEED_API_KEY": key}
    settings = Settings.from_env(env, worker=True)
    client = UploadClient(base_url=sandbox_url, api_key=key, connect_timeout=5, read_timeout=30)
    runner = JobRunner(
        settings=settings, store=ResultStore(redis.Redis.from_url(redis_url), settings.result_ttl), client=client
    )

    def uploads() -> None:
        for path in files:
            with open_local(path) as opened:
                client.upload(opened)

    queued: list[tuple[str, str]] = []

    def enqueue() -> None:
        """Each job's ``queued`` document, as a producer writes it before the message (not timed)."""
        queued[:] = [(uuid.uuid4().hex, path) for path in files]
        runner.store.create(new_doc(job_id, path, utcnow()) for job_id, path in queued)

    def jobs() -> None:
        for job_id, path in queued:
            runner.run(job_id, path)

    samples: dict[Callable[[], None], list[float]] = {uploads: [], jobs: []}
    for work in (uploads, jobs):
        enqueue()
        work()  # warm: connections, imports
    for _ in range(rounds):
        for work, runs in samples.items():
            enqueue()
            cpu = time.process_time()
            work()
            runs.append((time.process_time() - cpu) / len(files) * 1000)
    return statistics.median(samples[uploads]), statistics.median(samples[jobs])


def compare(
    versions: list[Version],
    files: list[str],
    sandbox_url: str,
    key: str,
    work: Path,
    rounds: int,
    floor_of: Version | None = None,
    bulk: bool = False,
    beside: Callable[[], None] | None = None,
) -> list[Version]:
    """Alternate rounds between the versions; each keeps its per-job CPU samples (ms).

    ``floor_of``: also measure that version's ``dispatch_floor`` once per round. ``bulk``:
    the jobs go to the bulk queue (bulk messages, in versions that have them). ``beside``:
    run once per round after the versions' (a baseline taking turns with them).
    """
    with ExitStack() as stack:
        for version in versions:
            stack.enter_context(running(version, sandbox_url, key, work))
        for version in versions:
            one_round(version, files[:50], work, bulk)  # start-up, first connections, imports
        for _ in range(rounds):
            for version in versions:
                worker, producer = one_round(version, files, work, bulk)
                version.samples.append((worker + producer) / len(files) * 1000)
                version.worker_share.append(worker / len(files) * 1000)
            if floor_of is not None:
                floor_of.floor.append(dispatch_floor(floor_of, len(files)))
            if beside is not None:
                beside()
    return versions


def bench(work: Path, count: int, rounds: int, before_ref: str | None = None) -> list[Row]:
    """CPU per job: against a direct uploader, where it goes, and (``before_ref``) against that commit, alternating."""
    files = [str(make_media(work / f"b{n:04d}.mp4", 10 * 1000)) for n in range(count)]
    now = Version("now", sys.executable)
    before = Version("before", install(before_ref, work / "before")) if before_ref else None
    direct: list[float] = []
    with sandbox() as url:

        def direct_round() -> None:
            direct.append(baseline("direct", url, str(CONCURRENCY), *files)["cpu"] / count * 1000)

        # The direct pool takes turns with the worker, round by round: both meet the same drift.
        compare([before, now] if before else [now], files, url, KEY, work, rounds, floor_of=now, beside=direct_round)
        local = start_redis()
        try:
            upload, whole = job_split(local.url, url, KEY, files, rounds)
        finally:
            local.stop()
    now_cpu, worker = statistics.median(now.samples), statistics.median(now.worker_share)
    split = f"worker {worker:.2f} ms + producer {now_cpu - worker:.2f} ms"
    per_round = statistics.median(a / b for a, b in zip(now.samples, direct, strict=True))
    rows = [
        Row(
            "CPU per job, queue path (worker + producer), zero-latency sandbox",
            now_cpu,
            "ms",
            "direct thread pool, CPU per upload (a run after each round)",
            statistics.median(direct),
            target="≤ 2 × direct (issue 23)",
            met=now_cpu <= 2 * statistics.median(direct),
            runs=now.samples,
            note=f"{split}; median of the per-round ratios {per_round:.2f}×; direct pool runs "
            + ", ".join(f"{ms:.3g}" for ms in direct),
        )
    ]
    if before is not None:
        rows.append(
            Row(
                f"CPU per job, queue path (worker + producer): now vs commit {before_ref}, alternating rounds",
                now_cpu,
                "ms",
                f"commit {before_ref} (its own pinned dependencies)",
                statistics.median(before.samples),
                note=f"{split}; where it goes: the next two rows",
            )
        )
    return [
        *rows,
        Row(
            "of which Celery + kombu: worker CPU for a message whose task makes one Redis call (wsupload.marker)",
            statistics.median(now.floor),
            "ms",
            "queue path now, worker CPU per job",
            worker,
            runs=now.floor,
            note="what no change to the task can cut",
        ),
        Row(
            "in one process, no queue: the job's own bookkeeping (whole job − upload)",
            whole - upload,
            "ms",
            "the upload itself (UploadClient)",
            upload,
            note="Redis reads/writes, validation, retry wrapper; one thread, no other load",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=commit, required=True, metavar="COMMIT", help="git commit to compare with")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bulk", action="store_true", help="jobs to the bulk queue (bulk messages)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wsupload-overhead-") as tmp:
        work = Path(tmp)
        files = [str(make_media(work / f"z{n:04d}.mp4", 10 * 1000)) for n in range(args.jobs)]
        before = Version(f"before ({args.before})", install(args.before, work / "before"))
        now = Version("now", sys.executable)
        with sandbox() as url:
            compare([before, now], files, url, KEY, work, args.rounds, floor_of=now, bulk=args.bulk)
    for version in (before, now):
        runs = ", ".join(f"{s:.2f}" for s in version.samples)
        print(f"{version.label}: median {statistics.median(version.samples):.2f} ms/job ({runs})")
    print(f"now, a task that returns at once: median {statistics.median(now.floor):.2f} ms/message")
    print(f"now / before: {statistics.median(now.samples) / statistics.median(before.samples):.2f}")


if __name__ == "__main__":
    main()
