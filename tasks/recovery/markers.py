"""The marker sweep (RabbitMQ as the broker): a job whose message vanished from its queue is published again.

A purge, a ``max-length`` policy or a quorum queue's delivery limit drops messages
and tells no one; the job's document then stays ``queued`` (or ``running`` with no
one holding it) for ever. AMQP cannot browse a queue to see whether a job's
message is still there, and a job may rightly wait behind a long backlog, so the
sweep learns something weaker and sufficient: that the head of the queue has
passed a point.

- **The entered set** (``keys.entered(queue)``): each job wsupload's producers put on
  the queue → the moment (ms, Redis's clock) by which its message is on it: the
  enqueue commit's owed deadline (``enqueue_commit.lua``: by then the producer has
  published it, or the job is still owed and the owed sweep publishes it), moved on
  each time a sweep publishes the job again. A job leaves it in its terminal write
  (``ResultStore(entered=…)``, the same script); the rest (a job cancelled while
  queued, a document expired) are dropped when a marker's round reads them.
- **A marker**: when some entry is older than ``WSUPLOAD_AMQP_MARKER_AGE`` and none is
  outstanding, the sweep records ``{token, sent_at}`` (Redis's clock) in
  ``keys.marker(queue)`` and publishes a ``wsupload.marker`` message
  (``tasks.wire.encode.marker_message``) with confirms. RabbitMQ delivers a queue's
  messages in order, so a worker that meets it (``tasks.marker``, which records
  ``seen_at``) has been handed every message that was ahead of it.
- **The judgement**: ``WSUPLOAD_AMQP_MARKER_SETTLE`` after it was met (the workers'
  heartbeat records list by then what they were handed before it), every entry older
  than ``sent_at`` belongs to a job that should have been delivered. ``judge`` decides
  each: ended or without a document → its entry goes; owed → the owed sweep's
  (``tasks.recovery.early_ack_sweep``); listed by a live worker's heartbeat record
  (``worker.heartbeat``: running, or taken and waiting for a thread), or
  ``running``/``retrying`` on a worker whose record lives → held; any other (``queued``,
  or held by a dead worker) → lost: re-scored to now, then published again from its
  document. Then the marker is cleared and the next round may send another.

A marker not met means nothing: with 100,000 jobs queued behind a stopped worker the
marker waits among them and nothing is published again. One marker at a time per
queue; one that vanished itself (a purge) is replaced once it has gone unmet for
``WSUPLOAD_AMQP_MARKER_AGE`` while the queue holds no ready message (a passive
declare), or after ``WSUPLOAD_AMQP_MARKER_TIMEOUT`` whatever the queue holds. A paused
queue (``tasks.store.pauses``) is skipped: its workers hand their messages back and take none.

It runs in the owed sweep's round, under its per-queue lock, on its cadence
(``worker.sweeper``). ``next_step`` and ``judge`` are pure; ``MarkerSweep`` does the I/O.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from wsupload.tasks.observe import telemetry
from wsupload.tasks.observe.bounds import clip
from wsupload.tasks.store import keys, lua
from wsupload.tasks.store.results import JobDoc, ResultStore, is_end, text
from wsupload.tasks.wire import encode
from wsupload.tasks.wire.amqp_publisher import Publisher

log = logging.getLogger(__name__)

LIMIT = 1000
"""Entries older than a met marker that one round judges, per queue (the rest wait for the next marker)."""

NOTHING, SEND, WAIT, JUDGE, REPLACE, REPLACE_IF_EMPTY = "nothing", "send", "wait", "judge", "replace", "if-empty"
HELD_STATUSES = ("running", "retrying")
"""Statuses of a job a worker is running (retries happen inside the task, never as Celery countdowns)."""


@dataclass(frozen=True)
class Marker:
    """The marker outstanding on a queue (ms, Redis's clock)."""

    token: str
    sent_at: int
    seen_at: int | None = None


def read_marker(raw: Mapping[Any, Any]) -> Marker | None:
    """The marker hash as ``HGETALL`` returns it; None if there is none (or it cannot be read)."""
    fields = {text(k): text(v) for k, v in raw.items()}
    try:
        seen = fields.get("seen_at")
        return Marker(fields["token"], int(fields["sent_at"]), int(seen) if seen else None)
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class Timing:
    """The sweep's settings, in ms."""

    age: int
    """``WSUPLOAD_AMQP_MARKER_AGE``."""
    settle: int
    timeout: int


def next_step(marker: Marker | None, oldest: int | None, now: int, timing: Timing) -> str:
    """What a round does for a queue, given its marker, its oldest entry's score and Redis's clock (ms).

    ``REPLACE_IF_EMPTY``: replace the marker if the queue holds no ready message, else wait.
    """
    if marker is None:
        return SEND if oldest is not None and oldest <= now - timing.age else NOTHING
    if marker.seen_at is not None:
        return JUDGE if now - marker.seen_at >= timing.settle else WAIT
    if now - marker.sent_at >= timing.timeout:
        return REPLACE
    if now - marker.sent_at >= timing.age:
        return REPLACE_IF_EMPTY
    return WAIT


@dataclass(frozen=True)
class Entry:
    """An entry older than a met marker: its job's document, whether it is owed, whether its holder lives."""

    job_id: str
    doc: JobDoc | None
    owed: bool = False
    holder_alive: bool = False
    """The worker the document names has a live heartbeat record."""
    in_hand: bool = False
    """A live worker's heartbeat record lists it, running or taken and waiting for a thread."""


@dataclass
class Verdict:
    drop: list[str] = field(default_factory=list)
    """Ended, or no document to publish it from: the entry goes."""
    held: list[str] = field(default_factory=list)
    """Owed (the owed sweep's), or run by a live worker: left alone."""
    lost: list[tuple[str, JobDoc]] = field(default_factory=list)
    """Its message should have been delivered and no one holds the job: published again."""


def judge(entries: Sequence[Entry]) -> Verdict:
    """Each entry older than a marker that a worker met: dropped, held or lost. Pure."""
    out = Verdict()
    for e in entries:
        if e.doc is None or is_end(e.doc["status"]) or not isinstance(e.doc.get("source"), str):
            out.drop.append(e.job_id)
        elif e.owed or e.in_hand or (e.doc["status"] in HELD_STATUSES and e.holder_alive):
            out.held.append(e.job_id)
        else:
            out.lost.append((e.job_id, e.doc))
    return out


@dataclass(frozen=True)
class Report:
    sent: tuple[str, ...] = ()
    """Queues a marker was sent on."""
    published: tuple[str, ...] = ()
    dropped: int = 0


def now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


class MarkerSweep:
    """Markers through ``queues`` (RabbitMQ, through ``publisher()``), entered sets and documents in ``client``.

    ``ready(queue)``: how many messages wait on the queue (a passive declare), asked only
    of a marker gone unmet for ``timing.age``.
    """

    def __init__(
        self,
        client: redis.Redis,
        store: ResultStore,
        publisher: Callable[[], Publisher],
        ready: Callable[[str], int],
        timing: Timing,
    ) -> None:
        self.client = client
        self.store = store
        self.publisher = publisher
        self.ready = ready
        self.timing = timing
        self._seen = lua.script(client, "markers_seen")

    def sweep(self, queues: Sequence[str]) -> Report:
        """One round over ``queues`` (the caller holds their locks): one round trip when nothing is due."""
        if not queues:
            return Report()
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        pipe.smembers(keys.PAUSED)
        for queue in queues:
            pipe.hgetall(keys.marker(queue))
            pipe.zrange(keys.entered(queue), 0, 0, withscores=True)
        (seconds, micros), paused, *replies = pipe.execute()
        now = int(seconds) * 1000 + int(micros) // 1000
        paused = {text(name) for name in paused}
        sent: list[str] = []
        published: list[str] = []
        dropped = 0
        for queue, raw, oldest in zip(queues, replies[::2], replies[1::2], strict=True):
            if queue in paused:
                continue  # no one consumes it, and its workers handed their messages back: nothing to learn
            marker = read_marker(raw)
            step = next_step(marker, int(oldest[0][1]) if oldest else None, now, self.timing)
            if step == REPLACE_IF_EMPTY:
                step = REPLACE if self.ready(queue) == 0 else WAIT
            if step == JUDGE:
                assert marker is not None
                lost, gone = self.judge_queue(queue, marker)
                published += lost
                dropped += gone
                self.client.delete(keys.marker(queue))
            elif step in (SEND, REPLACE):
                if step == REPLACE:
                    assert marker is not None
                    unmet = (now - marker.sent_at) / 1000
                    log.info("sweep: marker on queue %s unmet for %.0f s; sending another", clip(queue), unmet)
                self.send(queue)
                sent.append(queue)
        return Report(tuple(sent), tuple(published), dropped)

    def send(self, queue: str) -> str:
        """Record a new marker (its ``sent_at`` read from Redis's clock before it is published), then publish it."""
        token = uuid.uuid4().hex
        self.client.hset(keys.marker(queue), mapping={"token": token, "sent_at": now_ms(self.client)})
        self.publisher().publish([encode.marker_message(queue, token)])
        return token

    def seen(self, queue: str, token: str) -> bool:
        """A worker met the marker ``token`` on ``queue``: True if it is the outstanding one (``seen_at`` now)."""
        return bool(self._seen(keys=[keys.marker(queue)], args=[token]))

    def entries(self, queue: str, before: int) -> list[Entry]:
        """Up to ``LIMIT`` entries scored below ``before``, with their documents, owed entries and holders."""
        below = self.client.zrange(keys.entered(queue), "-inf", f"({before}", byscore=True, offset=0, num=LIMIT)
        jobs = [text(job) for job in below if isinstance(job, bytes | str)]
        if not jobs:
            return []
        docs = self.store.get_many(jobs)
        owed = self.client.zmscore(keys.owed(queue), jobs)
        alive, in_hand = self.live_workers()
        return [
            Entry(job, doc, score is not None, bool(doc and doc.get("worker") in alive), job in in_hand)
            for job, doc, score in zip(jobs, docs, owed, strict=True)
        ]

    def live_workers(self) -> tuple[set[str], set[str]]:
        """The workers whose heartbeat records live, and every job they list (running, or taken and waiting).

        A message delivered before the marker may wait in a worker's prefetch for a thread
        (its threads busy with the other queue's jobs, or with long ones): its document still
        says ``queued``, but its worker's record lists it within a beat.
        """
        names = [text(name) for name in self.client.zrange(keys.WORKERS, 0, -1) if isinstance(name, bytes | str)]
        alive: set[str] = set()
        in_hand: set[str] = set()
        for raw in self.client.mget([keys.worker(name) for name in names]) if names else []:
            try:
                record = json.loads(raw) if raw is not None else None
            except ValueError:
                continue
            if not isinstance(record, dict) or not isinstance(record.get("name"), str):
                continue
            alive.add(record["name"])
            for field_name in ("jobs", "waiting"):
                listed = record.get(field_name)
                if isinstance(listed, list):
                    in_hand.update(job for job in listed if isinstance(job, str))
        return alive, in_hand

    def judge_queue(self, queue: str, marker: Marker) -> tuple[list[str], int]:
        """Judge the entries older than ``marker``; publish the lost again. Returns (the lost, how many dropped)."""
        verdict = judge(self.entries(queue, marker.sent_at))
        if verdict.drop:
            self.client.zrem(keys.entered(queue), *verdict.drop)
        if not verdict.lost:
            return [], len(verdict.drop)
        # Re-scored before publishing: the next marker, sent after this publish, judges them again if it failed.
        at = now_ms(self.client)
        self.client.zadd(keys.entered(queue), {job: at for job, _ in verdict.lost}, xx=True)
        self.publisher().publish([message_of(job, doc, queue) for job, doc in verdict.lost])
        for job, doc in verdict.lost:
            telemetry.swept_back()
            log.warning(
                "sweep: job %s (%s) entered queue %s before a marker a worker has met, and no one holds it: its"
                " message was dropped (a purge, a max-length policy, the delivery limit); published again",
                clip(job),
                doc["status"],
                clip(queue),
            )
        return [job for job, _ in verdict.lost], len(verdict.drop)


def message_of(job_id: str, doc: JobDoc, queue: str) -> encode.AmqpMessage:
    options = doc.get("options")
    return encode.amqp_message(job_id, doc["source"], queue, options if isinstance(options, dict) else None)
