"""The parent of ``wsupload worker --processes N`` (N > 1): runs N children, restarts crashed ones, forwards stops.

Each child is the one-process worker of ``--processes 1`` (``python -m
wsupload.worker.cli worker``, Celery's threads pool), with its share of the
concurrency, its own leases, heartbeat and node name ``wsupload-<parent pid>-<k>@<host>``.
The parent imports no Celery: it starts the children, looks at them every
``supervisor.POLL`` seconds and, per ``worker.supervisor``'s policy, starts a crashed
one again (at once, then with a backoff if it keeps crashing). SIGTERM or SIGINT
is forwarded to every child as SIGTERM, Celery's warm stop, so each child's stop
grace works as with one process; a second SIGINT (or a SIGQUIT) is forwarded as
SIGQUIT, Celery's cold stop. Once every child has ended after a stop, the parent
exits 0 (1 if a child did not stop warmly). A child that exits 0 by itself (a
remote shutdown) is not restarted; when none is left, the parent exits 0.
Children are in the parent's process group and get SIGTERM if the parent dies
(Linux's parent-death signal), so none outlives it.

Its own lines (started, exited, restarted) go to stderr, like the children's logs.
Its heartbeat (``SupervisorBeat``, a thread) writes a ``worker_records.SupervisorRecord``
every beat and at once when a child exits or starts again: ``health`` reads it.

Metrics (``WSUPLOAD_METRICS_PORT``): prometheus_client's multi-process mode. The
children write their counters, histograms and the in-flight gauge into files of a
directory the parent makes (``PROMETHEUS_MULTIPROC_DIR``) and serve nothing; the
parent serves one ``/metrics`` that adds them up, with the queue depths read once and
the CPU and memory of the parent and its children summed. Chosen over the parent
scraping each child's endpoint: a restarted child's counts are not lost (its files
stay and keep counting in the sum, so a counter never goes backwards), no port per
child, and nothing to parse.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

from wsupload.config.settings import Settings
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import isoformat, utcnow
from wsupload.worker import logs, supervisor, tls
from wsupload.worker.background import FailureStreak
from wsupload.worker.worker_records import (
    BEAT_INTERVAL,
    INDEX_HORIZON,
    RECORD_TTL,
    RESTARTING,
    RUNNING,
    STOPPING,
    ChildState,
    SupervisorRecord,
    connect,
)

log = logging.getLogger(__name__)

STOPPED = "stopped"
"""A child that exited 0 by itself (a remote shutdown): not restarted."""
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_DIR_PREFIX = "wsupload-metrics-"
"""The children's metrics files go to ``<tempdir>/wsupload-metrics-<parent pid>-<random>``."""


@dataclass
class Child:
    index: int
    name: str
    concurrency: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    """``time.monotonic()`` at its start."""
    since: datetime = field(default_factory=utcnow)
    restarts: int = 0
    quick_crashes: int = 0
    last_exit: str = ""
    restart_at: float | None = None
    """``time.monotonic()`` of its next start while it is down."""
    restart_wall: datetime | None = None
    returncode: int | None = None
    stopped: bool = False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.returncode is None

    def state(self, now_mono: float) -> ChildState:
        waiting = None if self.restart_at is None else self.restart_wall
        return ChildState(
            index=self.index,
            name=self.name,
            pid=self.process.pid if self.alive and self.process else None,
            state=RUNNING if self.alive else (STOPPED if self.stopped else RESTARTING),
            since=isoformat(self.since),
            restarts=self.restarts,
            last_exit=self.last_exit,
            restart_at=isoformat(waiting) if waiting and not self.alive else "",
        )


def die_with_parent(node_name: str) -> None:
    """In a child, as it starts: SIGTERM when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere nothing).

    Done by the child itself, not in a ``preexec_fn`` (unsafe while the parent's heartbeat
    thread runs); a parent that died before this leaves the child orphaned: it exits.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor.parent_pid_of(node_name):
        raise SystemExit(f"wsupload: the parent of {node_name} is gone; not starting")


def child_args(name: str, concurrency: int, loglevel: str, only: str | None, events: bool, metrics: bool) -> list[str]:
    """The command line of one child: ``wsupload worker --processes 1`` with its node name and share."""
    args = [sys.executable, "-m", "wsupload.worker.cli", "worker", "--processes", "1"]
    args += ["--concurrency", str(concurrency), "--loglevel", loglevel, "--node-name", name]
    args += ["--only", only] if only else []
    args += ["--events"] if events else []
    args += ["--metrics-to-parent"] if metrics else []
    return args


class Parent:
    """Runs the children until a stop; ``run`` returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        shares: Sequence[int],
        loglevel: str = "info",
        only: str | None = None,
        events: bool = False,
    ) -> None:
        self.settings = settings
        self.loglevel = loglevel
        self.only = only
        self.events = events
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.name = f"wsupload-{self.pid}@{self.host}"
        self.started_at = utcnow()
        self.children = [
            Child(k, supervisor.child_name(self.pid, k, self.host), share) for k, share in enumerate(shares, 1)
        ]
        self.lock = threading.Lock()
        self.stop_signal: int | None = None
        self.forwarded: dict[int, int] = {}
        """pid → the last signal forwarded to it."""
        self.cold = False
        self.metrics_dir: str | None = None
        self.beat: SupervisorBeat | None = None
        self.endpoint: Any = None

    # Signals: the handlers only note them; the loop forwards (it knows every child, even one starting).

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if (self.stop_signal is not None and signum in (signal.SIGINT, signal.SIGQUIT)) or signum == signal.SIGQUIT:
            self.cold = True
        if self.stop_signal is None:
            self.stop_signal = signum
        if self.beat is not None:
            self.beat.poke()

    def _forward(self) -> None:
        wanted = signal.SIGQUIT if self.cold else signal.SIGTERM
        for child in self.children:
            if child.alive and child.process and self.forwarded.get(child.process.pid) != wanted:
                if child.process.pid not in self.forwarded:
                    log.info("stopping child %d (pid %d): %s", child.index, child.process.pid, wanted.name)
                else:
                    log.info("child %d (pid %d): %s (cold stop)", child.index, child.process.pid, wanted.name)
                self.forwarded[child.process.pid] = wanted
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(wanted)

    def _spawn(self, child: Child) -> None:
        env = dict(os.environ)
        if self.metrics_dir is not None:
            env[METRICS_DIR_ENV] = self.metrics_dir
        args = child_args(
            child.name, child.concurrency, self.loglevel, self.only, self.events, self.metrics_dir is not None
        )
        child.process = subprocess.Popen(args, env=env)
        child.started = time.monotonic()
        child.since = utcnow()
        child.returncode = None
        child.restart_at = None
        child.restart_wall = None

    def _reap(self, child: Child, now: float) -> bool:
        """Whether the child just exited (then noted, and its restart planned unless stopping)."""
        if child.process is None or child.returncode is not None:
            return False
        code = child.process.poll()
        if code is None:
            return False
        child.returncode = code
        child.since = utcnow()
        child.last_exit = supervisor.describe_exit(code)
        if self.metrics_dir is not None:
            mark_dead(child.process.pid, self.metrics_dir)
        if self.stop_signal is not None:
            log.info("child %d (pid %d) %s", child.index, child.process.pid, child.last_exit)
            return True
        if code == 0:
            child.stopped = True
            log.info(
                "child %d (pid %d) exited with code 0 by itself (a remote shutdown?): not restarted",
                child.index,
                child.process.pid,
            )
            return True
        child.quick_crashes = supervisor.quick_crashes_after(child.quick_crashes, now - child.started)
        delay = supervisor.restart_delay(child.quick_crashes)
        child.restart_at = now + delay
        child.restart_wall = utcnow() + timedelta(seconds=delay)
        again = f"restarting in {delay:g} s ({child.quick_crashes} quick exits in a row)" if delay else "restarting"
        log.warning("child %d (pid %d) %s; %s", child.index, child.process.pid, child.last_exit, again)
        return True

    def snapshot(self) -> SupervisorRecord:
        now = time.monotonic()
        with self.lock:
            children = tuple(child.state(now) for child in self.children)
        return SupervisorRecord(
            name=self.name,
            host=self.host,
            pid=self.pid,
            version=_version(),
            concurrency=sum(child.concurrency for child in self.children),
            state=RUNNING if self.stop_signal is None else STOPPING,
            children=children,
            started_at=isoformat(self.started_at),
        )

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, self._on_signal)
        # A rotated certificate is said once by each child, whose connections do the work; the
        # parent's beat meets the same refusal and says nothing of it (nor its failing beats).
        tls.NOTICE.quiet = True
        if self.settings.metrics_port is not None:
            removed = remove_orphan_metrics_dirs(tempfile.gettempdir())
            if removed:
                log.info("metrics: removed %d directory(ies) of workers that were killed before cleaning up", removed)
            self.metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
        shares = "+".join(str(child.concurrency) for child in self.children)
        log.info(
            "%s: starting %d processes (%s threads, WSUPLOAD_CONCURRENCY %d in all)",
            self.name,
            len(self.children),
            shares,
            sum(child.concurrency for child in self.children),
        )
        try:
            with self.lock:
                for child in self.children:
                    self._spawn(child)
            log.info(
                "started %d children: %s",
                len(self.children),
                ", ".join(f"{c.index} pid {c.process.pid}" for c in self.children if c.process),
            )
            self.endpoint = self._serve_metrics()
            self.beat = SupervisorBeat(connect(self.settings.redis_url, timeout=BEAT_INTERVAL), self.snapshot)
            self.beat.start()
            return self._loop()
        finally:
            self._stop_everything()

    def _loop(self) -> int:
        while True:
            now = time.monotonic()
            changed = False
            with self.lock:
                if self.stop_signal is not None:
                    self._forward()
                for child in self.children:
                    changed |= self._reap(child, now)
                if self.stop_signal is None:
                    for child in self.children:
                        if (
                            not child.alive
                            and not child.stopped
                            and child.restart_at is not None
                            and now >= child.restart_at
                        ):
                            old = child.process.pid if child.process else None
                            child.restarts += 1
                            self._spawn(child)
                            changed = True
                            log.info(
                                "restarted child %d: pid %s → %d (restart %d)",
                                child.index,
                                old,
                                child.process.pid if child.process else -1,
                                child.restarts,
                            )
                alive = [child for child in self.children if child.alive]
                waiting = [c for c in self.children if not c.alive and not c.stopped]
            if changed and self.beat is not None:
                self.beat.poke()
            if self.stop_signal is not None and not alive:
                code = supervisor.stop_exit_code([self._stop_code(c) for c in self.children])
                log.info("%s: every child stopped; exiting %d", self.name, code)
                return code
            if self.stop_signal is None and not alive and not waiting:
                log.info("%s: every child exited by itself; exiting 0", self.name)
                return 0
            time.sleep(supervisor.POLL)

    def _stop_code(self, child: Child) -> int | None:
        # A child stopped before Celery took over its signals ends by SIGTERM itself: it held no job.
        if child.returncode == -signal.SIGTERM:
            return 0
        return child.returncode

    def _serve_metrics(self) -> Any:
        if self.metrics_dir is None or self.settings.metrics_port is None:
            return None
        from wsupload.worker import metrics

        try:
            endpoint = metrics.serve_children(self.settings, self.metrics_dir, self.children_pids)
        except OSError as exc:
            log.error(
                "metrics: cannot listen on %s:%d (%s); this worker runs without metrics",
                self.settings.metrics_addr,
                self.settings.metrics_port,
                exc.strerror or exc,
            )
            return None
        log.info("metrics: http://%s:%d/metrics (the sum of every child)", self.settings.metrics_addr, endpoint.port)
        return endpoint

    def children_pids(self) -> list[int]:
        with self.lock:
            return [c.process.pid for c in self.children if c.alive and c.process]

    def _stop_everything(self) -> None:
        """On any exit of ``run``: no child left behind, the record deleted, the metrics files removed."""
        for child in self.children:
            if child.alive and child.process and child.process.poll() is None:
                child.process.terminate()
                child.process.wait()
        if self.beat is not None:
            self.beat.stop()
        if self.endpoint is not None:
            self.endpoint.stop()
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)


def metrics_dir_owner(name: str) -> int | None:
    """The parent pid a metrics directory's name carries (``wsupload-metrics-<pid>-<random>``), else None."""
    if not name.startswith(METRICS_DIR_PREFIX):
        return None
    pid, _, rest = name[len(METRICS_DIR_PREFIX) :].partition("-")
    return int(pid) if pid.isdigit() and rest else None


def remove_orphan_metrics_dirs(tempdir: str) -> int:
    """Remove the metrics directories of parents no longer running (a SIGKILL skips their cleanup); how many.

    A directory whose pid runs (even if reused by another program) is left: at worst it stays, never
    a live parent's removed. Only this user's directories can be removed (mkdtemp makes them 0700).
    """
    removed = 0
    with contextlib.suppress(OSError), os.scandir(tempdir) as entries:
        for entry in entries:
            pid = metrics_dir_owner(entry.name)
            if pid is None or pid == os.getpid() or not entry.is_dir(follow_symlinks=False) or _running(pid):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += not os.path.exists(entry.path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def mark_dead(pid: int, directory: str) -> None:
    """prometheus_client's cleanup for a child that ended: its live gauges leave the sum (its counters stay)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def _version() -> str:
    from wsupload.worker.heartbeat import package_version

    return package_version()


class SupervisorBeat:
    """Writes the parent's record every beat, and at once when poked (a child exited or started); deletes it at stop."""

    def __init__(self, client: Any, snapshot: Callable[[], SupervisorRecord], interval: float = BEAT_INTERVAL) -> None:
        self.client = client
        self.snapshot = snapshot
        self.interval = interval
        self._wake = threading.Event()
        self._done = threading.Event()
        self._streak = FailureStreak(
            log,
            "heartbeat: cannot write the parent's record (%s: %s); trying again every %g s",
            "heartbeat: writing the parent's record again",
        )
        self._thread = threading.Thread(target=self._run, name="wsupload-parent-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        # From a signal handler too: Event.set takes a lock the handler's own thread never holds here.
        self._wake.set()

    def _run(self) -> None:
        while not self._done.is_set():
            self._wake.clear()
            try:
                self.write(self.snapshot())
                self._streak.succeeded()
            except Exception as exc:
                self._streak.failed(exc, self.interval)
            self._wake.wait(self.interval)

    def write(self, record: SupervisorRecord) -> None:
        now = utcnow()
        doc = {**record.to_json(), "last_beat": isoformat(now), "beat_interval": self.interval}
        pipe = self.client.pipeline(transaction=True)
        pipe.set(keys.supervisor(record.name), json.dumps(doc), px=int(RECORD_TTL * 1000))
        pipe.zadd(keys.SUPERVISORS, {record.name: now.timestamp()})
        pipe.zremrangebyscore(keys.SUPERVISORS, "-inf", now.timestamp() - INDEX_HORIZON)
        pipe.execute()

    def stop(self) -> None:
        self._done.set()
        self._wake.set()
        self._thread.join(timeout=self.interval * 2)
        name = self.snapshot().name
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(keys.supervisor(name))
            pipe.zrem(keys.SUPERVISORS, name)
            pipe.execute()
        except Exception as exc:
            log.warning("heartbeat: could not delete the parent's record (%s: %s)", type(exc).__name__, exc)


def setup_logging(settings: Settings, loglevel: str) -> None:
    """The parent's own lines on stderr: as JSON lines (``WSUPLOAD_LOG_FORMAT=json``) or Celery's text shape."""
    log.setLevel(getattr(logging, loglevel.upper(), logging.INFO))
    log.propagate = False
    log.addHandler(logging.StreamHandler(sys.stderr))
    if settings.log_format == logs.JSON:
        logs.use_json(log)
    else:
        log.handlers[0].setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s/Parent] %(message)s"))


def cpu_count() -> tuple[int | None, float | None]:
    """This process's CPU affinity (CPUs it may run on) and its cgroup quota in cores (None: no limit)."""
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    return affinity, supervisor.cgroup_quota(*_cgroup_files())


def _cgroup_files() -> tuple[str | None, str | None, str | None]:
    def read(path: str) -> str | None:
        try:
            with open(path, encoding="ascii") as f:
                return f.read()
        except (OSError, ValueError):
            return None

    own = ""
    for line in (read("/proc/self/cgroup") or "").splitlines():
        if line.startswith("0::"):
            own = line[3:].strip().strip("/")
    for folder in (f"/sys/fs/cgroup/{own}".rstrip("/"), "/sys/fs/cgroup"):
        cpu_max = read(f"{folder}/cpu.max")
        if cpu_max is not None:
            return cpu_max, None, None
    return None, read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def processes_wanted(setting: int | str) -> int:
    """The processes ``--processes``/``WSUPLOAD_PROCESSES`` ask for (``auto``: ``cpu_count``'s smaller figure)."""
    if setting == supervisor.AUTO:
        return supervisor.auto_processes(*cpu_count())
    return int(setting)
