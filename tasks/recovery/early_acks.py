"""Owed jobs: on RabbitMQ, the jobs whose safety is held in Redis instead of by an unacknowledged message.

RabbitMQ keeps a message until it is acknowledged, and requeues it when the
consumer's channel or connection closes; it has no visibility timeout to renew.
Two moments leave a job without that safety, and the owed set
(``keys.owed(queue)``, job id → deadline by Redis's clock) covers both:

- **enqueue** (``tasks.enqueue``): the documents are committed in Redis with
  every job owed for ``WSUPLOAD_AMQP_PUBLISH_GRACE``, then the messages are
  published with confirms, then the entries are removed. A producer that dies
  or loses RabbitMQ in between leaves them owed.
- **a long job** (``worker.amqp_leases``): RabbitMQ closes a channel whose
  delivery stays unacknowledged longer than its ``consumer_timeout``, and
  requeues every message of that channel. A job still held at half of it
  (``early_ack_after``) is made owed for a lease, then its message is
  acknowledged; the worker renews the entry every third of a lease while the job
  is renewable (``tasks.recovery.lease``), and removes it once the job has ended.

A long job's entry keeps its call beside it (``keys.owed_calls(queue)``: source
and options as its message had them): a producer in another language may write
no document, or one without options, and the sweep must not publish the job
without its callback or dedup. The workers' sweep (``tasks.recovery.early_ack_sweep``)
publishes again every owed job whose deadline has passed and whose document is
not terminal; fencing
(``tasks.store.fencing``) drops a delivery of a job that has ended meanwhile.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from wsupload.tasks.store import keys, lua
from wsupload.tasks.wire.decode import bind, read_upload_call


def early_ack_after(consumer_timeout: float) -> float:
    """Seconds after delivery a held message is acknowledged early: half of RabbitMQ's ``consumer_timeout``.

    RabbitMQ checks the timeout on its own cadence; half leaves the worker many
    renewal rounds to act in, and the message is never closed under a job.
    """
    return consumer_timeout / 2


@dataclass(frozen=True)
class Due:
    queue: str
    deadline: str
    """The deadline the claim gave them (``remove_if`` checks it)."""
    jobs: list[str]


class OwedSet:
    """The owed sets of a deployment's queues, in the results Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._set = lua.script(client, "early_acks_owe")
        self._claim = lua.script(client, "early_acks_claim_due")
        self._remove_if = lua.script(client, "early_acks_remove_if")

    def owe(
        self,
        by_queue: Mapping[str, Sequence[str]],
        seconds: float,
        *,
        mode: str = "",
        calls: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        """Owe each job for ``seconds`` from now (Redis's clock); ``mode="XX"``: renew only, ``"NX"``: add only.

        ``calls``: per queue, job → ``call_record``, stored with the entries in one transaction.
        """
        names = [queue for queue, jobs in by_queue.items() if jobs]
        if not names:
            return
        args: list[str | float | int] = [seconds, mode]
        for queue in names:
            args += [len(by_queue[queue]), *by_queue[queue]]
        owed_keys = [keys.owed(queue) for queue in names]
        if not any(calls.values() if calls else ()):
            self._set(keys=owed_keys, args=args)
            return
        assert calls is not None
        pipe = self.client.pipeline(transaction=True)
        self._set(keys=owed_keys, args=args, client=pipe)
        for queue, records in calls.items():
            for job, record in records.items():
                pipe.hset(keys.owed_calls(queue), job, record)
        pipe.execute()

    def remove(self, queue: str, jobs: Iterable[str]) -> None:
        """Remove the jobs' entries and their calls."""
        jobs = list(jobs)
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(jobs), 1000):
            pipe.zrem(keys.owed(queue), *jobs[start : start + 1000])
            pipe.hdel(keys.owed_calls(queue), *jobs[start : start + 1000])
        pipe.execute()

    def calls(self, queue: str, jobs: Sequence[str]) -> list[Call | None]:
        """The stored call of each job (None where none was stored, or it cannot be read)."""
        if not jobs:
            return []
        return [read_call_record(raw) for raw in self.client.hmget(keys.owed_calls(queue), list(jobs))]

    def claim_due(self, queue: str, grace: float, limit: int) -> Due:
        at, *jobs = self._claim(keys=[keys.owed(queue)], args=[grace, limit])
        return Due(queue, _text(at), [_text(job) for job in jobs])

    def remove_if(self, due: Due, jobs: Sequence[str]) -> int:
        if not jobs:
            return 0
        return int(self._remove_if(*remove_if_call(due, jobs)))

    def deadline(self, queue: str, job: str) -> float | None:
        score = self.client.zscore(keys.owed(queue), job)
        return None if score is None else float(score)


def remove_if_call(due: Due, jobs: Sequence[str]) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of ``early_acks_remove_if.lua``: remove ``jobs`` still owed until ``due.deadline``."""
    return [keys.owed(due.queue), keys.owed_calls(due.queue)], [due.deadline, *jobs]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Call:
    """What the sweep needs to publish an owed job again: its source and options, as its message had them."""

    source: str
    options: dict[str, Any] | None


def call_record(args: object, kwargs: object, task_id: object = None) -> str | None:
    """A message's call as stored beside its owed entry (JSON), or None if the message cannot run.

    Bounded: ``read_upload_call`` refuses a source or options over their limits.
    """
    try:
        read_upload_call(args, kwargs, task_id)
        bound = bind(args, kwargs)
    except Exception:  # a message the task fails at once: the document then has what the sweep needs
        return None
    options = bound.get("options")
    return json.dumps({"source": bound["source"], "options": options if isinstance(options, dict) else None})


def read_call_record(raw: bytes | str | None) -> Call | None:
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("source"), str):
        return None
    options = record.get("options")
    return Call(record["source"], options if isinstance(options, dict) else None)


def amqp_tag(job_id: str | None, request_id: str | None) -> str | None:
    """A RabbitMQ delivery's key in this worker's books: its job and its Celery request id.

    Celery hands a task no delivery tag on AMQP (and RabbitMQ's are per-channel
    counters). The job id alone would let two deliveries of one job on one worker
    pop each other's early-ack record; the task id alone is not the job's when a
    producer (Celery's ``send_task`` without ``task_id``) gives its own. The same
    message delivered twice at once to one worker still shares a key: fencing
    settles between the two.
    """
    return f"amqp:{job_id}:{request_id}" if job_id and request_id else None


@dataclass(frozen=True)
class Early:
    job_id: str
    queue: str


class EarlyAcks:
    """The messages this worker acknowledged early, by delivery tag (thread-safe): their jobs are owed."""

    def __init__(self) -> None:
        self._acked: dict[str, Early] = {}
        self._lock = threading.Lock()

    def mark(self, tag: str, job_id: str, queue: str) -> None:
        with self._lock:
            self._acked[tag] = Early(job_id, queue)

    def get(self, tag: str | None) -> Early | None:
        with self._lock:
            return self._acked.get(tag or "")

    def pop(self, tag: str | None) -> Early | None:
        with self._lock:
            return self._acked.pop(tag or "", None)

    def all(self) -> dict[str, Early]:
        with self._lock:
            return dict(self._acked)


EARLY = EarlyAcks()
"""This process's early-acknowledged messages (the worker's AMQP leases and the upload task read it)."""


class Starts:
    """Deliveries a thread has started, and those handed back while still waiting for one (thread-safe).

    Celery's threads pool takes every message prefetch lets in, and each early
    acknowledgement frees a prefetch slot: only a running job may be acknowledged
    early, or a worker would take on work without bound. A message due for early
    acknowledgement while still waiting is rejected with requeue instead; when a
    thread finally runs its request, the task finds it here and returns untouched.
    Counted per key: the same message may be delivered to one worker again meanwhile.
    """

    def __init__(self) -> None:
        self._started: Counter[str] = Counter()
        self._handed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def begin(self, tag: str | None) -> bool:
        """A thread starts the delivery: False if it was handed back meanwhile (then skip it)."""
        if tag is None:
            return True
        with self._lock:
            if self._take_hand_back(tag):
                return False
            self._started[tag] += 1
            return True

    def _take_hand_back(self, tag: str) -> bool:
        """Use up one hand-back of ``tag``, if it has one (the caller holds the lock)."""
        if self._handed[tag] <= 0:
            return False
        self._handed[tag] -= 1
        if not self._handed[tag]:
            del self._handed[tag]
        return True

    def end(self, tag: str | None) -> None:
        if tag is None:
            return
        with self._lock:
            self._started[tag] -= 1
            if self._started[tag] <= 0:
                del self._started[tag]

    def hand_back_if_waiting(self, tag: str | None) -> bool:
        """Mark the delivery handed back unless a thread has started it; True if marked (reject it now)."""
        if tag is None:
            return False
        with self._lock:
            if self._started[tag] > 0:
                return False
            self._handed[tag] += 1
            return True

    def withdraw(self, tag: str | None) -> None:
        """Take back a hand-back whose reject failed (the message is still held): the task runs it."""
        if tag is None:
            return
        with self._lock:
            self._take_hand_back(tag)


STARTS = Starts()
"""This process's started and handed-back deliveries (the worker's AMQP leases and the upload task read it)."""
