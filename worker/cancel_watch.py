"""The worker's side of cancelling: the jobs it runs that a producer cancelled are told to stop.

A producer's cancel (``tasks.store.cancels``) writes the job's end, leaves a request at
``keys.cancel(job_id)`` for as long as the document, and publishes the job id on
``keys.CANCEL_CHANNEL``. A thread in each worker process listens on that channel and
tells the job at once (``JobLease.cancel``: its backoff or fleet-slot wait returns, its
request in flight has its socket shut down); each round (``CHECK_EVERY``) it also asks
Redis whether any job it runs has a request, so a job whose announcement was missed
(the listener reconnecting, Redis restarted) stops within a round or two.

It talks to the results Redis (``REDIS_URL``) whatever the broker, RabbitMQ included. A
job not running here needs nothing: its end is written, so the delivery that meets its
message later finds it ended (``tasks.store.fencing``) and only acknowledges it.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from wsupload.config.settings import Settings
from wsupload.tasks.recovery.lease import BOOK, LeaseBook
from wsupload.tasks.store import keys
from wsupload.worker.background import ChannelLoop
from wsupload.worker.worker_records import connect

log = logging.getLogger(__name__)

CHECK_EVERY = 1.0
"""Seconds between two looks at the cancel requests of the jobs running here (the listener waits meanwhile)."""


class CancelWatch(ChannelLoop):
    """Listens for cancels and checks the running jobs' requests every ``interval`` seconds."""

    name = "cancels"
    logger = log
    failing = "cancels: cannot listen or check (%s: %s); trying again every %.3g s"
    recovered = "cancels: listening again"
    not_started = "cancels: not started; a cancelled job runs on to its end here, and its outcome is refused"
    channel = keys.CANCEL_CHANNEL
    interval: float

    def __init__(self, client: redis.Redis, interval: float = CHECK_EVERY, book: LeaseBook = BOOK) -> None:
        super().__init__(interval)
        self.client = client
        self.book = book

    def tick(self) -> int:
        """One round: check the running jobs, then listen for ``interval``; how many jobs were told to stop."""
        return self.check() + self.listen(self.interval)

    def check(self) -> int:
        """Tell every job running here whose cancel request is in Redis; how many were told."""
        running = [held for held in self.book.all() if not held.cancelled]
        if not running:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for held in running:
            pipe.exists(keys.cancel(held.job_id))
        found = {held.job_id for held, exists in zip(running, pipe.execute(), strict=True) if exists}
        return self.tell(found)

    def listen(self, seconds: float) -> int:
        """Wait up to ``seconds`` for announced cancels, telling each job running here at once."""
        return sum(self.tell({job_id}) for job_id in self.messages(seconds))

    def tell(self, job_ids: set[str]) -> int:
        """Cancel the leases of the jobs named; how many ran here."""
        told = 0
        for held in self.book.all():
            job_id = held.job_id
            if job_id in job_ids and held.cancel(job_id):
                told += 1
                log.info("job %s: cancelled by a producer; stopping it", job_id)
        return told

    @classmethod
    def for_worker(cls, consumer: Any, settings: Settings) -> CancelWatch:
        # Reads give up within a round: a Redis that went away fails the round, and the next one tries again.
        return cls(connect(settings.redis_url, timeout=CHECK_EVERY * 3))


CancelWatch.follow_worker()
