"""``wsupload stats``: the fleet at a glance — queue depths, jobs in flight, jobs ended lately, live workers.

It only reads, and needs ``REDIS_URL`` (and the broker's URL when separate), never
the API key: the queue lists (the broker: kombu keeps a list per queue and priority),
the heartbeat records (``worker.worker_records``: what each live worker runs), and the
counters each job's terminal write increments in the same Lua call
(``tasks.store.fencing``): ``keys.stats(minute)``, a hash of ``<status>:<second>`` → count,
kept ``keys.STATS_TTL``. A window of the last N seconds sums the seconds it covers,
so "the last minute" means the last 60 s. Times are the workers' clocks for the
counters and the reader's for the window: hosts are expected to keep time (NTP).

Reading is one pipeline per Redis; ``count_ended``, ``render`` and ``watch`` are pure
(clock, sleep and output passed in), so they test without Redis.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import IO, Any

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel

from wsupload.config.settings import Settings
from wsupload.tasks.store import keys, pauses
from wsupload.tasks.store.results import CANCELLED, FAILED, SUCCEEDED, isoformat
from wsupload.worker import worker_records

WINDOWS = (("last_minute", 60), ("last_hour", 3600))
"""The windows shown, by name, in seconds; the longest must stay within ``keys.STATS_TTL``."""
ENDED = (SUCCEEDED, FAILED, CANCELLED)
ALWAYS_SHOWN = (SUCCEEDED, FAILED)
"""The ends the text shows at 0 too; another (``cancelled``) is shown once a window counts one."""
CLEAR = "\x1b[H\x1b[2J"
"""ANSI: cursor home, clear the screen (``--watch`` redraws in place)."""


@dataclass(frozen=True)
class Queue:
    role: str
    """``interactive`` (``WSUPLOAD_QUEUE``) or ``bulk`` (``WSUPLOAD_BULK_QUEUE``)."""
    name: str
    depth: int
    """Messages waiting on it, not yet taken by a worker."""
    paused: bool = False
    """Paused fleet-wide (``wsupload pause``): workers take none of its jobs until it is resumed."""


@dataclass(frozen=True)
class Snapshot:
    at: datetime
    queues: tuple[Queue, ...]
    ended: dict[str, dict[str, int]]
    """Window name → status → jobs that ended so within it."""
    workers: tuple[worker_records.WorkerRecord, ...]

    @property
    def running(self) -> int:
        return sum(len(w.jobs) for w in self.workers)

    @property
    def waiting(self) -> int:
        return sum(len(w.waiting) for w in self.workers)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": isoformat(self.at),
            "queues": [{"role": q.role, "name": q.name, "depth": q.depth, "paused": q.paused} for q in self.queues],
            "jobs": {"running": self.running, "waiting": self.waiting},
            "ended": self.ended,
            "workers": [w.to_json() for w in self.workers],
        }


def queue_keys(queue: str) -> list[str]:
    """The Redis lists kombu keeps a queue in: one per priority step (a priority-0 message in the plain one)."""
    return [queue if step == 0 else f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS]


def minutes(now: float, longest: int) -> list[int]:
    """The minutes whose counters a window of ``longest`` seconds ending at ``now`` may touch, oldest first."""
    last = int(now) // 60
    return list(range((int(now) - longest) // 60, last + 1))


def count_ended(buckets: Mapping[int, Mapping[Any, Any]], now: float, window: int) -> dict[str, int]:
    """Jobs that ended in the ``window`` seconds up to ``now``, by status, from the minutes' counters.

    ``buckets``: minute → its hash as Redis returns it (bytes or text). A field
    that is not ``<status>:<second>`` with a known status, or a count that is not a
    number, is skipped: the hash is in Redis, where anything may write.
    """
    counts = dict.fromkeys(ENDED, 0)
    end = int(now)
    for minute, fields in buckets.items():
        for field, value in fields.items():
            status, _, second = _text(field).partition(":")
            if status not in counts or not (second.isascii() and second.isdigit()):
                continue
            moment = minute * 60 + int(second)
            if end - window < moment <= end:
                try:
                    counts[status] += int(_text(value))
                except ValueError:
                    continue
    return counts


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def read(
    settings: Settings,
    results: redis.Redis,
    broker: redis.Redis,
    now: datetime,
    depths: Callable[[list[str]], list[int]] | None = None,
) -> Snapshot:
    """``stats`` as of ``now``: one pipeline on the broker, one on the results Redis, and the worker records.

    ``depths``: how the queue depths are read when the broker is not Redis (RabbitMQ).
    """
    roles = (("interactive", settings.queue), ("bulk", settings.bulk_queue))
    if depths is not None:
        counted = depths([name for _, name in roles])
        queues = tuple(Queue(role, name, count) for (role, name), count in zip(roles, counted, strict=True))
    else:
        pipe = broker.pipeline(transaction=False)
        for _, name in roles:
            for key in queue_keys(name):
                pipe.llen(key)
        lengths = iter(pipe.execute())
        queues = tuple(Queue(role, name, sum(next(lengths) for _ in PRIORITY_STEPS)) for role, name in roles)

    unix = now.timestamp()
    wanted = minutes(unix, max(seconds for _, seconds in WINDOWS))
    pipe = results.pipeline(transaction=False)
    for minute in wanted:
        pipe.hgetall(keys.stats(minute))
    pipe.smembers(keys.PAUSED)
    *found, paused_raw = pipe.execute()
    buckets = dict(zip(wanted, found, strict=True))
    paused = pauses.read(paused_raw)
    queues = tuple(replace(q, paused=q.name in paused) for q in queues)
    ended = {name: count_ended(buckets, unix, seconds) for name, seconds in WINDOWS}
    return Snapshot(now, queues, ended, tuple(worker_records.read_records(results)))


def render(snapshot: Snapshot) -> list[str]:
    """The text ``stats`` prints: a line per figure, then the live workers as ``wsupload workers`` shows them."""
    queues = "    ".join(f"{q.role} {q.name}: {q.depth}{' (paused)' if q.paused else ''}" for q in snapshot.queues)
    ended = "    ".join(
        f"{name.replace('_', ' ')}: "
        + ", ".join(f"{n} {status}" for status, n in counts.items() if n or status in ALWAYS_SHOWN)
        for name, counts in snapshot.ended.items()
    )
    lines = [
        f"queued     {queues}",
        f"in flight  {snapshot.running} running, {snapshot.waiting} waiting (taken by a worker, not started)",
        f"ended      {ended}",
        f"workers    {len(snapshot.workers)} live",
    ]
    if snapshot.workers:
        paused = frozenset(q.name for q in snapshot.queues if q.paused)
        lines += [f"  {line}" for line in worker_records.render(snapshot.workers, snapshot.at, paused)]
    return lines


def watch(
    frame: Callable[[], Sequence[str]],
    out: IO[str],
    interval: float,
    *,
    as_json: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    frames: int | None = None,
) -> None:
    """Write ``frame()`` every ``interval`` seconds until Ctrl-C (or ``frames`` of them): redrawn in place, or as
    one JSON line per frame. Returns normally on Ctrl-C: stopping a watch is how it is meant to end."""
    shown = 0
    try:
        while frames is None or shown < frames:
            lines = frame()
            if as_json:
                out.write("".join(f"{line}\n" for line in lines))
            else:
                header = f"every {interval:g} s, Ctrl-C to stop"
                out.write(CLEAR + "\n".join([header, "", *lines]) + "\n")
            out.flush()
            shown += 1
            if frames is None or shown < frames:
                sleep(interval)
    except KeyboardInterrupt:
        if not as_json:
            out.write("\n")


def as_lines(snapshot: Snapshot, as_json: bool) -> list[str]:
    return [json.dumps(snapshot.to_json())] if as_json else render(snapshot)


def unreachable(error: Exception, now: datetime, as_json: bool, retry_in: float) -> list[str]:
    """A frame of ``--watch`` while Redis cannot be read: it says so and keeps trying."""
    message = f"cannot read Redis ({type(error).__name__}: {error}); trying again in {retry_in:g} s"
    return [json.dumps({"at": isoformat(now), "error": message})] if as_json else [message]
