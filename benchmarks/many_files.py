"""Many small files through one worker, then two, against a direct thread pool and the API page's example.

At each concurrency level: jobs/s of one worker against a direct thread pool of
requests sessions (same concurrency, no queue) and against the API page's example
(sequential); at the first level, a second worker running the direct flow
(``WSUPLOAD_UPLOAD_FLOW=direct``: a ticket, then a PUT, so two answers at the
sandbox's latency per job) on queues of its own, its runs taking turns with the
binary worker's; then two worker processes at the first level against one. Each
row's note says how many cores were busy (the cause where a target is missed).
Part of ``make bench`` (``run.py``).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.harness import (
    DIRECT_FLOW,
    Fleet,
    Row,
    baseline,
    busy_cores,
    cpu_note,
    make_media,
    median,
    sandbox,
    tree_cpu,
)
from wsupload.worker.dev.local_services import LocalRedis


def timed(fleet: Fleet, files: list[str]) -> tuple[float, float, float]:
    """One run of ``files`` through ``fleet``: jobs/s, cores busy, and its workers' CPU per job (ms)."""
    pids = [w.process.pid for w in fleet.workers if w.process]
    cpu = sum(tree_cpu(pid) for pid in pids)
    rate, cores = busy_cores(lambda: len(files) / fleet.run(files))
    return rate, cores, (sum(tree_cpu(pid) for pid in pids) - cpu) / len(files) * 1000


def bench(redis: LocalRedis, work: Path, count: int, levels: tuple[int, ...], repeats: int) -> list[Row]:
    """Many small files at each concurrency level; two workers at the first level."""
    folder = work / "small"
    folder.mkdir(exist_ok=True)
    files = [str(make_media(folder / f"f{n:04d}.mp4", 200 * 1000)) for n in range(count)]
    rows = []
    with sandbox(latency=0.05) as url:
        sequential = baseline("api_example", url, *files[: max(20, count // 10)])
        example_rate = max(20, count // 10) / sequential["seconds"]
        first_rate = 0.0
        for concurrency in levels:
            direct = [count / baseline("direct", url, str(concurrency), *files)["seconds"] for _ in range(repeats)]
            first = not first_rate
            one = Fleet(redis, url, work, count=1, concurrency=concurrency)
            # At the first level the direct flow's worker takes turns with this one (same run, same conditions).
            other = (
                Fleet(redis, url, work, count=1, concurrency=concurrency, env=DIRECT_FLOW, name="direct")
                if first
                else None
            )
            try:
                runs, direct_runs = [], []
                for _ in range(repeats):
                    runs.append(timed(one, files))
                    if other is not None:
                        direct_runs.append(timed(other, files))
            finally:
                one.stop()
                if other is not None:
                    other.stop()
            rate, cores = median([r for r, _, _ in runs]), median([c for _, c, _ in runs])
            first_rate = first_rate or rate
            rows += [
                Row(
                    f"{count} × 200 KB, 50 ms latency, one worker (concurrency {concurrency})",
                    rate,
                    "jobs/s",
                    f"direct thread pool ({concurrency} sessions)",
                    median(direct),
                    "≥ 0.8 × direct",
                    rate >= 0.8 * median(direct),
                    runs=[r for r, _, _ in runs],
                    note=cpu_note(cores),
                ),
                Row(
                    f"same (concurrency {concurrency}), against the API page's example (sequential)",
                    rate,
                    "jobs/s",
                    "API page's example",
                    example_rate,
                    "≥ 15 × example",
                    rate >= 15 * example_rate,
                    note=cpu_note(cores),
                ),
            ]
            if direct_runs:
                direct_rate, direct_cores = (
                    median([r for r, _, _ in direct_runs]),
                    median([c for _, c, _ in direct_runs]),
                )
                cpu = median([m for _, _, m in direct_runs]), median([m for _, _, m in runs])
                rows.append(
                    Row(
                        f"{count} × 200 KB, 50 ms latency, one worker (concurrency {concurrency}):"
                        " direct flow (ticket + PUT) vs binary flow",
                        direct_rate,
                        "jobs/s",
                        "binary flow, one worker (same concurrency)",
                        rate,
                        note=f"{cpu_note(direct_cores)}; two requests per job, each answered after 50 ms;"
                        f" worker CPU per job {cpu[0]:.2f} ms direct, {cpu[1]:.2f} ms binary",
                        runs=[r for r, _, _ in direct_runs],
                    )
                )
        two = Fleet(redis, url, work, count=2, concurrency=levels[0])
        try:
            runs = [timed(two, files) for _ in range(repeats)]
        finally:
            two.stop()
    rate, cores = median([r for r, _, _ in runs]), median([c for _, c, _ in runs])
    rows.append(
        Row(
            f"same, two worker processes (2 × {levels[0]})",
            rate,
            "jobs/s",
            "one worker",
            first_rate,
            "≥ 1.7 × one worker",
            rate >= 1.7 * first_rate,
            runs=[r for r, _, _ in runs],
            note=cpu_note(cores),
        )
    )
    return rows
