"""The job's own cost per job (``JobRunner.run``, no queue, no Celery), versions side by side.

``overhead.py`` measures the whole queue path, where a change of a few per cent in the
job's part drowns in the machine's drift (rounds spread ±15 %). This one isolates the
part the job code owns: each version (a git commit installed by ``versions.install``,
or this checkout as ``now``) runs ``job_round.py`` in its own interpreter against one
private redis-server and one zero-latency sandbox.

- CPU: rounds alternate between the versions (order reversed every other round);
  prints each version's median ms/job and the median of its per-round ratios to the first.
- ``--valgrind``: user-space instructions per job under callgrind, from two runs of each
  version (``--jobs`` timed jobs and none): deterministic to a fraction of a per cent, so a
  small cut shows; it leaves out the kernel's share (system calls, loopback networking).

Run: ``python -m benchmarks.job_cpu REF [REF...] [--valgrind]`` (``now`` is added last).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.harness import KEY, clean_env, make_media, sandbox
from benchmarks.versions import commit, install
from wsupload.worker.dev.local_services import start_redis

ROUND = Path(__file__).resolve().parent / "job_round.py"
WARM = 100


def cpu_rounds(versions: dict[str, str], files: list[str], env: dict[str, str], work: Path, rounds: int) -> None:
    samples: dict[str, list[float]] = {label: [] for label in versions}
    for n in range(rounds):
        order = list(versions.items())
        for label, python in order[::-1] if n % 2 else order:
            out = subprocess.run(
                [python, str(ROUND), str(WARM), *files], env=env, cwd=work, check=True, capture_output=True, text=True
            )
            samples[label].append(json.loads(out.stdout)["ms"])
    first = samples[next(iter(versions))]
    for label, runs in samples.items():
        ratio = statistics.median(a / b for a, b in zip(runs, first, strict=True))
        print(f"{label}: median {statistics.median(runs):.3f} ms/job CPU, per-round ratio to the first {ratio:.3f}")


def instructions(versions: dict[str, str], files: list[str], env: dict[str, str], work: Path) -> None:
    def count(label: str, python: str, jobs: int) -> int:
        out = work / f"callgrind-{label}-{jobs}"
        args = [python, str(ROUND), str(WARM), *files[: WARM + jobs]]
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *args],
            env=env,
            cwd=work,
            check=True,
            capture_output=True,
        )
        totals = [line for line in out.read_text().splitlines() if line.startswith(("summary:", "totals:"))]
        return int(totals[0].split()[1])

    jobs = len(files) - WARM
    runs = [(label, python, n) for label, python in versions.items() for n in (0, jobs)]
    with ThreadPoolExecutor(2) as pool:
        counted = list(pool.map(lambda run: count(*run), runs))
    by = dict(zip([(label, n) for label, _, n in runs], counted, strict=True))
    first = None
    for label in versions:
        per_job = (by[label, jobs] - by[label, 0]) / jobs / 1e6
        first = first or per_job
        print(f"{label}: {per_job:.3f} M instructions/job (user space), {per_job / first:.3f} of the first")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("refs", nargs="+", type=commit, help="git commits to compare (this checkout is added as 'now')")
    parser.add_argument("--jobs", type=int, default=1000, help="timed jobs a round (default 1000; 300 with --valgrind)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--valgrind", action="store_true", help="count instructions instead of timing CPU")
    args = parser.parse_args()
    jobs = args.jobs if args.jobs != 1000 or not args.valgrind else 300
    with tempfile.TemporaryDirectory(prefix="wsupload-job-cpu-") as tmp:
        work = Path(tmp)
        versions = {ref: install(ref, work / ref) for ref in args.refs} | {"now": sys.executable}
        files = [str(make_media(work / f"j{n:05d}.mp4", 10 * 1000)) for n in range(WARM + jobs)]
        redis_server = start_redis()
        try:
            with sandbox() as url:
                env = clean_env() | {"REDIS_URL": redis_server.url, "WAVESPEED_BASE_URL": url, "WAVESPEED_API_KEY": KEY}
                if args.valgrind:
                    instructions(versions, files, env, work)
                else:
                    cpu_rounds(versions, files, env, work, args.rounds)
        finally:
            redis_server.stop()


if __name__ == "__main__":
    main()
