"""The owed sweep (RabbitMQ as the broker): owed jobs past their deadline are published again.

Per queue, one sweeper at a time across the fleet (``keys.owed_lock(queue)``, ``SET
NX PX`` for one interval, left to expire, as ``tasks.recovery.lost_sweep`` does):

1. one script (``early_acks_claim_due.lua``) takes the jobs whose deadline (Redis's
   clock) has passed, at most ``LIMIT``, and moves their deadline ``retry`` seconds
   on, so a sweeper that dies or cannot reach RabbitMQ leaves them due again, not lost;
2. their documents decide: a job that has ended leaves the set; any other is
   published again (``tasks.wire.encode.amqp_message``) with publisher confirms, from
   the call stored with its entry when it was acknowledged early (its message's
   source and options: the document may have none), else from its document as
   ``tasks.recovery.lost_sweep`` builds Redis messages; a job with neither leaves the set;
3. once confirmed, each entry still holding the deadline the sweep gave it is
   removed; one its worker renewed meanwhile stays (that job still runs, and
   fencing decides between the two deliveries);
4. then, with ``markers`` given, the marker sweep's round (``tasks.recovery.markers``) for the
   same queues, under the same locks: jobs whose messages RabbitMQ dropped are published again.

A job published again here is first re-scored in its queue's entered set to the deadline
the claim gave it (``keys.entered``): by then it is on the queue, or owed again.

The Redis-broker sweep (``tasks.recovery.lost_sweep``) does not run on RabbitMQ: RabbitMQ loses
no message between a queue and a consumer (it drops some on purpose: the marker sweep's part).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from wsupload.tasks.observe import telemetry
from wsupload.tasks.observe.bounds import clip
from wsupload.tasks.recovery import early_acks
from wsupload.tasks.recovery.markers import MarkerSweep
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import JobDoc, ResultStore, is_end
from wsupload.tasks.wire import encode
from wsupload.tasks.wire.amqp_publisher import Publisher

log = logging.getLogger(__name__)

LIMIT = 1000
"""Owed jobs one sweep handles per queue."""


@dataclass(frozen=True)
class Report:
    dropped: tuple[str, ...] = ()
    """Owed jobs that had ended (or whose document was gone): only their entry went."""
    published: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()
    """Queues a marker was sent on (``tasks.recovery.markers``)."""
    lost: tuple[str, ...] = ()
    """Jobs the marker sweep found dropped by RabbitMQ and published again."""


@dataclass(frozen=True)
class Resend:
    """What one due job is published again with."""

    source: str
    options: dict[str, Any] | None
    status: str
    """Its document's status (for the log line), or ``"no document"``."""


def split(
    jobs: Sequence[str], docs: Sequence[JobDoc | None], calls: Sequence[early_acks.Call | None] | None = None
) -> tuple[list[str], list[tuple[str, Resend]]]:
    """Due jobs into those to forget and those to publish again.

    A job whose document has ended is forgotten. Any other is published from the
    call its message had (stored when it was acknowledged early), else from its
    document; with neither (no document, no call) it is forgotten.
    """
    ended: list[str] = []
    live: list[tuple[str, Resend]] = []
    for job, doc, call in zip(jobs, docs, calls or [None] * len(jobs), strict=True):
        status = doc["status"] if doc is not None else "no document"
        if doc is not None and is_end(doc["status"]):
            ended.append(job)
        elif call is not None:
            live.append((job, Resend(call.source, call.options, status)))
        elif doc is not None and isinstance(doc.get("source"), str):
            options = doc.get("options")
            live.append((job, Resend(doc["source"], options if isinstance(options, dict) else None, status)))
        else:
            ended.append(job)
    return ended, live


def message_of(job_id: str, resend: Resend, queue: str) -> encode.AmqpMessage:
    return encode.amqp_message(job_id, resend.source, queue, resend.options)


class OwedSweep:
    """Sweeps the owed sets of ``queues`` (in the results Redis) onto RabbitMQ through ``publisher()``."""

    def __init__(
        self,
        client: redis.Redis,
        store: ResultStore,
        queues: Sequence[str],
        publisher: Callable[[], Publisher],
        *,
        retry: float,
        interval: float,
        owner: str = "",
        markers: MarkerSweep | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.queues = tuple(queues)
        self.publisher = publisher
        self.owed = early_acks.OwedSet(client)
        self.grace = retry
        """Seconds before jobs this sweep took are due again if it could not publish them."""
        self.interval = interval
        self.owner = owner
        self.markers = markers

    def sweep(self) -> Report | None:
        """One sweep of each queue no other sweeper holds; None when others held them all."""
        lock_ms = max(1, int(self.interval * 1000))
        pipe = self.client.pipeline(transaction=False)
        for queue in self.queues:
            pipe.set(keys.owed_lock(queue), self.owner or "sweeper", nx=True, px=lock_ms)
        mine = [queue for queue, got in zip(self.queues, pipe.execute(), strict=True) if got]
        if not mine:
            return None
        dropped: list[str] = []
        published: list[str] = []
        for queue in mine:
            due = self.owed.claim_due(queue, self.grace, LIMIT)
            if not due.jobs:
                continue
            ended, live = split(due.jobs, self.store.get_many(due.jobs), self.owed.calls(queue, due.jobs))
            if ended:
                self.owed.remove(queue, ended)
                dropped += ended
            if live:
                at = int(float(due.deadline) * 1000)
                self.client.zadd(keys.entered(queue), {job: at for job, _ in live})
                self.publisher().publish([message_of(job, resend, queue) for job, resend in live])
                self.owed.remove_if(due, [job for job, _ in live])
                for job, resend in live:
                    telemetry.swept_back()
                    log.warning(
                        "sweep: job %s (%s) was owed and not ended by its deadline; published again on queue %s",
                        clip(job),
                        resend.status,
                        clip(queue),
                    )
                published += [job for job, _ in live]
        if self.markers is None:
            return Report(tuple(dropped), tuple(published))
        round_ = self.markers.sweep(mine)
        return Report(tuple(dropped), tuple(published), round_.sent, round_.published)
