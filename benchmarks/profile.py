"""Where a worker's CPU goes per job on the queue path: py-spy samples, summed by what the code was doing.

Starts a private redis-server, a zero-latency sandbox and one worker (the one
``benchmarks/bulk.py`` starts: this checkout, ``--concurrency`` threads), runs a
warm-up round, then
samples the worker with ``py-spy record --gil --threads`` (only the thread
holding the GIL, so a sample is Python code running, not waiting) during one
round of ``--jobs`` 10 KB files at ``--per-message`` jobs a message. Each
sampled stack goes to the first bucket of ``BUCKETS`` whose markers it holds:
the consumer thread's share per message (fetch, unacked bookkeeping, Celery's
request and hand-over, ack) and the pool thread's (the job's own parts, Celery's
trace around it). Prints each bucket's share and milliseconds per job.

py-spy is not a dependency: ``pip install py-spy`` (it reads the worker's memory
with ptrace, as root or with ``kernel.yama.ptrace_scope=0``). GIL samples leave
out time spent without the GIL (socket system calls, the kernel), so the
milliseconds are below the CPU time ``bulk.py`` measures; the shares are what
to compare. Run: ``python -m benchmarks.profile [--per-message K] [--jobs N]``.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import psutil

from benchmarks.bulk import ROUND_SCRIPT, worker
from benchmarks.harness import ROOT, clean_env, make_media, sandbox
from wsupload.worker.dev.local_services import start_redis, wait_until

RATE = 200
"""py-spy samples per second."""
CONSUMER, POOL = "asynloop", "apply_target"
"""Frames that mark the consumer's event loop thread and a pool thread running a task."""
BUCKETS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("consumer", "unacked bookkeeping + the job's line (QoS.append, one MULTI)", ("QoS._record",)),
    ("consumer", "Celery's strategy, Request, the poison check, hand-over", ("on_task_received",)),
    ("consumer", "ack (MULTI: ZREM, HDEL)", ("QoS.ack",)),
    ("consumer", "BRPOP: reading the answer, decoding", ("on_readable",)),
    ("consumer", "BRPOP: sending it again", ("on_poll_start",)),
    ("consumer", "restore scan", ("restore_visible",)),
    ("consumer", "event loop, other", ()),
    ("job", "HTTP upload (requests, urllib3, http.client)", ("UploadClient.upload",)),
    ("job", "fencing: saves (a Lua call each)", ("ResultStore.save",)),
    ("job", "fencing: claim (a Lua call)", ("ResultStore.claim",)),
    ("job", "open and validate the file", ("SourceOpener.open",)),
    ("job", "the outcome's log line", ("_log_outcome",)),
    ("job", "fleet limiter", ("FleetLimiter",)),
    ("job", "other: retry wrapper (tenacity), documents, telemetry", ("run_delivery",)),
    ("pool", "Celery's trace and the task's shell", ()),
)


def bucket_of(stack: str) -> str:
    """The bucket a sampled stack (frames joined by ';') counts in."""
    role = "consumer" if CONSUMER in stack else "job" if POOL in stack else None
    if role is None:
        for name in ("renewer", "heartbeat", "sweeper"):
            if name in stack:
                return f"{name} thread"
        return "other threads"
    for owner, name, markers in BUCKETS:
        if owner == "pool" and role == "job":
            return f"pool: {name}"
        if owner == role and all(marker in stack for marker in markers):
            return f"{owner}: {name}"
    return f"{role}: other"


def breakdown(raw: str) -> Counter[str]:
    """Samples per bucket from py-spy's ``--format raw`` output (one ``stack count`` line each)."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[bucket_of(stack)] += int(count)
    return counts


def profile(py_spy: str, jobs: int, per_message: int, concurrency: int, work: Path) -> Counter[str]:
    files = [str(make_media(work / f"p{n:05d}.mp4", 10 * 1000)) for n in range(jobs)]
    out = work / "samples.txt"
    redis_server = start_redis()
    try:
        env = clean_env() | {"REDIS_URL": redis_server.url, "PYTHONPATH": str(ROOT)}
        round_args = [sys.executable, str(ROUND_SCRIPT), str(per_message)]
        with sandbox() as url, worker(redis_server.url, url, concurrency, work) as process:
            subprocess.run([*round_args, *files[:200]], env=env, cwd=work, check=True, capture_output=True)
            spy = subprocess.Popen(
                [
                    *(py_spy, "record", "--pid", str(process.pid), "--rate", str(RATE), "--format", "raw"),
                    *("--output", str(out), "--threads", "--gil"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            # Sampling once py-spy spends CPU (it says nothing until the end when not on a terminal).
            wait_until(lambda: spy.poll() is not None or sum(psutil.Process(spy.pid).cpu_times()[:2]) > 0.05, 30)
            if spy.poll() is not None:
                raise SystemExit(f"py-spy could not sample the worker: {spy.communicate()[1].strip()[-300:]}")
            subprocess.run([*round_args, *files], env=env, cwd=work, check=True, capture_output=True)
            spy.send_signal(signal.SIGINT)
            spy.communicate(timeout=60)
    finally:
        redis_server.stop()
    return breakdown(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--per-message", type=int, default=1, help="jobs a message (1: wsupload.upload)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="the py-spy executable (default: on PATH)")
    args = parser.parse_args()
    if not args.py_spy:
        parser.error("py-spy not found on PATH: pip install py-spy, or pass --py-spy PATH")
    with tempfile.TemporaryDirectory(prefix="wsupload-profile-") as tmp:
        counts = profile(args.py_spy, args.jobs, args.per_message, args.concurrency, Path(tmp))
    total = sum(counts.values())
    print(f"{total} samples (GIL held) over {args.jobs} jobs at {args.per_message} a message:")
    for name, count in sorted(counts.items(), key=lambda item: (item[0].split(":")[0], -item[1])):
        print(f"{100 * count / total:5.1f} %  {count / RATE / args.jobs * 1000:5.2f} ms/job  {name}")
    print(f"{'':8}{total / RATE / args.jobs * 1000:5.2f} ms/job  in all")


if __name__ == "__main__":
    main()
