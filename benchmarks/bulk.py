"""Bulk messages against one message per job: jobs/s and CPU per job, side by side in one run (issue 11).

Measures the prototype ``wsupload.upload_many`` (``tasks/upload_many.py``): one
Celery message carrying K jobs, each job still claimed, fenced, recorded and
ended on its own. K = 1 is today's path (``wsupload.upload``, one message per
job, enqueued by ``Producer.enqueue``); K = 8 and 32 are enqueued by
``bulk_round.py``'s prototype producer. Beside them, in the same rounds, the
direct thread pool of requests sessions (``baselines.py direct``).

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

What a production version still needs (not built): the producer grouping a
batch's jobs into messages in its atomic commit, with the sweep's places for
every job of a message (a message Redis loses is found by its jobs); the
consumer's check of the message's arguments; ``wsupload workers`` listing each
job of a message. Run: ``python -m benchmarks.bulk [--jobs N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from benchmarks.overhead import clean_env
from benchmarks.run import KEY, Row, baseline, make_media, sandbox, table
from wsupload.worker.dev.local_services import start_redis

HERE = Path(__file__).resolve().parent
ROUND_SCRIPT = HERE / "bulk_round.py"
ROOT = HERE.parent
PER_MESSAGE = (1, 8, 32)
WORKER = "import sys, benchmarks.bulk_task; from wsupload.worker.cli import main; sys.exit(main())"
"""``wsupload worker`` with the prototype task registered beside the shipped ones (``@shared_task``)."""


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


def tree_cpu(pid: int) -> float:
    parent = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in [parent, *parent.children(recursive=True)])


@contextmanager
def worker(redis_url: str, sandbox_url: str, concurrency: int, work: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = clean_env() | {"REDIS_URL": redis_url, "WAVESPEED_BASE_URL": sandbox_url, "WAVESPEED_API_KEY": KEY}
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
        what = "today: wsupload.upload" if k == 1 else "prototype wsupload.upload_many"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(WORKLOADS), help=f"among {', '.join(WORKLOADS)}")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    if unknown := set(chosen) - set(WORKLOADS):
        parser.error(f"--only: unknown workloads {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    out: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="wsupload-bulk-") as tmp:
        for name in chosen:
            load = WORKLOADS[name]
            out += rows(load, args.jobs, run_workload(load, args.jobs, args.rounds, Path(tmp) / name))
    print("\n".join(table(out)))
    for row in out:
        print(f"- {row.name}: " + ", ".join(f"{v:.3g}" for v in row.runs))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
