"""The owed sweep (RabbitMQ as the broker): owed jobs past their deadline are published again.

Per queue, one sweeper at a time across the fleet (``keys.owed_lock(queue)``, ``SET
NX PX`` for one interval, left to expire, as ``tasks.sweep`` does):

1. one script takes the jobs whose deadline (Redis's clock) has passed, at most
   ``LIMIT``, and moves their deadline ``retry`` seconds on, so a sweeper that dies
   or cannot reach RabbitMQ leaves them due again, not lost;
2. their documents decide: a job that has ended or has no document any more
   leaves the set; any other is published again (``tasks.wire.amqp_message``,
   built from its document as ``tasks.sweep`` builds Redis messages) with
   publisher confirms;
3. once confirmed, each entry still holding the deadline the sweep gave it is
   removed; one its worker renewed meanwhile stays (that job still runs, and
   fencing decides between the two deliveries).

The Redis-broker sweep (``tasks.sweep``) does not run on RabbitMQ: RabbitMQ loses
no message between a queue and a consumer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from wsupload.tasks import keys, owed, wire
from wsupload.tasks.limits import clip
from wsupload.tasks.publisher import Publisher
from wsupload.tasks.results import TERMINAL, JobDoc, ResultStore

log = logging.getLogger(__name__)

LIMIT = 1000
"""Owed jobs one sweep handles per queue."""


@dataclass(frozen=True)
class Report:
    dropped: tuple[str, ...] = ()
    """Owed jobs that had ended (or whose document was gone): only their entry went."""
    published: tuple[str, ...] = ()


def split(jobs: Sequence[str], docs: Sequence[JobDoc | None]) -> tuple[list[str], list[tuple[str, JobDoc]]]:
    """Due jobs into those to forget (ended, or no document) and those to publish again, with their documents."""
    ended, live = [], []
    for job, doc in zip(jobs, docs, strict=True):
        if doc is None or doc["status"] in TERMINAL or not isinstance(doc.get("source"), str):
            ended.append(job)
        else:
            live.append((job, doc))
    return ended, live


def message_of(job_id: str, doc: JobDoc, queue: str) -> wire.AmqpMessage:
    options = doc.get("options")
    return wire.amqp_message(job_id, doc["source"], queue, options if isinstance(options, dict) else None)


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
    ) -> None:
        self.client = client
        self.store = store
        self.queues = tuple(queues)
        self.publisher = publisher
        self.owed = owed.OwedSet(client)
        self.grace = retry
        """Seconds before jobs this sweep took are due again if it could not publish them."""
        self.interval = interval
        self.owner = owner

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
            ended, live = split(due.jobs, self.store.get_many(due.jobs))
            if ended:
                self.owed.remove(queue, ended)
                dropped += ended
            if live:
                self.publisher().publish([message_of(job, doc, queue) for job, doc in live])
                self.owed.remove_if(due, [job for job, _ in live])
                for job, doc in live:
                    log.warning(
                        "sweep: job %s (%s) was owed and not ended by its deadline; published again on queue %s",
                        clip(job),
                        doc["status"],
                        clip(queue),
                    )
                published += [job for job, _ in live]
        return Report(tuple(dropped), tuple(published))
