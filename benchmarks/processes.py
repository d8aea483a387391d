"""One ``wsupload worker --processes auto`` against the same worker in one process, at equal concurrency (issue 23).

Jobs: ``count`` × 200 KB files enqueued as ``wsupload enqueue --bulk`` does
(``Producer.enqueue(bulk=True)``: the bulk queue, bulk messages), the sandbox
answering after 50 ms, then a wait for every job. Two workers of this checkout,
each on queues of its own and each ``WSUPLOAD_CONCURRENCY`` 32 in all: one with
``WSUPLOAD_PROCESSES=auto`` (a parent and a child per core, 32 threads split over
them), one with ``WSUPLOAD_PROCESSES=1``; beside them, the direct pool of 32
requests sessions. A round runs the three, the order rotating round by round;
medians over ``repeats`` (5 in ``make bench``); the first row's note also gives
each round's auto/one ratio and the latency bound (concurrency / latency: what no split of
the same threads can pass, so on a machine fast enough for one process to come near it the
ratio is capped below the target; the row states the cap it met). Each row's note says how many cores were busy, the
machine's and the worker's own processes': the stand-in server, Redis and the
producer share the machine with the workers, and the sandbox's own share is
noted beside them (it is a Python server on the same cores, where a user's server
is elsewhere). A fourth run each round splits the direct pool the way ``auto`` splits
the worker (one process per child, each with the child's threads and a like share of
the files): what splitting gains with no queue at all, on this machine and sandbox,
beside what it gains the worker.
Part of ``make bench`` (``run.py``); alone: ``python -m benchmarks.processes``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from benchmarks.harness import KEY, Fleet, Row, baseline, busy_cores, cpu_note, make_media, median, sandbox, tree_cpu
from wsupload.worker import parent, supervisor
from wsupload.worker.dev.local_services import LocalRedis, start_redis

CONCURRENCY = 32
LATENCY = 0.05


def queues(name: str) -> dict[str, str]:
    return {"WSUPLOAD_QUEUE": f"bench-{name}", "WSUPLOAD_BULK_QUEUE": f"bench-{name}.bulk"}


def bulk_run(fleet: Fleet, files: list[str], used: list[float]) -> float:
    """Seconds from the first enqueue (bulk) to the last job's success; appends the cores its worker used."""
    pids = [w.process.pid for w in fleet.workers if w.process]
    cpu = sum(tree_cpu(pid) for pid in pids)
    start = time.perf_counter()
    jobs = fleet.producer.enqueue(files, bulk=True)
    outcome = fleet.producer.wait([j.job_id for j in jobs], timeout=3600)
    elapsed = time.perf_counter() - start
    assert outcome.all_succeeded, [d for d in outcome.docs if d and d["status"] != "succeeded"][:3]
    used.append((sum(tree_cpu(pid) for pid in pids) - cpu) / elapsed)
    return elapsed


def split_direct(url: str, files: list[str], threads: list[int]) -> float:
    """The direct pool as ``len(threads)`` processes side by side, each with its threads and a like share
    of ``files``; jobs/s from the first one's start to the last one's end (interpreter starts left out,
    as a worker's is)."""
    total, start, shares = sum(threads), 0, []
    for n, share in enumerate(threads):
        end = len(files) if n == len(threads) - 1 else start + len(files) * share // total
        shares.append(files[start:end])
        start = end
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.baselines", "direct", url, KEY, str(share), *part],
            stdout=subprocess.PIPE,
            text=True,
        )
        for share, part in zip(threads, shares, strict=True)
    ]
    try:
        reports = []
        for run in runs:
            out, _ = run.communicate()
            if run.returncode:
                raise RuntimeError(f"a split direct pool exited {run.returncode}")
            reports.append(json.loads(out))
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
    span = max(float(r["ended"]) for r in reports) - min(float(r["started"]) for r in reports)
    return len(files) / span


def sandbox_process() -> psutil.Process:
    """The sandbox ``harness.sandbox`` started: this process's child running ``wsupload … sandbox``."""
    return next(p for p in psutil.Process().children() if "sandbox" in p.cmdline())


def measured(run: Callable[[], float], server: psutil.Process, cores: list[float]) -> Callable[[], float]:
    """``run``, appending the cores the sandbox kept busy meanwhile (CPU seconds over wall seconds)."""

    def wrapped() -> float:
        cpu, start = sum(server.cpu_times()[:2]), time.perf_counter()
        result = run()
        cores.append((sum(server.cpu_times()[:2]) - cpu) / (time.perf_counter() - start))
        return result

    return wrapped


def bench(redis: LocalRedis, work: Path, count: int, repeats: int) -> list[Row]:
    folder = work / "small"
    folder.mkdir(exist_ok=True)
    files = [str(make_media(folder / f"p{n:04d}.mp4", 200 * 1000)) for n in range(count)]
    processes = supervisor.split_concurrency(CONCURRENCY, parent.processes_wanted(supervisor.AUTO))
    samples: dict[str, list[tuple[float, float]]] = {"auto": [], "one": [], "direct": [], "split": []}
    used: dict[str, list[float]] = {"auto": [], "one": []}
    """Cores the worker's own processes kept busy during each run (CPU seconds over wall seconds)."""
    served: dict[str, list[float]] = {"auto": [], "one": [], "direct": [], "split": []}
    """Cores the sandbox kept busy during each run."""
    with sandbox(latency=LATENCY) as url:
        server = sandbox_process()
        auto = Fleet(
            redis, url, work, count=1, concurrency=CONCURRENCY, env={"WSUPLOAD_PROCESSES": "auto", **queues("auto")}
        )
        one = Fleet(
            redis, url, work, count=1, concurrency=CONCURRENCY, env={"WSUPLOAD_PROCESSES": "1", **queues("one")}
        )
        plain: dict[str, Callable[[], float]] = {
            "auto": lambda: count / bulk_run(auto, files, used["auto"]),
            "one": lambda: count / bulk_run(one, files, used["one"]),
            "direct": lambda: count / baseline("direct", url, str(CONCURRENCY), *files)["seconds"],
            "split": lambda: split_direct(url, files, processes),
        }
        runs = {name: measured(run, server, served[name]) for name, run in plain.items()}
        try:
            order = list(runs)
            for round_ in range(repeats):
                for name in order[round_ % len(order) :] + order[: round_ % len(order)]:
                    samples[name].append(busy_cores(runs[name]))
        finally:
            auto.stop()
            one.stop()
    rate = {name: median([r for r, _ in runs_]) for name, runs_ in samples.items()}
    # Each round ran each once: its auto/one ratio met one stretch of the machine's drift.
    per_round = [a / b for (a, _), (b, _) in zip(samples["auto"], samples["one"], strict=True)]
    split_gain = rate["split"] / rate["direct"]
    cores = {name: median([c for _, c in runs_]) for name, runs_ in samples.items()}
    shares = "+".join(str(n) for n in processes)
    bound = CONCURRENCY / LATENCY
    # No split of the same threads can beat the server's latency: where one process comes near
    # this bound (a fast machine), the ratio it leaves is the most --processes can show.
    ceiling = (
        f"latency bound {CONCURRENCY} threads / {LATENCY * 1000:.0f} ms = {bound:.0f} jobs/s: one process reached"
        f" {rate['one'] / bound:.0%} of it, so at most {bound / rate['one']:.2f}× was possible here"
    )
    return [
        Row(
            f"{count} × 200 KB --bulk, 50 ms latency: one worker --processes auto ({len(processes)} processes,"
            f" {shares} threads)",
            rate["auto"],
            "jobs/s",
            f"the same worker, --processes 1 (concurrency {CONCURRENCY})",
            rate["one"],
            "≥ 1.35 × one process",
            rate["auto"] >= 1.35 * rate["one"],
            runs=[r for r, _ in samples["auto"]],
            note=f"{ceiling}; the direct pool split the same way gained {split_gain:.2f}× over one process"
            f" (two rows down); per-round ratios {', '.join(f'{r:.2f}' for r in per_round)}"
            f" (median {median(per_round):.2f});"
            f" auto: {cpu_note(cores['auto'])}, the worker's {len(processes) + 1} processes"
            f" {median(used['auto']):.2f} cores, the sandbox {median(served['auto']):.2f}; one process:"
            f" {cpu_note(cores['one'])}, the worker {median(used['one']):.2f} cores, the sandbox"
            f" {median(served['one']):.2f}",
        ),
        Row(
            f"same, --processes auto against the direct pool (concurrency {CONCURRENCY} in all)",
            rate["auto"],
            "jobs/s",
            f"direct thread pool ({CONCURRENCY} sessions)",
            rate["direct"],
            "≥ 1.0 × direct",
            rate["auto"] >= rate["direct"],
            runs=[r for r, _ in samples["direct"]],
            note=f"auto: {cpu_note(cores['auto'])}; direct pool: {cpu_note(cores['direct'])}, the sandbox"
            f" {median(served['direct']):.2f} cores; the direct pool reached {rate['direct'] / bound:.0%} of the"
            f" latency bound ({bound:.0f} jobs/s)",
        ),
        Row(
            f"the direct pool split as auto splits the worker ({len(processes)} processes, {shares} threads), no queue",
            rate["split"],
            "jobs/s",
            f"direct thread pool, one process ({CONCURRENCY} sessions)",
            rate["direct"],
            runs=[r for r, _ in samples["split"]],
            note=f"what splitting gains with no queue on this machine and sandbox: --processes auto reached"
            f" {rate['auto'] / rate['split']:.0%} of it; split: {cpu_note(cores['split'])}, the sandbox"
            f" {median(served['split']):.2f} cores; {rate['split'] / bound:.0%} of the latency bound",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    redis = start_redis()
    try:
        with tempfile.TemporaryDirectory(prefix="wsupload-bench-") as tmp:
            for row in bench(redis, Path(tmp), args.jobs, args.repeats):
                ratio = f"{row.ratio:.2f}×" if row.ratio else "-"
                print(f"{row.name}: {row.value:.1f} {row.unit} vs {row.baseline} {row.baseline_value:.1f} = {ratio}")
                print(f"    runs {[round(r, 1) for r in row.runs]}; {row.note}; target {row.target}: {row.met}")
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
