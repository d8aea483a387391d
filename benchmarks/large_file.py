"""One large file through the queue against curl, by both upload flows: wall time, worker memory, the sandbox's cost.

Binary flow (medians): enqueue → succeeded against ``curl -F`` to the same sandbox
(interleaved runs, so both meet the same machine conditions); the worker's peak RSS
growth over idle against the API page's example's whole peak RSS; the API page's
example's wall time; and curl to the sandbox against curl to ``drain.py`` (a ratio
near 1: the sandbox is not the bottleneck). Direct flow (best of 3, as issue 21
states its bound): a worker running ``WSUPLOAD_UPLOAD_FLOW=direct``, enqueue →
succeeded, against one ticket request plus ``curl -T`` to the ticket's signed URL
(interleaved the same way), and that worker's peak RSS growth over idle. Part of
``make bench`` (``run.py``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.baselines import curl, curl_put
from benchmarks.harness import (
    DIRECT_FLOW,
    KEY,
    MIB,
    Fleet,
    Row,
    baseline,
    make_media,
    median,
    port_open,
    process,
    sandbox,
)
from wsupload.worker.dev.local_services import LocalRedis, free_port, wait_until


def vm_hwm(pid: int) -> int:
    """Peak resident memory of a process so far (bytes), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def interleaved(
    fleet: Fleet, path: Path, warm: Path, repeats: int, other: Callable[[], float]
) -> tuple[list[float], list[float], int]:
    """``repeats`` runs of ``other`` (a baseline) and of the fleet, in turns; the worker's RSS growth over idle.

    Interleaved, so the baseline and the queue meet the same machine conditions.
    """
    (child,) = fleet.processes()  # the worker's one process: its upload threads are in it
    fleet.run([str(warm)])  # the child's sessions and imports are warm
    idle_peak = vm_hwm(child.pid)
    base_times, queue_times = [], []
    for _ in range(repeats):
        base_times.append(other())
        queue_times.append(fleet.run([str(path)]))
    return base_times, queue_times, vm_hwm(child.pid) - idle_peak


def bench(redis: LocalRedis, work: Path, size: int, repeats: int, best_of: int = 3) -> list[Row]:
    """The binary rows (medians of ``repeats`` runs), then the direct flow's (best of ``best_of``)."""
    path = make_media(work / "large.mp4", size)
    warm = make_media(work / "warm.mp4", MIB)
    rows = []
    with sandbox() as url:
        fleet = Fleet(redis, url, work, count=1, concurrency=1)
        try:
            curl_times, queue_times, growth = interleaved(fleet, path, warm, repeats, lambda: curl(url, KEY, str(path)))
        finally:
            fleet.stop()
        fleet = Fleet(redis, url, work, count=1, concurrency=1, env=DIRECT_FLOW, name="direct")
        try:
            put_times, direct_times, direct_growth = interleaved(
                fleet, path, warm, best_of, lambda: curl_put(url, KEY, str(path))
            )
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
            f"{label} file through the queue, enqueue → succeeded (median)",
            median(queue_times),
            "s",
            "curl -F",
            median(curl_times),
            "≤ 1.05 × curl (issue 23)",
            median(queue_times) <= 1.05 * median(curl_times),
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
    rows.append(
        Row(
            f"{label} file, direct flow (ticket + PUT) through the queue, enqueue → succeeded (best of {best_of})",
            min(direct_times),
            "s",
            f"ticket + curl -T to the signed URL (best of {best_of})",
            min(put_times),
            "≤ 1.05 × curl -T",
            min(direct_times) <= 1.05 * min(put_times),
            runs=direct_times,
        )
    )
    rows.append(
        Row(
            f"{label}, direct flow: worker's peak RSS growth over idle",
            direct_growth / MIB,
            "MiB",
            "the binary flow's worker (above)",
            growth / MIB,
            "< 32 MiB",
            direct_growth < 32 * MIB,
        )
    )
    rows.append(
        Row(
            f"{label}: ticket + curl -T to the signed URL vs curl -F to the binary endpoint (best of each)",
            min(put_times),
            "s",
            "curl -F",
            min(curl_times),
            note="the two flows' ceilings",
            runs=put_times,
        )
    )
    rows.append(
        Row(
            f"{label} through the queue: direct flow vs binary flow (best of each)",
            min(direct_times),
            "s",
            "binary flow",
            min(queue_times),
            note="same sandbox, one worker each, one after the other",
        )
    )
    return rows
