"""The worker's heartbeat: a record in Redis of who it is and which jobs it runs, renewed every few seconds.

A background loop (``worker.background``) in the worker's main process writes it, whatever the pool:
Celery's worker state (``celery.worker.state``) lives there for prefork (the parent
hears of each task a child accepts) and for threads alike. It starts once the
worker consumes (``worker_ready``), says ``stopping`` from the shutdown signal on,
and is deleted after a warm shutdown has let the running jobs finish
(``worker_shutdown``). A worker that dies (SIGKILL, OOM, a lost host) leaves a
record that expires ``worker_records.RECORD_TTL`` after its last beat. The record's
shape and its readers are in ``worker.worker_records``.

It must never stop or block the worker: its Redis calls time out within a beat and
never retry by themselves (the next beat is the retry), and the loop catches every
error and logs a failing Redis once per outage, not once per beat.

The worker loads this module through the app's ``include`` (``worker.app``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import celery.concurrency
import redis
from celery.worker import state

from wsupload.config.settings import UPLOAD_MANY_TASK_NAME, UPLOAD_TASK_NAME, Settings
from wsupload.tasks.observe.bounds import clip
from wsupload.tasks.recovery import lease
from wsupload.tasks.store import keys, pauses
from wsupload.tasks.store.results import isoformat, utcnow
from wsupload.tasks.wire.decode import UPLOAD_TASKS, bulk_jobs_in, job_id_of
from wsupload.worker.background import BackgroundLoop
from wsupload.worker.worker_records import (
    BEAT_INTERVAL,
    INDEX_HORIZON,
    RECORD_TTL,
    RUNNING,
    STOPPING,
    WorkerRecord,
    connect,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Running:
    jobs: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()
    other_tasks: tuple[str, ...] = ()


def package_version() -> str:
    try:
        return version("wsupload")
    except PackageNotFoundError:
        return "unknown"


def pool_name(pool_cls: object) -> str:
    """Celery's name for a pool class (``prefork``, ``threads``, …), else its dotted path."""
    if isinstance(pool_cls, str):
        return pool_cls
    path = f"{getattr(pool_cls, '__module__', '?')}:{getattr(pool_cls, '__qualname__', '?')}"
    aliases: dict[str, str] = getattr(celery.concurrency, "ALIASES", {})  # untyped in celery-types
    return next((alias for alias, target in aliases.items() if target == path), path)


def running(active: Iterable[Any], reserved: Iterable[Any], leased: Iterable[str] = ()) -> Running:
    """The jobs among Celery's requests: executing (``active``) and taken but not started (reserved, not active).

    A job is named by its ``job_id`` argument (else its task id, as the consumer
    does); a bulk message's running job is the one its lease names (``leased``: the
    job ids of this process's lease book), and each of its jobs is listed as waiting
    while the message is; a request of another task is listed by its task name.
    """
    active = list(active)
    started = {id(request) for request in active}
    jobs = _job_ids(r for r in active if _name(r) == UPLOAD_TASK_NAME)
    jobs += [job_id for job_id in leased if job_id not in jobs]
    waiting = [r for r in reserved if _name(r) in UPLOAD_TASKS and id(r) not in started]
    return Running(
        jobs=tuple(jobs),
        waiting=tuple(_job_ids(r for r in waiting if _name(r) == UPLOAD_TASK_NAME))
        + tuple(job for r in waiting if _name(r) == UPLOAD_MANY_TASK_NAME for job in bulk_jobs_in(r.args)),
        other_tasks=tuple(clip(str(_name(r) or "?")) for r in active if _name(r) not in UPLOAD_TASKS),
    )


def _name(request: Any) -> str | None:
    name = getattr(request, "name", None)
    return name if isinstance(name, str) else None


def _job_ids(requests: Iterable[Any]) -> list[str]:
    found = (job_id_of(getattr(r, "args", None), getattr(r, "kwargs", None), getattr(r, "id", None)) for r in requests)
    return [job_id for job_id in found if job_id is not None]


def _copy(requests: Iterable[Any], attempts: int = 5) -> list[Any] | None:
    """A list of a WeakSet other threads may change meanwhile (pool threads do), or None if it kept changing."""
    for _ in range(attempts):
        try:
            return list(requests)
        except RuntimeError:  # "Set changed size during iteration"
            continue
    return None


def worker_requests() -> Running | None:
    """What this process's Celery worker runs now (None: its state changed too fast to read, try next beat)."""
    active, reserved = _copy(state.active_requests), _copy(state.reserved_requests)
    if active is None or reserved is None:
        return None
    return running(active, reserved, [held.job_id for held in lease.BOOK.all()])


class Heartbeat(BackgroundLoop):
    """Writes one worker's record every ``interval`` seconds, the first at once; ``stop`` deletes it."""

    name = "heartbeat"
    logger = log
    failing = "heartbeat: cannot write this worker's record (%s: %s); trying again every %g s"
    recovered = "heartbeat: writing this worker's record again"
    not_started = "heartbeat: not started; the worker runs without a heartbeat record"
    interval: float

    def __init__(
        self,
        client: redis.Redis,
        identity: WorkerRecord,
        read_running: Callable[[], Running | None] = worker_requests,
        clock: Callable[[], datetime] = utcnow,
        interval: float = BEAT_INTERVAL,
    ) -> None:
        super().__init__(interval)
        self.client = client
        self.identity = identity
        """The record as the worker started: who it is; each beat fills in the rest."""
        self.read_running = read_running
        self.clock = clock
        self.stopping = False
        """Set from the shutdown signal handler: a plain attribute, no lock, so it is safe there."""
        self._last = Running()

    def record(self, now: datetime) -> WorkerRecord:
        current = self.read_running()
        if current is not None:
            self._last = current
        return replace(
            self.identity,
            state=STOPPING if self.stopping else RUNNING,
            jobs=self._last.jobs,
            waiting=self._last.waiting,
            other_tasks=self._last.other_tasks,
            last_beat=isoformat(now),
            beat_interval=self.interval,
        )

    def tick(self) -> None:
        """One beat: write the record, with its TTL, and the name in the index."""
        now = self.clock()
        record = self.record(now)
        pipe = self.client.pipeline(transaction=True)
        pipe.set(keys.worker(record.name), json.dumps(record.to_json()), px=int(RECORD_TTL * 1000))
        pipe.zadd(keys.WORKERS, {record.name: now.timestamp()})
        pipe.zremrangebyscore(keys.WORKERS, "-inf", now.timestamp() - INDEX_HORIZON)
        pipe.execute()

    def waits(self) -> Iterator[float]:
        yield 0.0  # the first beat as the worker starts consuming
        yield from super().waits()

    def on_stopping(self) -> None:
        # Inside the signal handler: no I/O, no lock; the next beat says it.
        self.stopping = True

    def on_stop(self) -> None:
        """Delete the record: the thread has ended, so no beat in flight brings it back."""
        # At worker_shutdown, once a warm shutdown has drained the pool: the record listed the jobs to the end.
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(keys.worker(self.identity.name))
            pipe.zrem(keys.WORKERS, self.identity.name)
            pipe.execute()
        except Exception as exc:
            log.warning(
                "heartbeat: could not delete this worker's record (%s: %s); it expires in %g s",
                type(exc).__name__,
                clip(str(exc)),
                RECORD_TTL,
            )

    @classmethod
    def for_worker(cls, consumer: Any, settings: Settings) -> Heartbeat:
        heartbeat = cls(connect(settings.redis_url, timeout=BEAT_INTERVAL), identity_of(consumer, utcnow()))
        log.info("heartbeat: %s every %g s", keys.worker(heartbeat.identity.name), heartbeat.interval)
        return heartbeat


def identity_of(consumer: Any, now: datetime) -> WorkerRecord:
    """The record of the worker whose consumer ``worker_ready`` came from, as it starts (running, no jobs)."""
    controller = consumer.controller
    queues = consumer.app.amqp.queues
    return WorkerRecord(
        name=str(consumer.hostname),
        host=socket.gethostname(),
        pid=os.getpid(),
        pool=pool_name(controller.pool_cls),
        concurrency=int(controller.concurrency),
        version=package_version(),
        # The queues it serves: those it consumes, and those it started without because they were paused.
        queues=tuple(dict.fromkeys([*(queues.consume_from or queues), *sorted(pauses.LEFT_OUT)])),
        started_at=isoformat(now),
    )


Heartbeat.follow_worker()
