"""Many small files through one worker, then two, against a direct thread pool and the API page's example.

At each concurrency level: jobs/s of one worker against a direct thread pool of
requests sessions (same concurrency, no queue) and against the API page's example
(sequential); then two worker processes at the first level against one. Each
row's note says how many cores were busy (the cause where a target is missed).
Part of ``make bench`` (``run.py``).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.harness import Fleet, Row, baseline, busy_cores, cpu_note, make_media, median, sandbox
from wsupload.worker.dev.local_services import LocalRedis


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
            one = Fleet(redis, url, work, count=1, concurrency=concurrency)
            try:
                runs = [busy_cores(lambda f=one: count / f.run(files)) for _ in range(repeats)]  # type: ignore[misc]
            finally:
                one.stop()
            rate, cores = median([r for r, _ in runs]), median([c for _, c in runs])
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
                    runs=[r for r, _ in runs],
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
        two = Fleet(redis, url, work, count=2, concurrency=levels[0])
        try:
            runs = [busy_cores(lambda: count / two.run(files)) for _ in range(repeats)]
        finally:
            two.stop()
    rate, cores = median([r for r, _ in runs]), median([c for _, c in runs])
    rows.append(
        Row(
            f"same, two worker processes (2 × {levels[0]})",
            rate,
            "jobs/s",
            "one worker",
            first_rate,
            "≥ 1.7 × one worker",
            rate >= 1.7 * first_rate,
            runs=[r for r, _ in runs],
            note=cpu_note(cores),
        )
    )
    return rows
