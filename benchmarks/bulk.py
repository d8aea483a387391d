"""Bulk messages against one message per job: jobs/s and CPU per job, side by side in one run (issue 11).

Measures bulk messages (``wsupload.upload_many``, ``tasks/upload_many.py``): one
Celery message carrying up to K jobs, each job still claimed, fenced, recorded
and ended on its own. Every K enqueues the files as one batch through the shipped
producer with ``WSUPLOAD_JOBS_PER_MESSAGE=K`` (``bulk_round.py``): K = 1 is one
``wsupload.upload`` message per job, 32 the default. Beside them, in the same
rounds, the direct thread pool of requests sessions (``baselines.py direct``).

Two workloads, each with its own redis-server, sandbox and one ``wsupload
worker`` (this checkout's, its threads pool):

- ``throughput``: ``--jobs`` × 200 KB, 50 ms sandbox latency, concurrency 32
  (the throughput row of ``leases.py``), direct pool of 32 sessions;
- ``zero``: ``--jobs`` × 10 KB, no latency, concurrency 4 (the CPU-per-job row of
  ``overhead.py``), direct pool of 4 threads.

A round runs the direct pool, then each K, the order of the Ks rotating
round by round. Per job: wall time from the first enqueue to the last success,
and CPU time (user + system) of the worker's process plus the producer's,
divided by the jobs; the direct pool's CPU is its own process's. Medians over
``--rounds``.

The ``kill`` check (``--only kill``): one message of 16 jobs, two workers, the one
running it SIGKILLed once 5 jobs have ended; says whether every job ended once.

Figures and the profile beside them: ``benchmarks/BULK.md``. Run: ``python -m benchmarks.bulk [--jobs N] [--rounds N]
[--only throughput,zero,kill]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from celery import Celery

from benchmarks.bulk_round import enqueue_many
from benchmarks.harness import (
    KEY,
    ROOT,
    EndedCounter,
    Row,
    baseline,
    clean_env,
    make_media,
    sandbox,
    table,
    tree_cpu,
    within,
)
from wsupload.config import Settings
from wsupload.worker.dev.local_services import start_redis, wait_until

ROUND_SCRIPT = Path(__file__).resolve().parent / "bulk_round.py"
PER_MESSAGE = (1, 8, 32)
DEFAULT_PER_MESSAGE = Settings.from_env({}).jobs_per_message
WORKER = "import sys; from wsupload.worker.cli import main; sys.exit(main())"
"""``wsupload worker``, as this venv runs it."""


@dataclass(frozen=True)
class Workload:
    name: str
    size: int
    latency: float
    concurrency: int


WORKLOADS = {
    "throughput": Workload("throughput", 200 * 1000, 0.05, 32),
    "zero": Workload("zero", 10 * 1000, 0.0, 4),
}


@dataclass
class Samples:
    rates: list[float] = field(default_factory=list)
    """Jobs per second."""
    cpu: list[float] = field(default_factory=list)
    """Worker + producer CPU per job, ms."""
    worker_cpu: list[float] = field(default_factory=list)
    cores: list[float] = field(default_factory=list)


@contextmanager
def worker(redis_url: str, sandbox_url: str, concurrency: int, work: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = clean_env() | {"REDIS_URL": redis_url, "WAVESPEED_BASE_URL": sandbox_url, "WAVESPEED_API_KEY": KEY}
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "worker.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", WORKER, "worker", "--concurrency", str(concurrency)],
            env=env | {"PYTHONPATH": str(ROOT)},
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            process.terminate()
            process.wait(timeout=60)


def one_round(per_message: int, files: list[str], redis_url: str, worker_pid: int, work: Path) -> tuple[float, ...]:
    """(seconds, worker CPU s, producer CPU s, cores busy): ``files`` at ``per_message`` jobs a message."""
    before = tree_cpu(worker_pid)
    psutil.cpu_percent(interval=None)
    done = subprocess.run(
        [sys.executable, str(ROUND_SCRIPT), str(per_message), *files],
        env=clean_env() | {"REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)},
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
    )
    cores = psutil.cpu_percent(interval=None) / 100 * (psutil.cpu_count() or 1)
    out = json.loads(done.stdout)
    return float(out["seconds"]), tree_cpu(worker_pid) - before, float(out["cpu"]), cores


def run_workload(load: Workload, count: int, rounds: int, work: Path) -> dict[str, Samples]:
    work.mkdir(parents=True)
    files = [str(make_media(work / f"b{n:04d}.mp4", load.size)) for n in range(count)]
    samples = {"direct": Samples(), **{str(k): Samples() for k in PER_MESSAGE}}
    redis_server = start_redis()
    try:
        with sandbox(latency=load.latency) as url, worker(redis_server.url, url, load.concurrency, work) as process:
            for k in PER_MESSAGE:  # warm: imports, connections, every thread
                one_round(k, files[: 2 * load.concurrency], redis_server.url, process.pid, work)
            for n in range(rounds):
                direct = baseline("direct", url, str(load.concurrency), *files)
                samples["direct"].rates.append(count / direct["seconds"])
                samples["direct"].cpu.append(direct["cpu"] / count * 1000)
                order = PER_MESSAGE[n % len(PER_MESSAGE) :] + PER_MESSAGE[: n % len(PER_MESSAGE)]
                for k in order:
                    seconds, worker_cpu, producer_cpu, cores = one_round(k, files, redis_server.url, process.pid, work)
                    mine = samples[str(k)]
                    mine.rates.append(count / seconds)
                    mine.cpu.append((worker_cpu + producer_cpu) / count * 1000)
                    mine.worker_cpu.append(worker_cpu / count * 1000)
                    mine.cores.append(cores)
                    print(
                        f"{load.name} round {n + 1} k={k}: {count / seconds:.0f} jobs/s,"
                        f" {(worker_cpu + producer_cpu) / count * 1000:.2f} ms CPU/job, {cores:.1f} cores",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        redis_server.stop()
    return samples


def rows(load: Workload, count: int, samples: dict[str, Samples]) -> list[Row]:
    direct = samples["direct"]
    base_rate, base_cpu = statistics.median(direct.rates), statistics.median(direct.cpu)
    where = f"{count} × {load.size // 1000} KB, {load.latency * 1000:g} ms latency, concurrency {load.concurrency}"
    out: list[Row] = []
    for k in PER_MESSAGE:
        mine = samples[str(k)]
        what = "wsupload.upload" if k == 1 else "wsupload.upload_many"
        what += ", the default" if k == DEFAULT_PER_MESSAGE else ""
        cores = statistics.median(mine.cores)
        out.append(
            Row(
                f"{where}: {k} job(s) a message ({what}), jobs/s",
                statistics.median(mine.rates),
                "jobs/s",
                f"direct thread pool ({load.concurrency} sessions)",
                base_rate,
                "≥ 0.8 × direct",
                statistics.median(mine.rates) >= 0.8 * base_rate,
                note=f"{cores:.1f} of {psutil.cpu_count()} cores busy",
                runs=mine.rates,
            )
        )
        out.append(
            Row(
                f"same, {k} job(s) a message: CPU per job (worker + producer)",
                statistics.median(mine.cpu),
                "ms",
                "direct thread pool, CPU per upload",
                base_cpu,
                "≤ 1.5 × direct",
                statistics.median(mine.cpu) <= 1.5 * base_cpu,
                note=f"worker {statistics.median(mine.worker_cpu):.2f} ms",
                runs=mine.cpu,
            )
        )
    return out


KILL_JOBS = 16
KILL_AFTER = 5
"""The ``kill`` check: one message of ``KILL_JOBS`` jobs, its worker SIGKILLed once this many have ended."""


def kill_check(work: Path, cap: float = 60.0) -> str:
    """One ``wsupload.upload_many`` message, two workers; the one running it SIGKILLed mid-message. What came of it.

    Says how many final documents each job got (published on ``wsupload:ended``:
    one each is right), the uploads the sandbox saw, and the jobs delivered twice
    (generation 2: the one in flight at the kill; the ended ones must not be).
    """
    work.mkdir(parents=True)
    files = [str(make_media(work / f"k{n:02d}.mp4", 10 * 1000)) for n in range(KILL_JOBS)]
    redis_server = start_redis()
    try:
        with ExitStack() as stack:
            url = stack.enter_context(sandbox(latency=0.2))
            workers = [stack.enter_context(worker(redis_server.url, url, 2, work / f"w{n}")) for n in range(2)]
            app = Celery(broker=redis_server.url)
            wait_until(lambda: len(app.control.ping(timeout=0.5) or []) >= 2, 60, what="both workers to answer")
            app.close()
            os.environ["REDIS_URL"] = redis_server.url
            ended = stack.enter_context(EndedCounter(redis_server.url))
            producer, job_ids = enqueue_many(files, KILL_JOBS, spread=1)
            wait_until(lambda: len(ended.counts) >= KILL_AFTER, cap, interval=0.02, what="jobs to end")
            docs = [doc for doc in producer.status(job_ids) if doc and doc["status"] == "running"]
            holder = [w for w in workers if docs and f"wsupload-{w.pid}@" in str(docs[0].get("worker"))]
            if len(holder) != 1:
                return f"could not tell which worker runs the message (running: {len(docs)})"
            at_kill = len(ended.counts)
            os.killpg(holder[0].pid, signal.SIGKILL)
            holder[0].wait()
            finished = within(lambda: len(ended.counts) >= KILL_JOBS, cap, 0.1)
            with urllib.request.urlopen(url + "/_sandbox/uploads", timeout=10) as answer:
                uploads = len(json.load(answer))
            final = producer.status(job_ids)
    finally:
        redis_server.stop()
    statuses = Counter(doc["status"] if doc else "missing" for doc in final)
    twice = [doc["job_id"] for doc in final if doc and int(doc.get("generation") or 0) > 1]
    return (
        f"one message of {KILL_JOBS} jobs, its worker SIGKILLed after {at_kill} had ended:"
        f" {'all ended' if finished else 'NOT all ended'} within {cap:g} s ({dict(statuses)}),"
        f" {sum(ended.counts.values())} final documents, {sum(n > 1 for n in ended.counts.values())} job(s) ended"
        f" twice, {uploads} uploads, {len(twice)} job(s) delivered twice (generation 2)"
    )


def bench(work: Path, quick: bool) -> list[Row]:
    """Every workload's rows, as ``make bench`` runs them (``quick``: 100 jobs, one round)."""
    count, rounds = (100, 1) if quick else (1000, 3)
    out: list[Row] = []
    for name, load in WORKLOADS.items():
        out += rows(load, count, run_workload(load, count, rounds, work / name))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(WORKLOADS), help=f"among {', '.join((*WORKLOADS, 'kill'))}")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    if unknown := set(chosen) - {*WORKLOADS, "kill"}:
        parser.error(f"--only: unknown workloads {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    out: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="wsupload-bulk-") as tmp:
        for name in chosen:
            if name == "kill":
                print(f"kill: {kill_check(Path(tmp) / name)}", file=sys.stderr, flush=True)
                continue
            load = WORKLOADS[name]
            out += rows(load, args.jobs, run_workload(load, args.jobs, args.rounds, Path(tmp) / name))
    if out:
        print("\n".join(table(out)))
    for row in out:
        print(f"- {row.name}: " + ", ".join(f"{v:.3g}" for v in row.runs))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
