"""``make bench``: every benchmark, side by side with its baselines, in one run.

Writes ``benchmarks/RESULTS.md`` (medians over repeated runs, ratios against the
baselines, the machine, then ``NOTES.md``: how to read it) and
``benchmarks/results.png``. Everything talks to servers on loopback started by the
benchmarks: a private redis-server, the sandbox in its own process, real ``wsupload
worker`` processes. Quick mode (``--quick``) shrinks sizes and repeats to check the
harness, not to quote.

This module only orchestrates: each benchmark is a module of its own with a
``bench`` function, sharing ``harness.py``. Past designs are not measured again
by default; what they measured is frozen in ``HISTORY.md``. ``--cpu-before
COMMIT`` and ``--leases-before COMMIT`` install a commit beside this checkout
(``versions.py``) and put it in the CPU-per-job and leases rows of the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psutil

from benchmarks import (
    brokers,
    bulk,
    cli_path,
    cli_start,
    enqueue,
    large_file,
    latency,
    leases,
    loop_lag,
    many_files,
    markers,
    overhead,
    processes,
)
from benchmarks.harness import MIB, Row, table
from benchmarks.versions import commit
from wsupload.worker.dev.local_services import start_redis

HERE = Path(__file__).resolve().parent
NOTES = HERE / "NOTES.md"
"""Appended to every RESULTS.md: how each row is measured."""
CONCURRENCY = (32,)
"""Workers' pool sizes (and the direct baseline's threads) for the many-files runs."""


def machine() -> str:
    info = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "?")
    memory = psutil.virtual_memory().total / 1024**3
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, redis-server (private, no persistence), loopback only"
    )


def report(rows: list[Row], seconds: float, quick: bool) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Produced by `make bench` on {datetime.now().strftime('%Y-%m-%d %H:%M')} in {seconds:.0f} s"
        + (" (**quick mode: sizes shrunk, not for quoting**)" if quick else "")
        + ".",
        "",
        f"Machine: {machine()}.",
        "",
        *table(rows),
    ]
    lines += ["", "Individual runs (for the medians above):", ""]
    for row in rows:
        if len(row.runs) > 1:
            lines.append(f"- {row.name}: " + ", ".join(f"{v:.3g}" for v in row.runs))
    return "\n".join(lines) + "\n"


def chart(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [(row.name[:60], row.ratio) for row in rows if row.ratio is not None]
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(ratios) + 1.5))
    ax.barh([n for n, _ in ratios], [r for _, r in ratios], color="#3b7dd8")
    ax.axvline(1.0, color="grey", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("ratio to baseline (result ÷ baseline)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat: checks the harness")
    parser.add_argument(
        "--cpu-before", type=commit, metavar="COMMIT", help="also measure CPU per job of COMMIT, rounds alternating"
    )
    parser.add_argument(
        "--leases-before", type=commit, metavar="COMMIT", help="run COMMIT beside this checkout in the leases rows"
    )
    args = parser.parse_args()
    quick = args.quick
    started = time.perf_counter()
    redis = start_redis()
    steps: list[tuple[str, Callable[[Path], list[Row]]]] = [
        (
            "large file",
            lambda w: large_file.bench(redis, w, (64 if quick else 1024) * MIB, 1 if quick else 5, 1 if quick else 3),
        ),
        (
            "many small files",
            lambda w: many_files.bench(redis, w, 100 if quick else 1000, CONCURRENCY, 1 if quick else 3),
        ),
        ("processes", lambda w: processes.bench(redis, w, 100 if quick else 1000, 1 if quick else 5)),
        ("enqueue", lambda w: enqueue.bench(redis, 1000 if quick else 10_000, 1 if quick else 3)),
        ("CLI start", lambda w: cli_start.bench(redis, w, 100 if quick else 1000, 2 if quick else 10)),
        ("CLI enqueue then wait", lambda w: cli_path.bench(redis, w, 100 if quick else 500, 1 if quick else 3)),
        ("completion latency", lambda w: latency.bench(redis, w)),
        ("asyncio producer's event-loop lag", lambda w: loop_lag.bench(redis, w, 100 if quick else 1000)),
        ("CPU per job", lambda w: overhead.bench(w, 100 if quick else 1000, 1 if quick else 5, args.cpu_before)),
        ("leases", lambda w: leases.bench(w, args.leases_before, quick=quick)),
        ("bulk messages", lambda w: bulk.bench(w, quick)),
        ("Redis broker vs RabbitMQ broker", lambda w: brokers.bench(redis, w, quick)),
        ("marker sweep (RabbitMQ)", lambda w: markers.bench(redis, w, quick)),
    ]
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory(prefix="wsupload-bench-") as tmp:
            for name, step in steps:
                print(f"benchmark: {name} …", flush=True)
                work = Path(tmp) / name.replace(" ", "-")
                work.mkdir()
                for row in step(work):
                    rows.append(row)
                    print(f"  {row.name}: {row.value:.3g} {row.unit}", flush=True)
    finally:
        redis.stop()
    text = report(rows, time.perf_counter() - started, quick)
    (HERE / ("RESULTS.quick.md" if quick else "RESULTS.md")).write_text(text + "\n" + NOTES.read_text())
    chart(rows, HERE / ("results.quick.png" if quick else "results.png"))
    print(text)


if __name__ == "__main__":
    main()
