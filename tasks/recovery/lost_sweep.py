"""The lost-message sweep: a job that is in no queue, no worker's hands and has no outcome is queued again.

A job's place in its queue's line (``tasks.recovery.job_index``) says where it stands: placed
below the highest place a worker has taken, it was either pushed to the front of
the line since (a restore or a put-back: it waits at the front, where the sweep
looks for it) or taken by a BRPOP whose record Redis never got — lost. The sweep,
per queue list (``Settings.queue`` and ``bulk_queue``):

1. reads, in one script (``lost_sweep_snapshot.lua``), the highest place taken, the
   list's length and the jobs placed below it (all placed jobs when the list is
   empty), at most ``LIMIT``;
2. if there are any and the list is not empty, reads the front of the line to
   find those still waiting there;
3. reads their documents and lets ``plan`` decide: a job without a document, or
   finished, leaves the line's records; one still waiting is accounted for; any
   other is a *suspect* from the first time it is seen (Redis's clock), and a
   suspect for ``grace`` seconds or more is put back at the back of its line with
   its message built again from its document (``tasks.wire.encode``) — by one script
   (``lost_sweep_redeliver.lua``) that first checks its place is the one the sweep
   read, so a job taken, pushed or put back meanwhile is left alone.

Cheap at any backlog: with nothing lost the sweep reads a few keys per queue
(the sorted set answers "below the highest place taken" without reading the jobs
behind it), and each sweep handles at most ``LIMIT`` jobs per queue. One sweeper of
a queue at a time: ``keys.sweep_lock(queue)`` is taken with ``SET NX PX`` for one
interval and left to expire, so a fleet sweeps each queue once per interval (per
queue, so workers serving other queues never starve it); the place check keeps two
sweeps that overlap anyway from both putting a job back. The sweep never waits for
anything: the worker's thread (``worker.sweeper``) runs it and carries on, whatever
it raises.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import redis

from wsupload.tasks.observe import telemetry
from wsupload.tasks.observe.bounds import clip
from wsupload.tasks.store import keys, lua
from wsupload.tasks.store.results import JobDoc, ResultStore, is_end, text
from wsupload.tasks.wire import encode
from wsupload.tasks.wire.decode import jobs_named

log = logging.getLogger(__name__)

LIMIT = 1000
"""Jobs placed below the highest place taken that one sweep looks at, per queue."""
FRONT_READS = (16, 128, 1024)
"""How much of the front of a line the sweep reads to find jobs waiting there: a little, then more if needed."""


@dataclass(frozen=True)
class Candidate:
    """A job placed below the highest place taken from its queue."""

    job_id: str
    queue: str
    place: float
    doc: JobDoc | None
    waiting: bool | None
    """Seen waiting at the front of its line; None: the front was too long to tell."""


@dataclass
class Plan:
    drop: list[Candidate] = field(default_factory=list)
    """No document or finished: out of the line's records (and of the suspects)."""
    suspect: list[str] = field(default_factory=list)
    """Seen unaccounted for the first time."""
    redeliver: list[tuple[Candidate, float]] = field(default_factory=list)
    """Suspects for ``grace`` or more, with how long they have been."""
    forget: list[str] = field(default_factory=list)
    """Suspects accounted for after all."""


def plan(
    candidates: Sequence[Candidate], suspects: Mapping[str, float], now: float, grace: float, complete: bool
) -> Plan:
    """What one sweep of a queue does. Pure: ``suspects`` maps job → when first seen; ``complete``: under ``LIMIT``.

    Only a complete sweep forgets suspects it did not meet: one that looked at the
    first ``LIMIT`` jobs of a queue cannot tell the rest are accounted for.
    """
    out = Plan()
    met: set[str] = set()
    for c in candidates:
        met.add(c.job_id)
        if c.doc is None or is_end(c.doc["status"]) or not c.doc.get("source"):
            out.drop.append(c)
        elif c.waiting:
            if c.job_id in suspects:
                out.forget.append(c.job_id)
        elif c.waiting is None:
            continue
        elif c.job_id not in suspects:
            out.suspect.append(c.job_id)
        elif now - suspects[c.job_id] >= grace:
            out.redeliver.append((c, now - suspects[c.job_id]))
    if complete:
        out.forget += [job for job in suspects if job not in met]
    return out


@dataclass(frozen=True)
class Report:
    """What a sweep did: jobs it looked at, dropped from the lines' records, suspected, put back."""

    candidates: int = 0
    dropped: int = 0
    suspected: int = 0
    redelivered: tuple[str, ...] = ()

    def __add__(self, other: Report) -> Report:
        return Report(
            self.candidates + other.candidates,
            self.dropped + other.dropped,
            self.suspected + other.suspected,
            self.redelivered + other.redelivered,
        )


def jobs_of(raw: bytes | str) -> list[str]:
    """The jobs a queued upload message carries (one, or a bulk message's), by its headers."""
    try:
        headers = json.loads(raw).get("headers")
    except (ValueError, AttributeError):
        return []
    return jobs_named(headers)


class Sweep:
    """Sweeps ``queues`` (list keys in ``client``'s Redis); documents are read through ``store``."""

    def __init__(
        self,
        client: redis.Redis,
        store: ResultStore,
        queues: Sequence[str],
        *,
        grace: float,
        interval: float,
        owner: str = "",
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.queues = tuple(queues)
        self.grace = grace
        self.interval = interval
        self.owner = owner
        """Written in the lock: which worker sweeps."""
        self.clock = clock
        """Seconds; None: Redis's clock, the same for every worker whatever their own say."""
        self._snapshot = lua.script(client, "lost_sweep_snapshot")
        self._redeliver = lua.script(client, "lost_sweep_redeliver")

    def sweep(self) -> Report | None:
        """One sweep of each queue no other sweeper holds; None when others held them all."""
        lock_ms = max(1, int(self.interval * 1000))
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        for queue in self.queues:
            pipe.set(keys.sweep_lock(queue), self.owner or "sweeper", nx=True, px=lock_ms)
        (seconds, micros), *locked = pipe.execute()
        mine = [queue for queue, got in zip(self.queues, locked, strict=True) if got]
        if not mine:
            return None
        now = self.clock() if self.clock else seconds + micros / 1e6
        pipe = self.client.pipeline(transaction=False)
        for queue in mine:
            self._snapshot(keys=[queue, keys.pending(queue), keys.last_taken(queue)], args=[LIMIT], client=pipe)
            pipe.hgetall(keys.suspects(queue))
        replies = pipe.execute()
        report = Report()
        for queue, (taken, length, flat), suspects in zip(mine, replies[::2], replies[1::2], strict=True):
            placed = [(text(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]
            if placed or suspects:
                report += self._sweep_queue(queue, taken, length, placed, suspects, now)
        return report

    def _sweep_queue(
        self,
        queue: str,
        taken: bytes | None,
        length: int,
        placed: list[tuple[str, float]],
        raw_suspects: Mapping[bytes, bytes],
        now: float,
    ) -> Report:
        waiting: set[str] | None = set()
        if placed and length > 0:
            assert taken is not None  # the snapshot returns jobs of a non-empty list only below it
            waiting = self.waiting_at_front(queue, float(taken))
        docs = self.store.get_many([job for job, _ in placed])
        candidates = [
            Candidate(job, queue, place, doc, None if waiting is None else job in waiting)
            for (job, place), doc in zip(placed, docs, strict=True)
        ]
        suspects = {text(job): float(since) for job, since in raw_suspects.items()}
        decided = plan(candidates, suspects, now, self.grace, complete=len(placed) < LIMIT)
        return self._carry_out(queue, decided, now, len(candidates))

    def waiting_at_front(self, queue: str, taken: float) -> set[str] | None:
        """Jobs placed below ``taken`` that wait at the front of ``queue``; None if more of them than we read.

        The line is in place order from the front, so they are all ahead of the
        first job placed at ``taken`` or above. Each read is one LRANGE, a snapshot.
        """
        for size in FRONT_READS:
            raw = self.client.lrange(queue, -size, -1)
            jobs = [job for item in reversed(raw) for job in jobs_of(item)]  # front first
            places = dict(zip(jobs, self.client.zmscore(keys.pending(queue), jobs), strict=True)) if jobs else {}
            waiting: set[str] = set()
            for job in jobs:
                place = places.get(job)
                if place is None:
                    continue
                if place >= taken:
                    return waiting
                waiting.add(job)
            if len(raw) < size:
                return waiting
        return None

    def _carry_out(self, queue: str, decided: Plan, now: float, seen: int) -> Report:
        """One round trip: the records, then each redelivery (a script that checks the job's place first)."""
        pipe = self.client.pipeline(transaction=False)
        if decided.drop:
            pipe.zrem(keys.pending(queue), *(c.job_id for c in decided.drop))
        gone = [c.job_id for c in decided.drop] + decided.forget
        if gone:
            pipe.hdel(keys.suspects(queue), *gone)
        for job in decided.suspect:
            pipe.hsetnx(keys.suspects(queue), job, repr(now))
        line = [queue, keys.pending(queue), keys.place_counter(queue), keys.suspects(queue)]
        for c, _ in decided.redeliver:
            self._redeliver(keys=line, args=[c.job_id, repr(c.place), message_of(c)], client=pipe)
        replies = pipe.execute()
        redelivered = []
        # 0: taken, pushed or put back since the sweep read its place; left alone.
        for (c, lost_for), pushed in zip(
            decided.redeliver, replies[len(replies) - len(decided.redeliver) :], strict=True
        ):
            if pushed:
                redelivered.append(c.job_id)
                telemetry.swept_back()
                log.warning(
                    "sweep: job %s was in no queue, no worker's hands and had no outcome for %.0f s or more; "
                    "it is back on queue %s",
                    clip(c.job_id),
                    lost_for,
                    clip(queue),
                )
        return Report(seen, len(decided.drop), len(decided.suspect), tuple(redelivered))


def message_of(c: Candidate) -> str:
    """The job's message, built again from its document as the producer built it."""
    assert c.doc is not None
    options = c.doc.get("options")
    return encode.upload_message(c.job_id, c.doc["source"], c.queue, options if isinstance(options, dict) else None)
