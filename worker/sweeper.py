"""The worker's sweeper: a thread that runs the lost-message sweep (``tasks.recovery.lost_sweep``) every few seconds.

A background loop (``worker.background``), like the heartbeat: it lives in the
worker's main process, whatever the pool, from ``worker_ready`` to
``worker_shutdown``. Every worker runs one; the sweep's lock lets one of them sweep
per interval, so a fleet sweeps about once per interval whatever its size.

Its grace (how long a job may be unaccounted for before it is queued again) is the
lease, its cadence half a lease: a job lost between a worker's BRPOP and its record
is back in its line within about a lease and a half of the sweep first missing it.

On RabbitMQ it runs the owed sweep (``tasks.recovery.early_ack_sweep``) instead, on the same
cadence: owed jobs past their deadline are published again, and the marker sweep
(``tasks.recovery.markers``) publishes again the jobs whose messages RabbitMQ dropped.

It must never stop or block the worker: its Redis calls time out within an interval
and never retry by themselves (the next sweep is the retry), and the loop catches
every error and logs a failing sweep once per streak, not once per interval.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from wsupload.config.settings import Settings
from wsupload.tasks.recovery.early_ack_sweep import OwedSweep
from wsupload.tasks.recovery.lost_sweep import Sweep
from wsupload.tasks.recovery.markers import MarkerSweep, Timing
from wsupload.tasks.store.results import ResultStore
from wsupload.tasks.wire.amqp_publisher import Publisher
from wsupload.worker.background import BackgroundLoop
from wsupload.worker.worker_records import connect

log = logging.getLogger(__name__)


def grace_of(settings: Settings) -> float:
    """The lease: how long a job may be in no queue, no worker's hands and without an outcome."""
    return settings.lease


def interval_of(settings: Settings) -> float:
    return settings.sweep_interval


def timing_of(settings: Settings) -> Timing:
    """The marker sweep's timing (RabbitMQ), in ms."""
    return Timing(
        settings.amqp_marker_age * 1000, settings.amqp_marker_settle * 1000, settings.amqp_marker_timeout * 1000
    )


def sweep_for(settings: Settings, owner: str) -> Sweep | OwedSweep:
    """The sweep of this worker's queues: lines on the broker, documents on ``REDIS_URL`` (by default the same).

    On RabbitMQ, the owed sweep (``tasks.recovery.early_ack_sweep``) instead: owed sets and documents on ``REDIS_URL``.
    """
    interval = interval_of(settings)
    timeout = max(1.0, interval)
    if settings.broker_is_amqp:
        url = settings.broker_url
        assert url is not None
        results = connect(settings.redis_url, timeout)
        publisher = Publisher(url)  # one connection, kept between sweeps
        store = ResultStore(results, settings.result_ttl)
        return OwedSweep(
            results,
            store,
            (settings.queue, settings.bulk_queue),
            lambda: publisher,
            retry=grace_of(settings),
            interval=interval,
            owner=owner,
            markers=MarkerSweep(results, store, lambda: publisher, publisher.ready, timing_of(settings)),
        )
    broker = connect(settings.effective_broker_url, timeout=timeout)
    results = broker if settings.broker_is_results_redis else connect(settings.redis_url, timeout)
    return Sweep(
        broker,
        ResultStore(results, settings.result_ttl),
        (settings.queue, settings.bulk_queue),
        grace=grace_of(settings),
        interval=interval,
        owner=owner,
    )


class Sweeper(BackgroundLoop):
    """Runs ``sweep`` every ``sweep.interval`` seconds, from the end of one sweep to the start of the next.

    Not at a fixed rate: a sweep's lock lasts one interval, so a round that came
    back an interval after the last one *started* could find its own lock still held.
    """

    name = "sweeper"
    logger = log
    failing = "sweep: failed (%s: %s); trying again every %g s"
    recovered = "sweep: sweeping again"
    not_started = "sweep: not started; messages lost between a worker and Redis are not looked for"
    interval: float

    def __init__(self, sweep: Sweep | OwedSweep) -> None:
        super().__init__(sweep.interval)
        self.sweep = sweep

    def tick(self) -> None:
        """One sweep (or none, if another worker holds the lock)."""
        self.sweep.sweep()

    @classmethod
    def for_worker(cls, consumer: Any, settings: Settings) -> Sweeper:
        sweeper = cls(sweep_for(settings, owner=f"{getattr(consumer, 'hostname', '?')} (pid {os.getpid()})"))
        log.info(
            "sweep: every %g s, jobs unaccounted for %g s go back on their queue",
            sweeper.sweep.interval,
            sweeper.sweep.grace,
        )
        return sweeper


Sweeper.follow_worker()
