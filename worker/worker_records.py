"""Workers' heartbeat records, as their readers see them: which workers are live, what they run, is one healthy.

``worker.heartbeat`` writes one record per worker (``keys.worker(name)``, JSON) every
``BEAT_INTERVAL`` with a TTL of ``MISSED_BEATS`` beats, and its name in the index
``keys.WORKERS``; ``wsupload workers`` and ``wsupload health`` read them here (a
ZRANGE and one MGET). The policy, ``is_fresh`` and ``judge``, is pure: it tests
without Redis or a clock.

The parent of ``wsupload worker --processes N`` (``worker.parent``) writes a
``SupervisorRecord`` the same way (``keys.supervisor(name)``, index ``keys.SUPERVISORS``),
at each beat and at once whenever a child exits or starts: its children's states, so
``health`` fails while a child is down longer than its restart takes (``CHILD_DOWN_GRACE``)
and ``workers`` lists the children under their parent. Each child beats its own record.

Two clocks, on purpose: whether a record exists is Redis's to say (its TTL), so a
listing across hosts never hides a live worker because of clock skew; the age of
``last_beat`` is read with the reader's clock, which is the worker's own only on its
host, where ``health`` runs and may hold it to ``--max-age``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from wsupload.tasks.store import keys
from wsupload.worker.beat_timing import BEAT_INTERVAL as BEAT_INTERVAL  # re-exported: the beat's timing
from wsupload.worker.beat_timing import MISSED_BEATS as MISSED_BEATS
from wsupload.worker.beat_timing import RECORD_TTL as RECORD_TTL

if TYPE_CHECKING:
    import redis  # loaded by connect(): reading the records' classes does not pay for redis-py

INDEX_HORIZON = 3600.0
"""Names in the index silent this long are pruned by the beating workers (their records expired long before)."""
RUNNING, STOPPING = "running", "stopping"
RESTARTING = "restarting"
"""A supervised child that exited and waits for its restart (the parent's record)."""
CHILD_DOWN_GRACE = 1.0
"""Seconds a crashed child may be down before ``health`` fails: the parent restarts it within this,
unless it keeps crashing (``worker.supervisor.restart_delay``)."""


@dataclass(frozen=True, kw_only=True)
class WorkerRecord:
    """One worker's heartbeat: who it is and what it runs (the stored JSON has exactly these fields, in this order).

    ``worker.heartbeat`` builds one as the worker starts, with what does not change
    while it runs, and writes a copy at each beat with the rest filled in.
    """

    name: str
    """Celery's node name (``wsupload-<pid>@<host>``)."""
    host: str
    pid: int
    pool: str
    concurrency: int
    version: str
    queues: tuple[str, ...]
    state: str = RUNNING
    """``running``, or ``stopping`` once asked to shut down (running jobs may still finish)."""
    jobs: tuple[str, ...] = ()
    """Job ids it is uploading now."""
    waiting: tuple[str, ...] = ()
    """Job ids it has taken from the queue and not started yet."""
    other_tasks: tuple[str, ...] = ()
    """Names of other tasks it runs now (``wsupload.scan``, ``wsupload.callback``)."""
    started_at: str
    last_beat: str = ""
    """When it was written (``""`` only before the first beat)."""
    beat_interval: float = BEAT_INTERVAL

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        for field in ("queues", "jobs", "waiting", "other_tasks"):
            doc[field] = list(doc[field])
        return doc

    @classmethod
    def from_json(cls, doc: object) -> WorkerRecord | None:
        """The record ``doc`` holds, or None if it is not one (fields are only ever added: extras are ignored)."""
        if not isinstance(doc, dict):
            return None
        texts = [doc.get(f) for f in ("name", "host", "pool", "version", "state", "started_at", "last_beat")]
        lists = [doc.get(f) for f in ("queues", "jobs", "waiting", "other_tasks")]
        pid, concurrency, interval = doc.get("pid"), doc.get("concurrency"), doc.get("beat_interval", BEAT_INTERVAL)
        if not all(isinstance(v, str) for v in texts):
            return None
        if not all(isinstance(v, list) and all(isinstance(i, str) for i in v) for v in lists):
            return None
        if type(pid) is not int or type(concurrency) is not int or not isinstance(interval, int | float):
            return None
        name, host, pool, version, state, started_at, last_beat = (str(v) for v in texts)
        queues, jobs, waiting, other_tasks = (tuple(v) for v in lists if isinstance(v, list))
        return cls(
            name=name,
            host=host,
            pid=pid,
            pool=pool,
            concurrency=concurrency,
            version=version,
            queues=queues,
            state=state,
            jobs=jobs,
            waiting=waiting,
            other_tasks=other_tasks,
            started_at=started_at,
            last_beat=last_beat,
            beat_interval=float(interval),
        )


def beat_age(record: WorkerRecord, now: datetime) -> float | None:
    """Seconds since the record's last beat by ``now``'s clock (never below 0); None if unreadable."""
    try:
        last = datetime.fromisoformat(record.last_beat)
    except ValueError:
        return None
    if last.tzinfo is None:
        return None
    return max(0.0, (now - last).total_seconds())


def is_fresh(record: WorkerRecord, now: datetime, max_age: float) -> bool:
    """Whether the worker beat within ``max_age`` seconds of ``now``."""
    age = beat_age(record, now)
    return age is not None and age <= max_age


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    message: str


def judge(
    records: Iterable[WorkerRecord], now: datetime, max_age: float, *, host: str, name: str | None = None
) -> Verdict:
    """``wsupload health``: healthy when a worker on ``host`` (or the one named) beat within ``max_age`` and runs."""
    which = f"worker {name}" if name else f"a worker on host {host}"
    mine = [r for r in records if (r.name == name if name else r.host == host)]
    if not mine:
        return Verdict(False, f"no heartbeat from {which}: none is running, or it stopped or died")
    fresh = [r for r in mine if is_fresh(r, now, max_age)]
    running = [r for r in fresh if r.state == RUNNING]
    if running:
        best = min(running, key=lambda r: beat_age(r, now) or 0.0)
        return Verdict(True, f"ok: {best.name} beat {beat_age(best, now):.1f} s ago, {len(best.jobs)} job(s) running")
    if fresh:
        return Verdict(False, f"{fresh[0].name} is shutting down")
    newest = min(mine, key=lambda r: beat_age(r, now) or float("inf"))
    age = beat_age(newest, now)
    when = "at an unreadable time" if age is None else f"{age:.1f} s ago"
    return Verdict(False, f"the last heartbeat of {newest.name} was {when} (--max-age {max_age:g} s)")


@dataclass(frozen=True, kw_only=True)
class ChildState:
    """One child of a supervising parent, as its record says it."""

    index: int
    """1 for the first child; part of its node name (``wsupload-<parent pid>-<index>@<host>``)."""
    name: str
    pid: int | None
    """None while it is down."""
    state: str
    """``running`` (its process is alive) or ``restarting`` (it exited; started again at ``restart_at``)."""
    since: str
    """When it was started (running) or exited (restarting)."""
    restarts: int = 0
    last_exit: str = ""
    """How it last ended (``killed by SIGKILL``, ``exited with code 1``), ``""`` before its first exit."""
    restart_at: str = ""

    @classmethod
    def from_json(cls, doc: object) -> ChildState | None:
        if not isinstance(doc, dict):
            return None
        index, pid, restarts = doc.get("index"), doc.get("pid"), doc.get("restarts", 0)
        texts = [doc.get(f, "") for f in ("name", "state", "since", "last_exit", "restart_at")]
        if type(index) is not int or type(restarts) is not int or not (pid is None or type(pid) is int):
            return None
        if not all(isinstance(v, str) for v in texts):
            return None
        name, state, since, last_exit, restart_at = (str(v) for v in texts)
        return cls(
            index=index,
            name=name,
            pid=pid,
            state=state,
            since=since,
            restarts=restarts,
            last_exit=last_exit,
            restart_at=restart_at,
        )


@dataclass(frozen=True, kw_only=True)
class SupervisorRecord:
    """The heartbeat of a ``wsupload worker`` parent: who it is, and each child's state."""

    name: str
    """``wsupload-<pid>@<host>``; its children are ``wsupload-<pid>-<k>@<host>``."""
    host: str
    pid: int
    version: str
    concurrency: int
    """The worker's total, split over the children."""
    state: str = RUNNING
    children: tuple[ChildState, ...] = ()
    started_at: str
    last_beat: str = ""
    beat_interval: float = BEAT_INTERVAL

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["children"] = [asdict(child) for child in self.children]
        return doc

    @classmethod
    def from_json(cls, doc: object) -> SupervisorRecord | None:
        if not isinstance(doc, dict):
            return None
        texts = [doc.get(f) for f in ("name", "host", "version", "state", "started_at", "last_beat")]
        pid, concurrency, interval = doc.get("pid"), doc.get("concurrency"), doc.get("beat_interval", BEAT_INTERVAL)
        raw_children = doc.get("children")
        if not all(isinstance(v, str) for v in texts) or not isinstance(raw_children, list):
            return None
        if type(pid) is not int or type(concurrency) is not int or not isinstance(interval, int | float):
            return None
        children = [ChildState.from_json(child) for child in raw_children]
        name, host, version, state, started_at, last_beat = (str(v) for v in texts)
        return cls(
            name=name,
            host=host,
            pid=pid,
            version=version,
            concurrency=concurrency,
            state=state,
            children=tuple(child for child in children if child is not None),
            started_at=started_at,
            last_beat=last_beat,
            beat_interval=float(interval),
        )


def _age(text: str, now: datetime) -> float | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return None if moment.tzinfo is None else max(0.0, (now - moment).total_seconds())


def children_down(
    supervisors: Iterable[SupervisorRecord], now: datetime, *, host: str, name: str | None = None
) -> list[str]:
    """``health``: a line per child of a running parent on ``host`` (or the child or parent named) that is down
    longer than ``CHILD_DOWN_GRACE``: a crash its parent has not restarted within a second (it keeps crashing)."""
    problems = []
    for parent in supervisors:
        named = name is not None and (parent.name == name or any(c.name == name for c in parent.children))
        if (name is not None and not named) or (name is None and parent.host != host) or parent.state != RUNNING:
            continue
        for child in parent.children:
            if child.state != RESTARTING or (name is not None and name not in (child.name, parent.name)):
                continue
            down = _age(child.since, now)
            if down is None or down > CHILD_DOWN_GRACE:
                when = "for an unknown time" if down is None else f"for {down:.1f} s"
                retry = f", restart at {child.restart_at}" if child.restart_at else ""
                problems.append(
                    f"{child.name} (child {child.index} of {parent.name}) is down {when}:"
                    f" {child.last_exit or 'exited'}, {child.restarts} restart(s){retry}"
                )
    return problems


def judge_all(
    records: Iterable[WorkerRecord],
    supervisors: Iterable[SupervisorRecord],
    now: datetime,
    max_age: float,
    *,
    host: str,
    name: str | None = None,
) -> Verdict:
    """``judge``, then unhealthy if a supervised child on ``host`` (or the one named) is down past its restart."""
    fresh_parents = [s for s in supervisors if is_fresh_beat(s.last_beat, now, max_age)]
    down = children_down(fresh_parents, now, host=host, name=name)
    if down:
        return Verdict(False, "; ".join(down))
    named = next((s for s in fresh_parents if s.name == name), None)
    if named is not None:  # a parent by name: healthy as its children are
        kids = {child.name for child in named.children}
        return judge([r for r in records if r.name in kids], now, max_age, host=named.host)
    return judge(records, now, max_age, host=host, name=name)


def is_fresh_beat(last_beat: str, now: datetime, max_age: float) -> bool:
    age = _age(last_beat, now)
    return age is not None and age <= max_age


def read_supervisors(client: redis.Redis) -> list[SupervisorRecord]:
    """Every parent's record still in Redis, by name."""
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in client.zrange(keys.SUPERVISORS, 0, -1)]
    if not names:
        return []
    found = []
    for raw in client.mget([keys.supervisor(n) for n in names]):
        if isinstance(raw, bytes | str):
            try:
                record = SupervisorRecord.from_json(json.loads(raw))
            except ValueError:
                record = None
            if record is not None:
                found.append(record)
    return sorted(found, key=lambda r: r.name)


def render_supervisors(supervisors: Sequence[SupervisorRecord], now: datetime) -> list[str]:
    """``wsupload workers``: after the workers, a line per parent and one per child with its state."""
    lines = []
    for parent in supervisors:
        age = _age(parent.last_beat, now)
        beat = "beat at an unreadable time" if age is None else f"beat {age:.1f} s ago"
        stopping = "  stopping" if parent.state == STOPPING else ""
        lines.append(
            f"{parent.name}  {parent.host}/{parent.pid}  parent of {len(parent.children)}"
            f" (×{parent.concurrency} in all)  {beat}  v{parent.version}{stopping}"
        )
        for child in parent.children:
            pid = f"pid {child.pid}" if child.pid is not None else "down"
            extra = f"  {child.restarts} restart(s), last {child.last_exit}" if child.restarts else ""
            lines.append(f"    child {child.index}  {child.name}  {pid}  {child.state}{extra}")
    return lines


def connect(url: str, timeout: float) -> redis.Redis:
    """A client that gives up after ``timeout`` and never retries by itself: probes and beats must not hang."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from wsupload.tasks.store.connections import redis_client

    return redis_client(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))


def read_records(client: redis.Redis, chunk: int = 1000) -> list[WorkerRecord]:
    """Every record still in Redis (live workers), by name; names whose record expired are skipped."""
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in client.zrange(keys.WORKERS, 0, -1)]
    records = []
    for start in range(0, len(names), chunk):
        for raw in client.mget([keys.worker(n) for n in names[start : start + chunk]]):
            record = _parse(raw)
            if record is not None:
                records.append(record)
    return sorted(records, key=lambda r: r.name)


def _parse(raw: object) -> WorkerRecord | None:
    if not isinstance(raw, bytes | str):
        return None
    try:
        return WorkerRecord.from_json(json.loads(raw))
    except ValueError:  # not JSON (UnicodeDecodeError is one too)
        return None


def render(records: Sequence[WorkerRecord], now: datetime, paused: frozenset[str] = frozenset()) -> list[str]:
    """``wsupload workers``: a line per worker, then the jobs it holds, one per line, and the queues
    it serves that are ``paused`` (fleet-wide: it takes none of their jobs)."""
    if not records:
        return ["no live workers"]
    lines = []
    for r in records:
        age = beat_age(r, now)
        beat = "beat at an unreadable time" if age is None else f"beat {age:.1f} s ago"
        counts = f"{len(r.jobs)} running" + (f", {len(r.waiting)} waiting" if r.waiting else "")
        stopping = "  stopping" if r.state == STOPPING else ""
        lines.append(f"{r.name}  {r.host}/{r.pid}  {r.pool}×{r.concurrency}  {counts}  {beat}  v{r.version}{stopping}")
        lines += [f"    running  {job}" for job in r.jobs]
        lines += [f"    waiting  {job}" for job in r.waiting]
        lines += [f"    task     {task}" for task in r.other_tasks]
        lines += [f"    paused   {queue} (takes none of its jobs)" for queue in r.queues if queue in paused]
    return lines
