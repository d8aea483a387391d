"""Leases against the visibility timeout: recovery, memory and throughput, two versions side by side (issue 11).

"Now" is this checkout, whatever it holds when run (uncommitted files too);
"before" is a git commit. Both are installed the same way, each into a venv of
its own with its own pinned dependencies (``overhead.install``), not run from
this checkout's .venv, whose dev extras change what a worker imports. Every run of a version
gets its own redis-server and real workers started from that version's console
script and configured by environment variables only (``WSUPLOAD_CONCURRENCY``,
``WSUPLOAD_VISIBILITY_TIMEOUT``), so any version understands them; jobs are
enqueued and awaited by that version's own producer (``wsupload enqueue`` /
``wsupload wait``, ``producer_round.py``). The sandbox is this checkout's.

Rows, each selectable with ``--only``:

- ``kill``: two workers running (concurrency 2); the one whose upload is in
  flight (the sandbox holds its answer for ``STALL`` s; found by its TCP
  connection to the sandbox) has its whole process group SIGKILLed; seconds from
  the kill to the job's ``finished_at`` with status succeeded. Each version at its
  default settings, and "before" also at its shortest visibility timeout (20 s).
  A wait that reaches ``--cap`` reports "> cap".
- ``grace``: the same, but the holder's main process gets SIGTERM (as docker
  stop sends it) and its group SIGKILL ``GRACE`` s later; seconds from the SIGKILL.
- ``rss``: memory of one worker's whole process tree at concurrency 32 ("now" in
  its default pool; "before" as prefork, and with ``celery -A wsupload.worker.app
  worker --pool threads``): after a warm-up and while idle, and the peak sampled
  every 0.2 s during one round of ``--jobs`` uploads (untimed: sampling costs the
  worker CPU, so the ``throughput`` rounds go unwatched). RSS summed over the tree (what
  the issue's figures count; it counts pages prefork children share once per
  child), USS summed (pages private to each process) in the note.
- ``throughput``: ``--jobs`` × 200 KB, 50 ms sandbox latency, concurrency 32:
  jobs/s from the first enqueue to the last success, against a direct thread pool
  of 32 requests sessions (``baselines.py direct``), rounds alternating in one run,
  each version taking each place in turn. Prefork 32 on 2 cores is erratic: the
  same code has measured from 110 to 300 jobs/s between rounds of one run; quote
  medians of full runs, and ratios taken in one run.

The failover scenarios run side by side (each has its own Redis and sandbox:
faults are first come, first served), the pool runs afterwards on a quiet machine.

Run alone: ``python -m benchmarks.leases --before REF [--quick] [--only kill,grace,rss,throughput]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import psutil
from celery import Celery

from benchmarks import overhead
from benchmarks.run import KEY, Row, baseline, busy_cores, cpu_note, make_media, sandbox, table
from wsupload.worker.dev.local_services import LocalRedis, start_redis, wait_until

ROWS = ("kill", "grace", "rss", "throughput")
PREVIOUS_DESIGN = "576b295"
"""The last commit of the visibility-timeout design (prefork, VT 1 h): what ``run.py`` compares with."""
STALL = 30.0
"""Seconds the sandbox holds the first upload's answer: below every version's read timeout, above any kill delay."""
GRACE = 3.0
"""Seconds between SIGTERM and SIGKILL in the ``grace`` rows (docker's default is 10)."""
FAILOVER_CONCURRENCY = 2
POOL_CONCURRENCY = 32
SIZE = 200 * 1000
MB = 1e6
TARGET_SECONDS = 10.0
TARGET_RSS_MB = 250.0
TARGET_RATIO = 0.8


class AtLeast(float):
    """A figure known only from below: a wait that reached its cap prints as "> 60"."""

    def __format__(self, spec: str) -> str:
        return "> " + float.__format__(self, spec)

    def __truediv__(self, other: object) -> float:
        if isinstance(other, AtLeast):
            return float("nan")
        return AtLeast(float(self) / other) if isinstance(other, int | float) else NotImplemented

    def __rtruediv__(self, other: object) -> float:
        return AtMost(other / float(self)) if isinstance(other, int | float) else NotImplemented


class AtMost(float):
    def __format__(self, spec: str) -> str:
        return "< " + float.__format__(self, spec)


@dataclass
class BoundRow(Row):
    """A row whose figures may be bounds: no ratio between two bounds."""

    @property
    def ratio(self) -> float | None:
        if isinstance(self.value, AtLeast) and isinstance(self.baseline_value, AtLeast):
            return None
        return super().ratio


@dataclass(frozen=True)
class Setup:
    """One version in one configuration: its interpreter, extra environment, and how its worker starts."""

    label: str
    python: str
    env: Mapping[str, str] = field(default_factory=dict)
    celery_pool: str | None = None
    """Start ``celery -A wsupload.worker.app worker --pool POOL`` instead of ``wsupload worker``."""

    def script(self, name: str) -> str:
        return str(Path(self.python).parent / name)

    def worker_args(self, name: str) -> list[str]:
        if self.celery_pool is None:
            return [self.script("wsupload"), "worker"]
        return [
            *(self.script("celery"), "-A", "wsupload.worker.app", "worker", f"--pool={self.celery_pool}"),
            *(f"--hostname={name}@%h", "--loglevel=info", "--without-gossip", "--without-mingle"),
        ]


@dataclass
class Worker:
    """One worker's process group."""

    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def tree(self) -> list[psutil.Process]:
        try:
            parent = psutil.Process(self.process.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def memory(self) -> tuple[float, float]:
        """(RSS, USS) summed over the tree, in bytes."""
        rss = uss = 0.0
        for proc in self.tree():
            try:
                info = proc.memory_full_info()
            except psutil.NoSuchProcess:
                continue
            rss, uss = rss + info.rss, uss + info.uss
        return rss, uss

    def talks_to(self, port: int) -> bool:
        """Whether a process of this worker has a TCP connection to ``port``: an upload in flight there."""
        for proc in self.tree():
            try:
                if any(c.raddr and c.raddr.port == port for c in proc.net_connections(kind="tcp")):
                    return True
            except psutil.NoSuchProcess:
                continue
        return False

    def kill(self) -> None:
        with suppress(ProcessLookupError):  # the whole group may have exited by itself already
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Stage:
    """A version's private Redis and workers against one sandbox."""

    setup: Setup
    redis: LocalRedis
    sandbox_url: str
    work: Path
    workers: list[Worker] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        return overhead.clean_env() | {"REDIS_URL": self.redis.url} | dict(extra)

    def start_worker(self, concurrency: int) -> Worker:
        name = f"{self.work.name}-{len(self.workers)}"
        log_path = self.work / f"worker-{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115
        env = self.env(WAVESPEED_BASE_URL=self.sandbox_url, WAVESPEED_API_KEY=KEY)
        env |= {**self.setup.env, "WSUPLOAD_CONCURRENCY": str(concurrency)}
        # cwd outside the checkout: each interpreter imports only its own installed copy.
        process = subprocess.Popen(
            self.setup.worker_args(name),
            env=env,
            cwd=self.work,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(Worker(process, log_path, log))
        return self.workers[-1]

    def wait_ready(self, timeout: float = 120) -> None:
        """Until every worker answers a ping; fails early, with its log, if one exits."""
        app = Celery(broker=self.redis.url)

        def ready() -> bool:
            for worker in self.workers:
                if worker.process.poll() is not None:
                    raise RuntimeError(f"{self.setup.label}: a worker exited:\n{worker.log_tail()}")
            return len(app.control.ping(timeout=0.5) or []) >= len(self.workers)

        try:
            wait_until(ready, timeout, interval=0.2, what=f"{self.setup.label}'s workers to answer a ping")
        finally:
            app.close()

    def cli(self, *args: str, timeout: float = 60) -> Any:
        """The version's own ``wsupload`` command with ``--json``; its parsed output, whatever its exit code."""
        command = [self.setup.script("wsupload"), args[0], "--json", *args[1:]]
        done = subprocess.run(command, env=self.env(), cwd=self.work, capture_output=True, text=True, timeout=timeout)
        if not done.stdout.strip():
            raise RuntimeError(f"{' '.join(command[:3])} failed ({done.returncode}): {done.stderr[-2000:]}")
        return json.loads(done.stdout)

    def round(self, files: list[str]) -> float:
        """Seconds from the first enqueue to the last success, by the version's own producer."""
        done = subprocess.run(
            [self.setup.python, str(overhead.ROUND_SCRIPT), *files],
            env=self.env(),
            cwd=self.work,
            check=True,
            capture_output=True,
            text=True,
        )
        return float(json.loads(done.stdout)["seconds"])


@contextmanager
def stage(setup: Setup, sandbox_url: str, work: Path) -> Iterator[Stage]:
    work.mkdir(parents=True)
    on = Stage(setup, start_redis(), sandbox_url, work)
    try:
        yield on
    finally:
        for worker in on.workers:
            worker.stop()
        on.redis.stop()


# -- kill and grace ----------------------------------------------------------


def add_fault(sandbox_url: str, fault: dict[str, Any]) -> None:
    request = urllib.request.Request(
        sandbox_url + "/_sandbox/faults", data=json.dumps(fault).encode(), headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(request, timeout=10).close()


def failover(setup: Setup, work: Path, cap: float, grace: float | None) -> float:
    """Seconds from the SIGKILL of the worker running the job to its success elsewhere (``AtLeast(cap)``: not yet)."""
    with sandbox() as url, stage(setup, url, work) as on:
        for _ in range(2):
            on.start_worker(FAILOVER_CONCURRENCY)
        on.wait_ready()
        add_fault(url, {"stall": STALL, "times": 1})
        path = make_media(work / "slow.mp4", SIZE)
        (job,) = on.cli("enqueue", str(path))
        port = int(url.rsplit(":", 1)[1])
        holder = wait_until(
            lambda: [w for w in on.workers if w.talks_to(port)], 30, interval=0.1, what="the upload to start"
        )
        if len(holder) != 1:
            raise RuntimeError(f"{setup.label}: {len(holder)} workers talk to the sandbox; expected the one uploading")
        if grace is not None:
            os.kill(holder[0].process.pid, signal.SIGTERM)  # the main process only, as docker stop does
            time.sleep(grace)
        killed = time.time()
        holder[0].kill()
        (doc,) = on.cli("wait", "--timeout", str(cap), job["job_id"], timeout=cap + 60)
    if doc is None or doc["status"] not in ("succeeded", "failed"):
        return AtLeast(cap)
    if doc["status"] != "succeeded":
        raise RuntimeError(f"{setup.label}: the job ended {doc['status']}: {doc.get('error')}")
    return datetime.fromisoformat(doc["finished_at"]).timestamp() - killed


def failover_rows(now: Setup, before: Setup, work: Path, cap: float, only: set[str]) -> list[Row]:
    vt20 = Setup(
        f"{before.label}, WSUPLOAD_VISIBILITY_TIMEOUT=20", before.python, {"WSUPLOAD_VISIBILITY_TIMEOUT": "20"}
    )
    cases = {
        (kind, setup.label): (setup, None if kind == "kill" else GRACE)
        for kind in ("kill", "grace")
        if kind in only
        for setup in (now, before, vt20)
    }
    # Side by side: each case mostly waits (a stall, a timeout), and all meet the same machine conditions.
    with ThreadPoolExecutor(len(cases)) as pool:
        futures = {
            key: pool.submit(failover, setup, work / f"{key[0]}-{n}", cap, grace)
            for n, (key, (setup, grace)) in enumerate(cases.items())
        }
        seconds = {key: future.result() for key, future in futures.items()}
    names = {
        "kill": "whole worker SIGKILLed mid-upload, a second worker running → job succeeded (s after the kill)",
        "grace": f"SIGTERM mid-upload, SIGKILL {GRACE:g} s later (stop grace ended), a second worker running"
        " → job succeeded (s after the SIGKILL)",
    }
    short = {"kill": "SIGKILL", "grace": f"SIGTERM + SIGKILL after {GRACE:g} s"}
    rows: list[Row] = []
    for kind in ("kill", "grace"):
        if kind not in only:
            continue
        value = seconds[kind, now.label]
        for other, how in ((before, "its default VT 3600 s"), (vt20, "its shortest VT, 20 s")):
            rows.append(
                BoundRow(
                    f"{names[kind]}, default settings"
                    if other is before
                    else f"same {short[kind]}, against before at VT 20 s",
                    value,
                    "s",
                    f"{before.label}, {how}",
                    seconds[kind, other.label],
                    f"≤ {TARGET_SECONDS:g} s",
                    not isinstance(value, AtLeast) and value <= TARGET_SECONDS,
                    note=f"concurrency {FAILOVER_CONCURRENCY}; waits capped at {cap:g} s",
                )
            )
    return rows


# -- memory and throughput ---------------------------------------------------


class MemoryPeak:
    """Samples a worker's tree every ``interval`` s in a thread; keeps the highest RSS and USS sums."""

    def __init__(self, worker: Worker, interval: float = 0.2) -> None:
        self.worker, self.interval = worker, interval
        self.rss = self.uss = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss, uss = self.worker.memory()
            self.rss, self.uss = max(self.rss, rss), max(self.uss, uss)

    def __enter__(self) -> MemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class PoolRun:
    setup: Setup
    stage: Stage
    idle: tuple[float, float] = (0.0, 0.0)
    peak: tuple[float, float] = (0.0, 0.0)
    processes: int = 0
    rates: list[float] = field(default_factory=list)
    cores: list[float] = field(default_factory=list)


def pool_runs(
    setups: list[Setup], work: Path, count: int, rounds: int, *, memory: bool
) -> tuple[list[PoolRun], list[float]]:
    """Each setup's worker at concurrency 32 against one 50 ms sandbox.

    ``rounds`` timed rounds alternate with the direct pool, each setup taking
    each place in turn; with ``memory``, one more round each, untimed, is sampled
    for the peak (reading every process's smaps_rollup five times a second costs
    the worker CPU, so the timed rounds go unwatched).
    """
    folder = work / "files"
    folder.mkdir(parents=True)
    files = [str(make_media(folder / f"f{n:04d}.mp4", SIZE)) for n in range(count)]
    direct: list[float] = []
    with sandbox(latency=0.05) as url, ExitStack() as stack:
        runs = [PoolRun(s, stack.enter_context(stage(s, url, work / f"pool-{n}"))) for n, s in enumerate(setups)]
        for run in runs:
            run.stage.start_worker(POOL_CONCURRENCY)
        for run in runs:
            run.stage.wait_ready()
            run.stage.round(files[: 2 * POOL_CONCURRENCY])  # warm: every slot's imports and connections
        time.sleep(2)
        for run in runs:
            run.idle = run.stage.workers[0].memory()
            run.processes = len(run.stage.workers[0].tree())
        for n in range(rounds):
            direct.append(count / baseline("direct", url, str(POOL_CONCURRENCY), *files)["seconds"])
            for run in runs[n % len(runs) :] + runs[: n % len(runs)]:
                rate, cores = busy_cores(lambda r=run: count / r.stage.round(files))  # type: ignore[misc]
                run.rates.append(rate)
                run.cores.append(cores)
        for run in runs if memory else []:
            with MemoryPeak(run.stage.workers[0]) as peak:
                run.stage.round(files)
            run.peak = peak.rss, peak.uss
    return runs, direct


def pool_rows(now: Setup, before: Setup, work: Path, count: int, rounds: int, only: set[str]) -> list[Row]:
    threads = Setup(f"{before.label} --pool threads", before.python, celery_pool="threads")
    prefork = Setup(f"{before.label} prefork", before.python)
    timed = rounds if "throughput" in only else 0
    runs, direct = pool_runs([prefork, threads, now], work, count, timed, memory="rss" in only)
    by = {run.setup.label: run for run in runs}
    mine = by[now.label]
    rows: list[Row] = []
    if "rss" in only:
        for what, name in (("idle", "idle after a warm-up"), ("peak", f"peak during {count} × 200 KB uploads")):
            value = getattr(mine, what)
            for other in (prefork, threads):
                theirs = getattr(by[other.label], what)
                rows.append(
                    Row(
                        f"worker memory at concurrency {POOL_CONCURRENCY}, {name}: RSS of the whole process tree"
                        if other is prefork
                        else f"same ({what}), against before's threads pool",
                        value[0] / MB,
                        "MB",
                        f"{other.label}, {POOL_CONCURRENCY}",
                        theirs[0] / MB,
                        f"≤ {TARGET_RSS_MB:g} MB",
                        value[0] <= TARGET_RSS_MB * MB,
                        note=f"USS: now {value[1] / MB:.0f} MB in {mine.processes} processes,"
                        f" before {theirs[1] / MB:.0f} MB in {by[other.label].processes}",
                    )
                )
    if "throughput" in only:
        for run in runs:
            rate = statistics.median(run.rates)
            rows.append(
                Row(
                    f"{count} × 200 KB, 50 ms latency, concurrency {POOL_CONCURRENCY}: {run.setup.label}",
                    rate,
                    "jobs/s",
                    f"direct thread pool ({POOL_CONCURRENCY} sessions)",
                    statistics.median(direct),
                    f"≥ {TARGET_RATIO:g} × direct" if run is mine else "",
                    rate >= TARGET_RATIO * statistics.median(direct) if run is mine else None,
                    note=cpu_note(statistics.median(run.cores)),
                    runs=run.rates,
                )
            )
    return rows


# -- the whole ----------------------------------------------------------------


def git(*args: str, env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(["git", "-C", str(overhead.ROOT), *args], env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def checkout_tree() -> str:
    """This checkout as it stands (uncommitted and untracked files too) as a git tree, for ``overhead.install``.

    Built in a throwaway index, so the checkout's own index, HEAD and files are
    left alone; only loose objects are written, as ``git stash create`` would.
    """
    with tempfile.TemporaryDirectory(prefix="wsupload-index-") as tmp:
        env = os.environ | {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git("add", "--all", env=env)
        return git("write-tree", env=env)


def install_both(before_ref: str, work: Path) -> tuple[Setup, Setup]:
    """(now, before), each in a venv of its own with its own pinned dependencies, installed side by side.

    "Now" too: this checkout's .venv holds the dev and bench extras, and some of
    them are imported when present (PyYAML and cryptography by kombu), which was
    measured to add ~6 MB to every worker process: the same code in the two
    environments differed by 10 % in RSS.
    """
    dirty = git("status", "--porcelain") != ""
    now_name = f"now ({git('rev-parse', '--short', 'HEAD')}{' + changes' if dirty else ''})"
    with ThreadPoolExecutor(2) as pool:
        now = pool.submit(overhead.install, checkout_tree(), work / "now")
        before = pool.submit(overhead.install, before_ref, work / "before")
        return Setup(now_name, now.result()), Setup(f"before ({before_ref})", before.result())


def bench(
    work: Path,
    before_ref: str = PREVIOUS_DESIGN,
    *,
    quick: bool = False,
    only: set[str] | None = None,
    cap: float | None = None,
    jobs: int | None = None,
    rounds: int | None = None,
) -> list[Row]:
    """Every selected row, "now" against commit ``before_ref`` (installed under ``work``)."""
    only = set(ROWS) if only is None else only
    now, before = install_both(before_ref, work)
    rows: list[Row] = []
    if only & {"kill", "grace"}:
        rows += failover_rows(now, before, work / "failover", cap or (45 if quick else 120), only)
    if only & {"rss", "throughput"}:
        count, repeats = jobs or (300 if quick else 1000), rounds or 3
        rows += pool_rows(now, before, work / "pools", count, repeats, only)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--before", default=PREVIOUS_DESIGN, help=f"git commit to compare with (default {PREVIOUS_DESIGN})"
    )
    parser.add_argument("--quick", action="store_true", help="300 jobs a round, waits capped at 45 s")
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows among {', '.join(ROWS)}")
    parser.add_argument("--cap", type=float, help="longest wait for a failed-over job (default 120 s, quick 45 s)")
    parser.add_argument("--jobs", type=int, help="files per throughput round (default 1000, quick 300)")
    parser.add_argument("--rounds", type=int, help="throughput rounds (default 3)")
    args = parser.parse_args()
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    if unknown := only - set(ROWS):
        parser.error(f"--only: unknown rows {', '.join(sorted(unknown))} (choose among {', '.join(ROWS)})")
    if not overhead.commit_exists(args.before):
        parser.error(f"--before: no commit {args.before!r} in this clone")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wsupload-leases-") as tmp:
        rows = bench(
            Path(tmp), args.before, quick=args.quick, only=only, cap=args.cap, jobs=args.jobs, rounds=args.rounds
        )
    print("\n".join(table(rows)))
    for row in rows:
        if len(row.runs) > 1:
            print(f"- {row.name}: " + ", ".join(f"{v:.3g}" for v in row.runs))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
