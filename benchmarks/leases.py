"""Leases: recovery, memory and throughput of this checkout, alone or beside another version (issue 11).

"Now" is this checkout, whatever it holds when run (uncommitted files too);
"before", only when named with ``--before COMMIT``, a git commit: the rows then
put "before" beside "now" in the same run, as they measured the visibility-timeout
design (its figures: ``benchmarks/HISTORY.md``). Both are installed the same way,
each into a venv of its own with its own pinned dependencies (``versions.install``),
not run from this checkout's .venv, whose dev extras change what a worker imports. Every run of a version
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
- ``pause``: a batch of ``PAUSE_FILES`` files through one worker (concurrency 2)
  whose first upload the sandbox holds ``STALL`` s; once the others have ended,
  a second worker starts and the first's whole process group gets SIGSTOP,
  then SIGCONT once the second has ended the held job and the held answer is
  back (the paused worker wakes holding an answer for a job it lost). Counts
  the uploads the sandbox saw, the final documents published on
  ``wsupload:ended`` (one per job is right), the batch's counters and the
  writes the paused worker's log says were refused. "Now" at its defaults
  beside "before" at VT 20 s (at its default VT the job would wait an hour).
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

- ``redis-kill``: a batch of 300 small files (the sandbox answers after 20 ms,
  so uploads are in flight), one worker (concurrency 4), its Redis with
  ``appendonly yes``, ``appendfsync everysec`` on its own port and directory,
  ``kill -9``ed once 30, 110 and 190 jobs have ended and restarted on the same
  port and directory each time (as tests/integration/test_sweep.py does). A run
  fails when a job has not ended ``LOST_AFTER`` (60) s after Redis answers again
  after the last kill, or the worker exits (nothing restarts it; "before" may
  die there, celery#9250); where the unfinished jobs' messages were then (a
  queue, kombu's unacked hash, nowhere) is in the note. Also the median seconds
  from Redis answering again to the batch's last job ended ("> 60" for a failed
  run). 20 runs per version (``--quick``: 3, ``--runs N``), each with a fresh
  Redis and worker, the versions alternating run by run.
- ``long`` (only with ``--long`` or ``--only long``: never in ``--quick`` nor
  ``make bench``, it lasts over ten minutes): a healthy upload lasting 10
  minutes at default delivery settings, two workers (concurrency 2): 150 MiB
  whose body a proxy lets through to the sandbox at 256 KiB/s (``Trickle``),
  so bytes keep moving and no timeout fires (a held answer would meet the
  120 s read timeout in every version). Reports the requests the sandbox saw,
  the job's status and attempts: "now", "before" at its default VT (3600 s: its
  hard time limit, 3240 s, lets 10 minutes pass) and "before" at VT 300 s (hard
  limit 270 s: the bound its design puts on an upload's length), side by side.

The failover scenarios run side by side (each has its own Redis and sandbox:
faults are first come, first served); the Redis kills one run at a time; the
pool runs afterwards on a quiet machine.

``make bench`` runs every row but ``long`` (``python -m benchmarks.run --leases-before
COMMIT`` adds a "before"). Run alone: ``python -m benchmarks.leases [--before COMMIT]
[--quick] [--long] [--only kill,grace,pause,redis-kill,rss,throughput,long]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import psutil
import redis
from celery import Celery

from benchmarks.harness import (
    KEY,
    MIB,
    EndedCounter,
    Row,
    baseline,
    busy_cores,
    clean_env,
    cpu_note,
    make_media,
    sandbox,
    table,
    within,
)
from benchmarks.versions import PRODUCER_ROUND, checkout_label, checkout_tree, commit, console_script, install
from wsupload.tasks.recovery.lost_sweep import jobs_of
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import FAILED, TERMINAL, decode_doc, utcnow
from wsupload.worker.dev.local_services import LocalRedis, free_port, start_redis, wait_until

ROWS = ("kill", "grace", "pause", "redis-kill", "rss", "throughput")
LONG = "long"
"""The 10-minute upload: run only when asked (``--long`` or ``--only long``), never by ``--quick`` or ``make bench``."""
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


@dataclass
class CountRow(Row):
    """A row of counts (runs, requests): no ratio between two of them."""

    @property
    def ratio(self) -> float | None:
        return None


@dataclass(frozen=True)
class Setup:
    """One version in one configuration: its interpreter, extra environment, and how its worker starts."""

    label: str
    python: str
    env: Mapping[str, str] = field(default_factory=dict)
    celery_pool: str | None = None
    """Start ``celery -A wsupload.worker.app worker --pool POOL`` instead of ``wsupload worker``."""

    def script(self, name: str) -> str:
        return console_script(self.python, name)

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
        return clean_env() | {"REDIS_URL": self.redis.url} | dict(extra)

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

    def enqueue_batch(self, files: list[str]) -> list[str]:
        """Job ids of one batch of ``files``, enqueued by the version's own producer (bulk queue, as ``ingest``)."""
        return self.batch(files)[1]

    def batch(self, files: list[str]) -> tuple[str, list[str]]:
        """(batch id, job ids) of one batch of ``files``, enqueued as ``enqueue_batch`` does."""
        done = subprocess.run(
            [self.setup.python, "-c", ENQUEUE_BATCH, *files],
            env=self.env(),
            cwd=self.work,
            check=True,
            capture_output=True,
            text=True,
        )
        enqueued = json.loads(done.stdout)
        return str(enqueued["batch_id"]), [str(job_id) for job_id in enqueued["jobs"]]

    def round(self, files: list[str]) -> float:
        """Seconds from the first enqueue to the last success, by the version's own producer."""
        done = subprocess.run(
            [self.setup.python, str(PRODUCER_ROUND), *files],
            env=self.env(),
            cwd=self.work,
            check=True,
            capture_output=True,
            text=True,
        )
        return float(json.loads(done.stdout)["seconds"])


@contextmanager
def stage(setup: Setup, sandbox_url: str, work: Path, redis_server: LocalRedis | None = None) -> Iterator[Stage]:
    """The version's stage; it stops its workers and ``redis_server`` (or a private one it starts) on exit."""
    work.mkdir(parents=True)
    on = Stage(setup, redis_server or start_redis(), sandbox_url, work)
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


def at_vt(setup: Setup, seconds: int) -> Setup:
    """``setup`` at ``WSUPLOAD_VISIBILITY_TIMEOUT=seconds``: the visibility-timeout design's one knob."""
    return Setup(
        f"{setup.label}, WSUPLOAD_VISIBILITY_TIMEOUT={seconds}",
        setup.python,
        {"WSUPLOAD_VISIBILITY_TIMEOUT": str(seconds)},
    )


def failover_rows(now: Setup, before: Setup | None, work: Path, cap: float, only: set[str]) -> list[Row]:
    """Now at its defaults; with ``before``, that version at its default VT and at VT 20 s beside it."""
    # (setup, how a row names it as the baseline)
    others: list[tuple[Setup, str]] = []
    if before is not None:
        others = [
            (before, f"{before.label}, its default VT 3600 s"),
            (at_vt(before, 20), f"{before.label}, its shortest VT, 20 s"),
        ]
    kinds = [kind for kind in ("kill", "grace") if kind in only]
    cases = {
        (kind, setup.label): (setup, None if kind == "kill" else GRACE)
        for kind in kinds
        for setup in (now, *(other for other, _ in others))
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
    for kind in kinds:
        value = seconds[kind, now.label]
        target = f"≤ {TARGET_SECONDS:g} s"
        met = not isinstance(value, AtLeast) and value <= TARGET_SECONDS
        note = f"concurrency {FAILOVER_CONCURRENCY}; waits capped at {cap:g} s"
        if not others:
            rows.append(BoundRow(f"{names[kind]}, default settings", value, "s", target=target, met=met, note=note))
        for n, (other, label) in enumerate(others):
            rows.append(
                BoundRow(
                    f"{names[kind]}, default settings" if n == 0 else f"same {short[kind]}, against before at VT 20 s",
                    value,
                    "s",
                    label,
                    seconds[kind, other.label],
                    target,
                    met,
                    note=note,
                )
            )
    return rows


# -- a worker paused past its lease -------------------------------------------

PAUSE_FILES = 20
"""Jobs in the ``pause`` rows' batch: one is held (and paused) at the sandbox, the others end around it."""
REFUSED = "this delivery stops"
"""What a worker logs when fencing refuses its write (``tasks.upload``); the previous design has no such line."""


@dataclass
class PauseOutcome:
    """What one SIGSTOP/SIGCONT run left behind: uploads, final documents and batch counters."""

    jobs: int
    uploads: int
    ended: dict[str, int]
    """Final documents published (``wsupload:ended``) per job: more than one is a job whose outcome was overwritten."""
    counters: dict[str, int]
    refused: int
    """Writes the paused worker logged as refused after it resumed."""
    paused: float
    """Seconds the worker stayed stopped."""
    taken_over: bool
    """Another worker ended the paused job while it was stopped."""

    @property
    def finals(self) -> int:
        return sum(self.ended.values())

    @property
    def exact(self) -> bool:
        """One final document per job, the batch's counters saying each job once, and the paused write refused."""
        counted = tuple(self.counters.get(name, 0) for name in ("total", "done", "succeeded", "failed"))
        once = self.finals == self.jobs and all(count == 1 for count in self.ended.values())
        return once and counted == (self.jobs, self.jobs, self.jobs, 0) and self.refused >= 1 and self.taken_over

    def __str__(self) -> str:
        twice = sum(count > 1 for count in self.ended.values())
        counted = "/".join(str(self.counters.get(name, 0)) for name in ("total", "done", "succeeded", "failed"))
        return (
            f"paused {self.paused:.0f} s, {'taken over' if self.taken_over else 'NOT taken over'};"
            f" {self.uploads} uploads for {self.jobs} jobs, {self.finals} final documents ({twice} job(s) twice),"
            f" batch total/done/succeeded/failed {counted}, {self.refused} write(s) refused in the paused worker's log"
        )


def pause_run(setup: Setup, work: Path, cap: float) -> PauseOutcome:
    """A batch through one worker; the worker holding its last job is SIGSTOPped, a second takes the job over.

    The sandbox holds the first upload's answer ``STALL`` s. Once every other
    job of the batch has ended, a second worker starts and the first's whole
    process group gets SIGSTOP; SIGCONT once the job has ended on the second
    worker and the held answer has come back (the paused worker wakes holding
    an answer for a job it lost). Then what each version made of it.
    """
    folder = work / "files"
    folder.mkdir(parents=True)
    files = [str(make_media(folder / f"p{n:02d}.mp4", SIZE)) for n in range(PAUSE_FILES)]
    with sandbox() as url, stage(setup, url, work / "stage") as on:
        first = on.start_worker(FAILOVER_CONCURRENCY)
        on.wait_ready()
        add_fault(url, {"stall": STALL, "times": 1})
        client = redis.Redis.from_url(on.redis.url, decode_responses=True)
        with EndedCounter(on.redis.url) as ended:
            held_from = time.monotonic()
            batch_id, job_ids = on.batch(files)
            wait_until(
                lambda: sum(ended.counts.values()) >= len(job_ids) - 1, 60, interval=0.05, what="the other jobs to end"
            )
            (held,) = set(job_ids) - set(ended.counts)
            on.start_worker(FAILOVER_CONCURRENCY)
            on.wait_ready()
            os.killpg(first.process.pid, signal.SIGSTOP)
            paused = time.monotonic()
            try:
                taken_over = within(lambda: held in ended.counts, cap, 0.1)
                wait_until(lambda: time.monotonic() - held_from > STALL + 1, STALL + 5, interval=0.1)
            finally:
                os.killpg(first.process.pid, signal.SIGCONT)
            stopped_for = time.monotonic() - paused

            def settled() -> bool:
                return REFUSED in first.log_path.read_text(errors="replace") or ended.counts.get(held, 0) > 1

            within(settled, 30, 0.1)
        with urllib.request.urlopen(url + "/_sandbox/uploads", timeout=10) as answer:
            uploads = len(json.load(answer))
        stored = client.hgetall(keys.batch(batch_id))
        counters = {str(k): int(v) for k, v in stored.items() if str(v).isdigit()}
        client.close()
        refused = first.log_path.read_text(errors="replace").count(REFUSED)
    return PauseOutcome(len(job_ids), uploads, dict(ended.counts), counters, refused, stopped_for, taken_over)


def pause_rows(now: Setup, before: Setup | None, work: Path, cap: float) -> list[Row]:
    """Now at its defaults; with ``before``, that version at VT 20 s beside it (at its default VT: an hour)."""
    setups = [now] if before is None else [now, at_vt(before, 20)]
    with ThreadPoolExecutor(len(setups)) as pool:
        futures = [pool.submit(pause_run, setup, work / f"pause-{n}", cap) for n, setup in enumerate(setups)]
        mine, *theirs = (future.result() for future in futures)
    return [
        CountRow(
            f"worker paused (SIGSTOP) mid-upload past its lease, a second worker taking the job over, then resumed"
            f" (SIGCONT): final documents published for a {PAUSE_FILES}-job batch",
            float(mine.finals),
            "documents",
            setups[-1].label if theirs else "",
            float(theirs[0].finals) if theirs else None,
            f"{PAUSE_FILES}: one per job; the paused worker's write refused; batch counters exact",
            mine.exact,
            note=f"now: {mine}" + "".join(f"; before: {outcome}" for outcome in theirs),
        )
    ]


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


def pool_rows(now: Setup, before: Setup | None, work: Path, count: int, rounds: int, only: set[str]) -> list[Row]:
    """Now's worker; with ``before``, that version as prefork and with ``--pool threads`` beside it."""
    others: list[Setup] = []
    if before is not None:
        others = [
            Setup(f"{before.label} prefork", before.python),
            Setup(f"{before.label} --pool threads", before.python, celery_pool="threads"),
        ]
    timed = rounds if "throughput" in only else 0
    runs, direct = pool_runs([*others, now], work, count, timed, memory="rss" in only)
    by = {run.setup.label: run for run in runs}
    mine = by[now.label]
    rows: list[Row] = []
    if "rss" in only:
        for what, name in (("idle", "idle after a warm-up"), ("peak", f"peak during {count} × 200 KB uploads")):
            value = getattr(mine, what)
            first = f"worker memory at concurrency {POOL_CONCURRENCY}, {name}: RSS of the whole process tree"
            target, met = f"≤ {TARGET_RSS_MB:g} MB", value[0] <= TARGET_RSS_MB * MB
            uss = f"USS: now {value[1] / MB:.0f} MB in {mine.processes} processes"
            if not others:
                rows.append(Row(first, value[0] / MB, "MB", target=target, met=met, note=uss))
            for n, other in enumerate(others):
                theirs = getattr(by[other.label], what)
                rows.append(
                    Row(
                        first if n == 0 else f"same ({what}), against before's threads pool",
                        value[0] / MB,
                        "MB",
                        f"{other.label}, {POOL_CONCURRENCY}",
                        theirs[0] / MB,
                        target,
                        met,
                        note=f"{uss}, before {theirs[1] / MB:.0f} MB in {by[other.label].processes}",
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


# -- Redis killed under a batch ----------------------------------------------

ENQUEUE_BATCH = """\
import json, sys
from wsupload import Producer, Settings
batch = Producer(Settings.from_env()).enqueue_batch(sys.argv[1:])
print(json.dumps({"batch_id": batch.batch_id, "jobs": [job.job_id for job in batch.jobs]}))
"""
"""Run by a version's own interpreter: its own producer, bulk queue and batch records, as ``wsupload ingest``."""
EVERYSEC = ("--appendonly", "yes", "--appendfsync", "everysec")
"""Redis as the issue's report ran it: a ``kill -9`` can lose the writes of about the last second."""
KILL_FILES = 300
KILL_SIZE = 10 * 1000
KILL_LATENCY = 0.02
"""The sandbox's answer delay in the ``redis-kill`` rows: uploads are in flight whenever Redis goes."""
KILL_AT = (30, 110, 190)
"""Jobs ended before each ``kill -9``, as tests/integration/test_sweep.py kills."""
KILL_CONCURRENCY = 4
LOST_AFTER = 60.0
"""A job not ended this long after Redis answers again after the last kill counts as lost."""


@dataclass
class KillRun:
    """One batch under three Redis kills: how it ended, and where its unfinished jobs were when the wait stopped."""

    ended_at_kills: list[int] = field(default_factory=list)
    complete: float | None = None
    """Seconds from Redis answering after the last kill to every job ended; None: not within ``LOST_AFTER``."""
    worker_exited: bool = False
    unfinished: int = 0
    queued: int = 0
    """Unfinished jobs whose message waits in a queue list."""
    unacked: int = 0
    """Unfinished jobs whose message is in kombu's unacked hash: held, or waiting out its lease (or VT)."""
    failed_jobs: int = 0

    @property
    def nowhere(self) -> int:
        """Unfinished jobs with no message in any queue nor in unacked: lost for good unless swept back."""
        return self.unfinished - self.queued - self.unacked

    @property
    def failed(self) -> bool:
        return self.worker_exited or self.complete is None

    @property
    def seconds(self) -> float:
        return AtLeast(LOST_AFTER) if self.complete is None else self.complete

    def __str__(self) -> str:
        if self.worker_exited:
            return "the worker exited"
        if self.complete is None:
            return (
                f"{self.unfinished} unfinished ({self.unacked} unacked, {self.queued} queued,"
                f" {self.nowhere} in no queue) {LOST_AFTER:g} s after the last restart"
            )
        return f"complete {self.complete:.1f} s after the last restart"


def job_statuses(client: redis.Redis, job_ids: list[str]) -> list[str | None] | None:
    """Each job's status as its document says (the same key and JSON in both versions); None while Redis is away."""
    try:
        raws = client.mget([keys.result(job_id) for job_id in job_ids])
    except (redis.ConnectionError, redis.TimeoutError):  # down, or loading its AOF
        return None
    now = utcnow()
    docs = [decode_doc(raw, job_id, now) for raw, job_id in zip(raws, job_ids, strict=True)]
    return [doc["status"] if doc else None for doc in docs]


def messages_in(client: redis.Redis) -> tuple[set[str], set[str]]:
    """(jobs whose message waits in a queue list, jobs whose message is in kombu's unacked hash)."""
    queued: set[str] = set()
    for key in client.scan_iter(_type="list"):  # every queue, and its priority lists
        queued.update(job for raw in client.lrange(key, 0, -1) for job in jobs_of(raw))
    # kombu keeps [message, exchange, routing key] there, the message as a decoded dict.
    held = (job for raw in client.hvals("unacked") for job in jobs_of(json.dumps(json.loads(raw)[0])))
    return queued, set(held)


def redis_kill_run(setup: Setup, sandbox_url: str, work: Path, files: list[str]) -> KillRun:
    """One batch of ``files`` through one worker while its Redis is SIGKILLed and restarted three times."""
    directory = work.with_name(work.name + "-redis")
    directory.mkdir(parents=True)
    port = free_port()

    def start() -> LocalRedis:
        # The same port and directory: the new server replays the AOF, and every client finds it again.
        return start_redis(port=port, directory=directory, extra_args=EVERYSEC)

    run = KillRun()
    with stage(setup, sandbox_url, work, start()) as on:
        worker = on.start_worker(KILL_CONCURRENCY)
        on.wait_ready()
        client = redis.Redis.from_url(on.redis.url, socket_timeout=2, socket_connect_timeout=1)
        try:
            job_ids = on.enqueue_batch(files)
            ended = [0]

            def gone() -> bool:
                return worker.process.poll() is not None

            def reached(count: int) -> Callable[[], bool]:
                def check() -> bool:
                    statuses = job_statuses(client, job_ids)
                    if statuses is not None:
                        ended[0] = sum(status in TERMINAL for status in statuses)
                    return gone() or ended[0] >= count

                return check

            back = 0.0
            for count in KILL_AT:
                if not within(reached(count), LOST_AFTER, 0.02) or gone():
                    break  # stalled before this kill, or the worker is gone: the run failed
                run.ended_at_kills.append(ended[0])
                on.redis.kill()
                on.redis = start()  # returns once the server answers, its AOF loaded
                back = time.monotonic()
            else:
                if within(reached(len(job_ids)), LOST_AFTER, 0.05) and not gone():
                    run.complete = time.monotonic() - back
            run.worker_exited = gone()
            statuses = job_statuses(client, job_ids) or [None] * len(job_ids)
            run.failed_jobs = sum(status == FAILED for status in statuses)
            unfinished = {job for job, status in zip(job_ids, statuses, strict=True) if status not in TERMINAL}
            if run.complete is None and unfinished:
                queued, held = messages_in(client)
                run.unfinished, run.queued = len(unfinished), len(unfinished & queued)
                run.unacked = len((unfinished - queued) & held)
        finally:
            client.close()
        if run.worker_exited:
            print(f"{setup.label}: the worker exited:\n{worker.log_tail(8)}", file=sys.stderr, flush=True)
    return run


def bounded_median(values: list[float]) -> float:
    """The median; a bound ("> 60") when one of the middle values is."""
    ordered = sorted(values, key=float)
    mid = len(ordered) // 2
    middle = ordered[mid : mid + 1] if len(ordered) % 2 else ordered[mid - 1 : mid + 1]
    value = sum(map(float, middle)) / len(middle)
    return AtLeast(value) if any(isinstance(v, AtLeast) for v in middle) else value


def kill_note(runs: list[KillRun]) -> str:
    unfinished = [r for r in runs if r.complete is None and not r.worker_exited]
    parts = []
    if unfinished:
        parts.append(
            f"{len(unfinished)} run(s) unfinished at the cap, their jobs: {sum(r.unacked for r in unfinished)}"
            f" unacked (held, or waiting out a lease or VT), {sum(r.queued for r in unfinished)} queued,"
            f" {sum(r.nowhere for r in unfinished)} in no queue nor unacked (lost for good)"
        )
    if exited := sum(r.worker_exited for r in runs):
        parts.append(f"the worker exited in {exited} run(s)")
    if failed := sum(r.failed_jobs for r in runs):
        parts.append(f"{failed} job(s) ended failed")
    return ", ".join(parts) or "every run complete, the worker up"


def redis_kill_rows(now: Setup, before: Setup | None, work: Path, runs: int) -> list[Row]:
    """``runs`` batches per version, alternating versions run by run, each run with its own Redis and worker."""
    folder = work / "files"
    folder.mkdir(parents=True)
    files = [str(make_media(folder / f"k{n:03d}.mp4", KILL_SIZE)) for n in range(KILL_FILES)]
    sides = [("now", now)] + ([("before", before)] if before is not None else [])
    results: dict[str, list[KillRun]] = {setup.label: [] for _, setup in sides}
    with sandbox(latency=KILL_LATENCY) as url:
        for n in range(runs):
            for name, setup in sides[:: 1 if n % 2 == 0 else -1]:
                run = redis_kill_run(setup, url, work / f"{name}-{n}", files)
                results[setup.label].append(run)
                at = "/".join(map(str, run.ended_at_kills))
                print(f"redis-kill {name} run {n + 1}: killed at {at} jobs ended, {run}", file=sys.stderr, flush=True)
    mine = results[now.label]
    theirs = results[before.label] if before is not None else []
    lost = sum(r.failed for r in mine)
    seconds = bounded_median([r.seconds for r in mine])
    kills = [statistics.median(at) for at in zip(*(r.ended_at_kills for r in mine + theirs), strict=False)]
    vt = f"{before.label}, its default VT 3600 s" if before is not None else ""
    kills_note = f"kills after a median {'/'.join(f'{k:g}' for k in kills)} jobs had ended"
    return [
        CountRow(
            f"Redis (AOF everysec) kill -9ed 3 times during a {KILL_FILES}-file batch, restarted on its port and"
            f" directory, one worker (concurrency {KILL_CONCURRENCY}): runs with a job lost (not ended"
            f" {LOST_AFTER:g} s after Redis is back) or the worker gone",
            float(lost),
            f"of {runs} runs",
            vt,
            float(sum(r.failed for r in theirs)) if theirs else None,
            f"0 of {runs}",
            lost == 0,
            note=f"now: {kill_note(mine)}" + (f"; before: {kill_note(theirs)}" if theirs else ""),
        ),
        BoundRow(
            "same: seconds from Redis answering after the last kill until every job of the batch has ended (median)",
            seconds,
            "s",
            vt,
            bounded_median([r.seconds for r in theirs]) if theirs else None,
            f"≤ {TARGET_SECONDS:g} s",
            not isinstance(seconds, AtLeast) and seconds <= TARGET_SECONDS,
            note=kills_note + (f"; before's runs: {', '.join(f'{r.seconds:.3g}' for r in theirs)}" if theirs else ""),
            runs=[r.seconds for r in mine],
        ),
    ]


# -- a long healthy upload ---------------------------------------------------

LONG_SECONDS = 600.0
"""How long the healthy upload of the ``long`` rows lasts."""
TRICKLE = 256 * 1024
"""Bytes per second the proxy lets through to the sandbox in the ``long`` rows."""
LONG_VT = 300
"""The visibility timeout "before" also runs the long upload at: its hard time limit (270 s) is below 10 minutes."""


class Trickle:
    """A TCP proxy to the sandbox letting requests through at ``rate`` bytes/s; answers come back at once.

    A slow server that stays healthy: the body keeps moving (a 1 MiB block
    leaves the worker every few seconds, within the 10 s write timeout), so no
    timeout ends it and the upload lasts its size over the rate. Holding the
    answer instead (the sandbox's stall) is not healthy at default settings:
    the read timeout (120 s) ends it, in every version.
    """

    def __init__(self, upstream: str, rate: float) -> None:
        host, port = upstream.removeprefix("http://").rsplit(":", 1)
        self.upstream, self.rate = (host, int(port)), rate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.5)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Trickle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            server = socket.create_connection(self.upstream)
            open_pumps = [2]
            lock = threading.Lock()
            for source, sink, rate in ((client, server, self.rate), (server, client, None)):
                args = (source, sink, rate, (client, server), open_pumps, lock)
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    @staticmethod
    def _pump(
        source: socket.socket,
        sink: socket.socket,
        rate: float | None,
        pair: tuple[socket.socket, socket.socket],
        open_pumps: list[int],
        lock: threading.Lock,
    ) -> None:
        try:
            while block := source.recv(16 * 1024):
                sink.sendall(block)
                if rate:
                    time.sleep(len(block) / rate)  # the throttle itself
        except OSError:
            pass
        finally:
            with suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
            with lock:
                open_pumps[0] -= 1
                if open_pumps[0] == 0:
                    for end in pair:
                        end.close()


@dataclass
class LongOutcome:
    status: str
    kind: str | None
    attempts: object
    requests: int
    seconds: float
    workers_exited: int

    @property
    def once(self) -> bool:
        """Ran once: one request, succeeded at the first attempt, every worker still up."""
        return (self.status, self.attempts, self.requests, self.workers_exited) == ("succeeded", 1, 1, 0)

    def __str__(self) -> str:
        kind = f" ({self.kind})" if self.kind else ""
        exited = f", {self.workers_exited} worker(s) exited" if self.workers_exited else ""
        took = f"after {self.seconds:.0f} s, attempts {self.attempts}, {self.requests} request(s)"
        return f"{self.status}{kind} {took}{exited}"


def long_upload(setup: Setup, path: Path, work: Path, cap: float) -> LongOutcome:
    """One upload of ``path`` through the throttling proxy, two workers running; what came of it."""
    with sandbox() as url, Trickle(url, TRICKLE) as proxy, stage(setup, proxy.url, work) as on:
        for _ in range(2):
            on.start_worker(FAILOVER_CONCURRENCY)
        on.wait_ready()
        enqueued = time.time()
        (job,) = on.cli("enqueue", str(path))
        (doc,) = on.cli("wait", "--timeout", str(cap), job["job_id"], timeout=cap + 60)
        with urllib.request.urlopen(url + "/_sandbox/uploads", timeout=10) as answer:
            requests = len(json.load(answer))
        exited = sum(worker.process.poll() is not None for worker in on.workers)
    if doc is None or doc["status"] not in ("succeeded", "failed"):
        status = doc["status"] if doc else "missing"
        return LongOutcome(f"still {status}", None, doc and doc.get("attempts"), requests, AtLeast(cap), exited)
    error = doc.get("error") or {}
    seconds = datetime.fromisoformat(doc["finished_at"]).timestamp() - enqueued
    return LongOutcome(doc["status"], error.get("kind"), doc.get("attempts"), requests, seconds, exited)


def long_rows(now: Setup, before: Setup | None, work: Path, seconds: float) -> list[Row]:
    """Now; with ``before``, that version at its defaults and at VT 300 beside it, each with its own sandbox."""
    work.mkdir(parents=True)
    size = int(seconds * TRICKLE)
    path = make_media(work / "long.mp4", size)
    setups = [now] if before is None else [now, before, at_vt(before, LONG_VT)]
    cap = 2 * seconds + 120
    with ThreadPoolExecutor(len(setups)) as pool:
        futures = {s.label: pool.submit(long_upload, s, path, work / f"case-{n}", cap) for n, s in enumerate(setups)}
        outcomes = {label: future.result() for label, future in futures.items()}
    mine = outcomes[now.label]
    target = "1, succeeded, attempts 1"
    name = (
        f"a healthy upload lasting {seconds / 60:g} minutes ({size / MIB:.0f} MiB, its body let through at"
        f" {TRICKLE // 1024} KiB/s), default settings, two workers (concurrency {FAILOVER_CONCURRENCY}):"
        " upload requests the API saw"
    )
    if before is None:
        return [CountRow(name, float(mine.requests), "requests", target=target, met=mine.once, note=f"now: {mine}")]
    vt = setups[2]
    return [
        CountRow(
            name,
            float(mine.requests),
            "requests",
            f"{before.label}, its default VT 3600 s",
            float(outcomes[before.label].requests),
            target,
            mine.once,
            note=f"now: {mine}; before: {outcomes[before.label]}",
        ),
        CountRow(
            f"same upload, against before at VT {LONG_VT} s",
            float(mine.requests),
            "requests",
            vt.label,
            float(outcomes[vt.label].requests),
            target,
            mine.once,
            note=f"before at VT {LONG_VT} s (hard time limit {LONG_VT - LONG_VT // 10} s): {outcomes[vt.label]}",
        ),
    ]


# -- the whole ----------------------------------------------------------------


def install_versions(before_ref: str | None, work: Path) -> tuple[Setup, Setup | None]:
    """(now, before or None), each in a venv of its own with its own pinned dependencies, installed side by side.

    "Now" too: this checkout's .venv holds the dev and bench extras, and some of
    them are imported when present (PyYAML and cryptography by kombu), which was
    measured to add ~6 MB to every worker process: the same code in the two
    environments differed by 10 % in RSS.
    """
    now_name = checkout_label()
    with ThreadPoolExecutor(2) as pool:
        now = pool.submit(install, checkout_tree(), work / "now")
        before = pool.submit(install, before_ref, work / "before") if before_ref else None
        return (
            Setup(now_name, now.result()),
            Setup(f"before ({before_ref})", before.result()) if before is not None else None,
        )


def bench(
    work: Path,
    before_ref: str | None = None,
    *,
    quick: bool = False,
    only: set[str] | None = None,
    cap: float | None = None,
    jobs: int | None = None,
    rounds: int | None = None,
    runs: int | None = None,
    long_seconds: float = LONG_SECONDS,
) -> list[Row]:
    """Every selected row for "now", beside commit ``before_ref`` if given (both installed under ``work``).

    ``only`` defaults to ``ROWS``: the ``long`` row runs only when named.
    """
    only = set(ROWS) if only is None else only
    now, before = install_versions(before_ref, work)
    rows: list[Row] = []
    if only & {"kill", "grace"}:
        rows += failover_rows(now, before, work / "failover", cap or (45 if quick else 120), only)
    if "pause" in only:
        rows += pause_rows(now, before, work / "pause", cap or (45 if quick else 120))
    if "redis-kill" in only:
        rows += redis_kill_rows(now, before, work / "redis-kill", runs or (3 if quick else 20))
    if only & {"rss", "throughput"}:
        count, repeats = jobs or (300 if quick else 1000), rounds or 3
        rows += pool_rows(now, before, work / "pools", count, repeats, only)
    if LONG in only:
        rows += long_rows(now, before, work / "long", long_seconds)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--before",
        type=commit,
        metavar="COMMIT",
        help="git commit to run beside this checkout (default: none; past designs' figures: benchmarks/HISTORY.md)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="300 jobs a round, 3 redis-kill runs, waits capped at 45 s"
    )
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows among {', '.join((*ROWS, LONG))}")
    parser.add_argument("--long", action="store_true", help=f"add the {LONG_SECONDS / 60:g}-minute upload (row long)")
    parser.add_argument("--cap", type=float, help="longest wait for a failed-over job (default 120 s, quick 45 s)")
    parser.add_argument("--jobs", type=int, help="files per throughput round (default 1000, quick 300)")
    parser.add_argument("--rounds", type=int, help="throughput rounds (default 3)")
    parser.add_argument("--runs", type=int, help="redis-kill batches per version (default 20, quick 3)")
    args = parser.parse_args()
    only = {name.strip() for name in args.only.split(",") if name.strip()} | ({LONG} if args.long else set())
    if unknown := only - {*ROWS, LONG}:
        parser.error(f"--only: unknown rows {', '.join(sorted(unknown))} (choose among {', '.join((*ROWS, LONG))})")
    if args.runs is not None and args.runs < 1:
        parser.error("--runs: at least 1")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wsupload-leases-") as tmp:
        rows = bench(
            Path(tmp),
            args.before,
            quick=args.quick,
            only=only,
            cap=args.cap,
            jobs=args.jobs,
            rounds=args.rounds,
            runs=args.runs,
        )
    print("\n".join(table(rows)))
    for row in rows:
        if len(row.runs) > 1:
            print(f"- {row.name}: " + ", ".join(f"{v:.3g}" for v in row.runs))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
