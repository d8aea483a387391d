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
import time
from collections.abc import Iterator
from typing import Any

import redis

from wsupload.config.settings import Settings
from wsupload.tasks.recovery.lease import BOOK, LeaseBook
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import text
from wsupload.worker.background import BackgroundLoop
from wsupload.worker.worker_records import connect

log = logging.getLogger(__name__)

CHECK_EVERY = 1.0
"""Seconds between two looks at the cancel requests of the jobs running here (the listener waits meanwhile)."""


class CancelWatch(BackgroundLoop):
    """Listens for cancels and checks the running jobs' requests every ``interval`` seconds."""

    name = "cancels"
    logger = log
    failing = "cancels: cannot listen or check (%s: %s); trying again every %.3g s"
    recovered = "cancels: listening again"
    not_started = "cancels: not started; a cancelled job runs on to its end here, and its outcome is refused"
    interval: float

    def __init__(self, client: redis.Redis, interval: float = CHECK_EVERY, book: LeaseBook = BOOK) -> None:
        super().__init__(interval)
        self.client = client
        self.book = book
        self._pubsub: Any = None

    def waits(self) -> Iterator[float]:
        while True:
            yield 0.0  # each round waits in ``listen``

    def tick(self) -> int:
        """One round: check the running jobs, then listen for ``interval``; how many jobs were told to stop."""
        told = self.check()
        try:
            told += self.listen(self.interval)
        except Exception:
            self._close()  # the next round subscribes again (and its check covers the gap)
            raise
        return told

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
        if self._pubsub is None:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            pubsub.subscribe(keys.CANCEL_CHANNEL)
            self._pubsub = pubsub
        told = 0
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0 and not self._done.is_set():
            message = self._pubsub.get_message(timeout=left)
            if message is not None and message.get("type") == "message":
                told += self.tell({text(message["data"])})
        return told

    def tell(self, job_ids: set[str]) -> int:
        """Cancel the leases of the jobs named; how many ran here."""
        told = 0
        for held in self.book.all():
            job_id = held.job_id
            if job_id in job_ids and held.cancel(job_id):
                told += 1
                log.info("job %s: cancelled by a producer; stopping it", job_id)
        return told

    def _close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # closing a broken connection: nothing left to do
                log.debug("cancels: closing the subscription failed", exc_info=True)

    def on_stop(self) -> None:
        self._close()

    @classmethod
    def for_worker(cls, consumer: Any, settings: Settings) -> CancelWatch:
        # Reads give up within a round: a Redis that went away fails the round, and the next one tries again.
        return cls(connect(settings.redis_url, timeout=CHECK_EVERY * 3))


CancelWatch.follow_worker()
