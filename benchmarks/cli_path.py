"""The interactive path as a user types it: ``wsupload enqueue`` of many files, then ``wsupload wait``.

500 × 200 KB files, 50 ms sandbox latency, one ``wsupload worker`` at concurrency 32 with
its default ``--processes auto`` (a process per core, the threads split over them; issue 23):
the wall time from starting ``wsupload enqueue FILE...`` (one message per job, no
``--bulk``) to ``wsupload wait --timeout 120 JOB_ID...`` exiting 0, both real
processes (``python -m wsupload.worker.cli``, the fleet's producer environment,
bytecode cached after one warm-up run), so process start and the CLI's own work are
in the figure. Baseline: the direct pool of
32 requests sessions on the same files against the same sandbox, rounds
interleaved. The note gives the cores busy during the CLI path. Part of ``make
bench`` (``run.py``); ``python -m benchmarks.cli_path`` runs it alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Fleet, Row, baseline, busy_cores, cpu_note, make_media, median, sandbox
from wsupload.worker.dev.local_services import LocalRedis, start_redis

CONCURRENCY = 32
WAIT_TIMEOUT = 120


def cli(fleet: Fleet, pycache: Path) -> tuple[list[str], dict[str, str]]:
    """The command and the producer's environment (the fleet's, without the API key, as its producer has).

    Bytecode is cached under ``pycache`` (as an installed wheel's is; ``cli_start.py`` does the same):
    the development shell's ``PYTHONDONTWRITEBYTECODE=1`` would compile wsupload at every start."""
    env = {k: v for k, v in fleet.env.items() if k not in ("WAVESPEED_API_KEY", "PYTHONDONTWRITEBYTECODE")}
    return [sys.executable, "-m", "wsupload.worker.cli"], env | {"PYTHONPYCACHEPREFIX": str(pycache)}


def run(fleet: Fleet, files: list[str], pycache: Path) -> float:
    """Seconds from starting ``wsupload enqueue`` to ``wsupload wait`` exiting 0; checks every job's result."""
    command, env = cli(fleet, pycache)
    start = time.perf_counter()
    enqueued = subprocess.run(
        [*command, "enqueue", "--json", *files], env=env, capture_output=True, text=True, check=True
    ).stdout
    job_ids = [str(job["job_id"]) for job in json.loads(enqueued)]
    waited = subprocess.run(
        [*command, "wait", "--json", "--timeout", str(WAIT_TIMEOUT), *job_ids], env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    assert waited.returncode == 0, (waited.returncode, waited.stderr[-500:])
    docs = json.loads(waited.stdout)
    assert len(job_ids) == len(files) == len(docs), (len(job_ids), len(files), len(docs))
    assert all(d and d["status"] == "succeeded" for d in docs), [
        d for d in docs if not d or d["status"] != "succeeded"
    ][:3]
    methods = {d["result"].get("method") for d in docs}
    assert methods == {fleet.method}, f"uploaded by {methods}, not {fleet.method}"
    return elapsed


def bench(redis: LocalRedis, work: Path, files: int = 500, rounds: int = 3) -> list[Row]:
    folder = work / "cli-path"
    folder.mkdir(exist_ok=True)
    paths = [str(make_media(folder / f"c{n:04d}.mp4", 200 * 1000)) for n in range(files)]
    runs, cores, direct = [], [], []
    with sandbox(latency=0.05) as url:
        # The worker as a user starts it: the default --processes auto (the harness pins 1 elsewhere).
        env = {"WSUPLOAD_PROCESSES": "auto"}
        fleet = Fleet(redis, url, work, count=1, concurrency=CONCURRENCY, env=env, name="cli-path")
        try:
            # Warm-up: bytecode, page cache, the worker's sessions.
            run(fleet, paths[: min(20, files)], work / "pycache")
            for _ in range(rounds):
                rate, busy = busy_cores(lambda: files / run(fleet, paths, work / "pycache"))
                runs.append(rate)
                cores.append(busy)
                direct.append(files / baseline("direct", url, str(CONCURRENCY), *paths)["seconds"])
        finally:
            fleet.stop()
    rate, base = median(runs), median(direct)
    return [
        Row(
            f"`wsupload enqueue` of {files} × 200 KB (one message per job), then `wsupload wait`;"
            f" 50 ms latency, one worker (--processes auto, concurrency {CONCURRENCY}), CLI included",
            rate,
            "jobs/s",
            f"direct thread pool ({CONCURRENCY} sessions)",
            base,
            "≥ 0.6 × direct",
            rate >= 0.6 * base,
            note=cpu_note(median(cores)),
            runs=runs,
        )
    ]


def main() -> None:
    redis = start_redis()
    try:
        with tempfile.TemporaryDirectory(prefix="wsupload-bench-cli-path-") as tmp:
            for row in bench(redis, Path(tmp)):
                ratio = f"{row.ratio:.2f}×" if row.ratio is not None else "?"
                print(f"{row.name}: {row.value:.3g} {row.unit} (direct {row.baseline_value:.3g}, {ratio}) {row.note}")
                print("  runs: " + ", ".join(f"{v:.3g}" for v in row.runs))
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
