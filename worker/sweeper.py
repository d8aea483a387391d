"""The worker's sweeper: a thread that runs the lost-message sweep (``tasks.recovery.lost_sweep``) every few seconds.

Like the heartbeat (``worker.heartbeat``) it lives in the worker's main process,
whatever the pool, starts once the worker consumes (``worker_ready``) and stops at
``worker_shutdown``. Every worker runs one; the sweep's lock lets one of them sweep
per interval, so a fleet sweeps about once per interval whatever its size.

Its grace (how long a job may be unaccounted for before it is queued again) is the
lease, its cadence half a lease: a job lost between a worker's BRPOP and its record
is back in its line within about a lease and a half of the sweep first missing it.

On RabbitMQ it runs the owed sweep (``tasks.recovery.early_ack_sweep``) instead, on the same
cadence: owed jobs past their deadline are published again.

It must never stop or block the worker: its Redis calls time out within an interval
and never retry by themselves (the next sweep is the retry), every error is caught,
and a failing sweep is logged once per streak, not once per interval.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from wsupload.config.settings import Settings
from wsupload.tasks.recovery.early_ack_sweep import OwedSweep
from wsupload.tasks.recovery.lost_sweep import Sweep
from wsupload.tasks.store.results import ResultStore
from wsupload.tasks.wire.amqp_publisher import Publisher
from wsupload.worker.background import FailureStreak
from wsupload.worker.roster import connect

log = logging.getLogger(__name__)


def grace_of(settings: Settings) -> float:
    """The lease: how long a job may be in no queue, no worker's hands and without an outcome."""
    return settings.lease


def interval_of(settings: Settings) -> float:
    return settings.sweep_interval


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
        return OwedSweep(
            results,
            ResultStore(results, settings.result_ttl),
            (settings.queue, settings.bulk_queue),
            lambda: publisher,
            retry=grace_of(settings),
            interval=interval,
            owner=owner,
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


class Sweeper:
    """Runs ``sweep`` every ``sweep.interval`` seconds from a daemon thread until ``stop``."""

    def __init__(self, sweep: Sweep | OwedSweep) -> None:
        self.sweep = sweep
        self._streak = FailureStreak(log, "sweep: failed (%s: %s); trying again every %g s", "sweep: sweeping again")
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> bool:
        """One sweep (or none, if another worker holds the lock); False (logged once per streak) if it failed."""
        try:
            self.sweep.sweep()
        except Exception as exc:  # whatever it is, the worker carries on: the next sweep tries again
            self._streak.failed(exc, self.sweep.interval)
            return False
        self._streak.succeeded()
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wsupload-sweeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self.sweep.interval):
            self.run_once()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=self.sweep.interval * 2)


_current: Sweeper | None = None
"""This process's sweeper, while its worker runs."""


@worker_ready.connect(weak=False, dispatch_uid="wsupload.worker.sweeper:ready")
def _start(sender: Any = None, **_: Any) -> None:
    global _current
    settings = getattr(getattr(sender, "app", None), "settings", None)
    if not isinstance(settings, Settings) or _current is not None:
        return  # another app's worker, or already sweeping
    try:
        owner = f"{getattr(sender, 'hostname', '?')} (pid {os.getpid()})"
        sweeper = Sweeper(sweep_for(settings, owner))
        sweeper.start()
    except Exception:
        log.exception("sweep: not started; messages lost between a worker and Redis are not looked for")
        return
    _current = sweeper
    log.info(
        "sweep: every %g s, jobs unaccounted for %g s go back on their queue",
        sweeper.sweep.interval,
        sweeper.sweep.grace,
    )


@worker_shutdown.connect(weak=False, dispatch_uid="wsupload.worker.sweeper:shutdown")
def _stop(**_: Any) -> None:
    global _current
    sweeper, _current = _current, None
    if sweeper is not None:
        sweeper.stop()
