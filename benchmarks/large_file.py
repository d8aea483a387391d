"""One large file through the queue against ``curl -F``: wall time, the worker's memory, and the sandbox's own cost.

Rows: enqueue → succeeded against curl to the same sandbox (interleaved runs, so
both meet the same machine conditions); the worker's peak RSS growth over idle
against the API page's example's whole peak RSS; the API page's example's wall
time; and curl to the sandbox against curl to ``drain.py`` (a ratio near 1: the
sandbox is not the bottleneck). Part of ``make bench`` (``run.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.baselines import curl
from benchmarks.harness import KEY, MIB, Fleet, Row, baseline, make_media, median, port_open, process, sandbox
from wsupload.worker.dev.local_services import LocalRedis, free_port, wait_until


def vm_hwm(pid: int) -> int:
    """Peak resident memory of a process so far (bytes), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def bench(redis: LocalRedis, work: Path, size: int, repeats: int) -> list[Row]:
    path = make_media(work / "large.mp4", size)
    rows = []
    with sandbox() as url:
        fleet = Fleet(redis, url, work, count=1, concurrency=1)
        try:
            (child,) = fleet.processes()  # the worker's one process: its upload threads are in it
            fleet.run([str(make_media(work / "warm.mp4", MIB))])  # the child's session and imports are warm
            idle_peak = vm_hwm(child.pid)
            # Interleaved, so curl and the queue meet the same machine conditions.
            curl_times, queue_times = [], []
            for _ in range(repeats):
                curl_times.append(curl(url, KEY, str(path)))
                queue_times.append(fleet.run([str(path)]))
            growth = vm_hwm(child.pid) - idle_peak
        finally:
            fleet.stop()
        drain_port = free_port()
        with process([sys.executable, "-m", "benchmarks.drain", str(drain_port)]):
            drain_url = f"http://127.0.0.1:{drain_port}"
            wait_until(lambda: port_open(drain_port), 10, what="the drain server")
            drain_times = [curl(drain_url, KEY, str(path)) for _ in range(repeats)]
        example = baseline("api_example", url, str(path))  # last: its 2 GB would disturb the others
    gib = size / (1024 * MIB)
    label = f"{gib:g} GiB" if gib >= 1 else f"{size // MIB} MiB"
    rows.append(
        Row(
            f"{label} file through the queue, enqueue → succeeded",
            median(queue_times),
            "s",
            "curl -F",
            median(curl_times),
            "≤ 1.25 × curl",
            median(queue_times) <= 1.25 * median(curl_times),
            runs=queue_times,
        )
    )
    rows.append(
        Row(
            f"{label}: worker's peak RSS growth over idle",
            growth / MIB,
            "MiB",
            "the API page's example (peak RSS)",
            example["peak_rss"] / MIB,
            "< 32 MiB",
            growth < 32 * MIB,
        )
    )
    rows.append(
        Row(
            f"{label}: the API page's example, wall time",
            example["seconds"],
            "s",
            "curl -F",
            median(curl_times),
            note="baseline",
        )
    )
    rows.append(
        Row(
            f"{label}: curl to the sandbox vs curl to a drain-only server (sandbox cost)",
            median(curl_times),
            "s",
            "curl to drain",
            median(drain_times),
            note="sandbox check",
            runs=curl_times,
        )
    )
    return rows
