"""How fast the ``wsupload`` command answers, process start included, beside ``python -c pass``.

Three commands as a user types them in a folder of small files, each in a fresh
process of the installed console script: ``wsupload --help``, ``wsupload status`` of
one job, and ``wsupload enqueue`` of every file of the folder (one message per job),
onto a queue nobody consumes on the run's private Redis. Bytecode is cached as an
installed wheel's would be (``PYTHONPYCACHEPREFIX``, one warm-up run of each), and the
commands take turns, round after round, so a burst of load on the machine falls on
all of them. A row is the median wall time; its note gives the median CPU time (user +
system) of the command's process, which other processes on a shared machine disturb
less, and the load average. Part of ``make bench`` (``run.py``); ``python -m
benchmarks.cli_start`` runs it alone.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import Row, clean_env, median
from wsupload.worker.dev.local_services import LocalRedis, start_redis

FILES = 1000
REPEATS = 10
QUEUE = "bench-cli-nobody-listens"
TARGETS = {"help": 0.15, "status": 0.3, "enqueue": 0.4}
"""Seconds, wall, process start included (issue 23)."""


@dataclass
class Timing:
    wall: list[float]
    cpu: list[float]


def command() -> list[str]:
    """The console script installed beside this interpreter (what a user runs), else ``python -m``."""
    script = Path(sys.executable).parent / "wsupload"
    return [str(script)] if script.exists() else [sys.executable, "-m", "wsupload.worker.cli"]


def timed(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """One run: wall seconds, CPU seconds (user + system) of the child, its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, done.stdout


def bench(redis: LocalRedis, work: Path, files: int = FILES, repeats: int = REPEATS) -> list[Row]:
    media = work / "media"
    media.mkdir()
    names = [f"cli{n:04d}.png" for n in range(files)]
    for name in names:
        (media / name).write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
    env = clean_env() | {
        "REDIS_URL": redis.url,
        "WSUPLOAD_QUEUE": QUEUE,
        "WSUPLOAD_ALLOWED_ROOTS": str(media),
        "PYTHONPYCACHEPREFIX": str(work / "pycache"),
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    wsupload = command()
    job_id = timed([*wsupload, "enqueue", names[0]], env, media)[2].split()[0]
    runs = {
        "pass": [sys.executable, "-c", "pass"],
        "help": [*wsupload, "--help"],
        "status": [*wsupload, "status", job_id],
        "enqueue": [*wsupload, "enqueue", *names],
    }
    for args in runs.values():  # warm-up: bytecode written, files in the page cache
        timed(args, env, media)
    timings = {name: Timing([], []) for name in runs}
    loads = []
    for _ in range(repeats):
        for name, args in runs.items():
            wall, cpu, out = timed(args, env, media)
            if name == "enqueue":
                assert out.count("\n") == files, out[-300:]
            timings[name].wall.append(wall)
            timings[name].cpu.append(cpu)
        loads.append(os.getloadavg()[0])
    base = timings["pass"]
    load = f"load average (1 min) {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} cores"
    titles = {
        "help": "`wsupload --help`",
        "status": "`wsupload status` of one job",
        "enqueue": f"`wsupload enqueue` of {files:,} files (one message per job)",
    }
    rows = []
    for name, title in titles.items():
        timing = timings[name]
        value, target = median(timing.wall), TARGETS[name]
        note = (
            f"CPU (user+sys) median {median(timing.cpu):.3f} s vs {median(base.cpu):.3f} s;"
            f" fastest {min(timing.wall):.3f} s; {load}"
        )
        rows.append(
            Row(
                title,
                value,
                "s",
                "`python -c pass`",
                median(base.wall),
                f"≤ {target:g} s",
                value <= target,
                note,
                runs=timing.wall,
            )
        )
    return rows


def main() -> None:
    redis = start_redis()
    try:
        with tempfile.TemporaryDirectory(prefix="wsupload-bench-cli-") as tmp:
            for row in bench(redis, Path(tmp)):
                print(f"{row.name}: {row.value:.3f} s (python -c pass {row.baseline_value:.3f} s) {row.note}")
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
