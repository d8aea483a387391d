"""The worker's side of leases on RabbitMQ: early acknowledgement of long jobs, owed entries, hand-back.

RabbitMQ has no visibility timeout: a delivered message stays with its consumer
until acknowledged, and goes back to its queue when the consumer's channel or
connection closes (a dead worker, or one silent for two heartbeats: ``worker.app``).
So there is nothing to renew on the broker, and kombu's Redis books are never
touched here. What replaces ``worker.renewer``'s round, every third of a lease:

- **consumer_timeout.** RabbitMQ (3.10: server-wide, 30 min by default) closes a
  channel whose delivery stays unacknowledged longer, requeueing every message on
  it: every job the worker runs would be uploaded again. A message held
  ``early_ack_after(WSUPLOAD_AMQP_CONSUMER_TIMEOUT)`` (half of it) is made owed in
  Redis for a lease (``tasks.recovery.early_acks``) and then acknowledged if a thread runs its job;
  one still waiting for a thread is rejected with requeue instead, and skipped when a
  thread takes it (``tasks.recovery.early_acks.Starts``): an early ack frees a prefetch slot, and
  the threads pool has no other bound on the work a worker takes. So is the message of a
  job that shows no sign of life (``tasks.recovery.lease.renewable``): its entry is not
  renewed, and the sweep gives the job to another worker a lease later, as on Redis.
- **owed entries.** Those of early-acknowledged jobs this worker still holds are
  renewed for a lease while the job is renewable; the
  task removes the entry once the job has ended (``tasks.upload``).
- **fleet-limiter slots** of renewable jobs are renewed as on Redis.
- **stop.** The consumers are cancelled and the connection's heartbeats go on
  (``stop_consuming``). After
  ``WSUPLOAD_STOP_GRACE`` the message of each job still running is rejected with
  requeue at once (acknowledged early: its owed entry falls due now, for the
  sweep), and the job stops at its next block.

Celery hands acknowledgements to its event loop (the consumer's thread), whichever
thread asks; ``Request`` takes one lock around each request for one, so a message
is never acknowledged twice (RabbitMQ would close the channel for it). Once a warm
shutdown has stopped that loop, the stop's own frames (cancel, reject, heartbeats)
are written from this module's thread, the only one then using the connection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from celery.worker import state
from celery.worker.request import Request as CeleryRequest

from wsupload.config.settings import UPLOAD_TASK_NAME
from wsupload.tasks.observe import telemetry
from wsupload.tasks.observe.bounds import clip
from wsupload.tasks.recovery import early_acks
from wsupload.tasks.recovery.lease import BOOK, LeaseBook, renewable
from wsupload.tasks.wire.decode import job_id_of
from wsupload.worker.app import HEARTBEAT
from wsupload.worker.renewer import Renewer

log = logging.getLogger(__name__)

ACKS = threading.RLock()
"""Held around every acknowledgement or rejection of a message on this worker."""


class Request(CeleryRequest):
    """Celery's request, with the time it arrived and its acknowledgement under ``ACKS``.

    Its body goes to the pool thread decoded: the consumer decoded it already, to check
    the message before dispatch (``worker.consumer``), and Celery keeps that decoding as
    the request's payload; its pool thread would otherwise decode the same bytes again.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received_at = time.monotonic()
        celery: Any = self  # Celery's own attributes, untyped
        if not celery._decoded:
            # What Celery does for a body handed over decoded (``decoded=True``): the trace takes it as is.
            celery._body = celery._payload
            celery._content_type = celery._content_encoding = None
            celery._decoded = True

    def acknowledge(self) -> None:
        with ACKS:
            super().acknowledge()

    def reject(self, requeue: bool = False) -> None:
        with ACKS:
            super().reject(requeue)


def held_requests() -> list[Any]:
    """The upload requests this worker has received and not finished (running or waiting for a thread)."""
    for _ in range(3):
        try:
            return [r for r in tuple(state.reserved_requests) if r.name == UPLOAD_TASK_NAME]
        except RuntimeError:  # the set changed while being copied (another thread): read it again
            continue
    return []


def job_of(request: Any) -> str | None:
    """The job a request runs: its ``job_id`` argument (``tasks.wire.decode``), else its task id."""
    return job_id_of(getattr(request, "args", ()), getattr(request, "kwargs", {}), request.id)


def tag_of(request: Any) -> str | None:
    """The request's key in this worker's books, as the task computes it (``tasks.upload.delivery_tag``)."""
    return early_acks.amqp_tag(job_of(request), request.id)


class AmqpLeases(Renewer):
    """``worker.renewer.Renewer``'s thread and stop, with the round above; ``client`` is the results Redis."""

    def __init__(
        self,
        client: redis.Redis,
        interval: float,
        *,
        lease: float,
        early_after: float,
        book: LeaseBook = BOOK,
        requests: Callable[[], Sequence[Any]] = held_requests,
        early: early_acks.EarlyAcks = early_acks.EARLY,
        starts: early_acks.Starts = early_acks.STARTS,
        slots: redis.Redis | None = None,
        slot_lease: float = 30.0,
        stop_grace: float | None = None,
        consumer: Any = None,
    ) -> None:
        super().__init__(client, interval, book, slots=slots, slot_lease=slot_lease, stop_grace=stop_grace)
        self.consumer = consumer
        """Celery's consumer, whose connection the stop keeps alive (``keep_alive``)."""
        self.owed = early_acks.OwedSet(client)
        self.lease = lease
        self.early_after = early_after
        self.requests = requests
        self.early = early
        self.starts = starts

    def tick(self) -> int:
        """One round: how many owed entries it renewed."""
        now = time.monotonic()
        held = list(self.requests())
        for request in held:
            if self._ack_due(request, now) and not self.hand_back_waiting(request):
                self.ack_early(request)
        renewed = self._renew_owed(held, now)
        self._renew_slots([lease.tag for lease in self.book.all() if lease.tag and renewable(lease, now)])
        return renewed

    def _ack_due(self, request: Any, now: float) -> bool:
        if request.acknowledged:
            return False
        lease = self.book.get(tag_of(request) or "")
        if lease is not None and not renewable(lease, now):
            return True  # hung: owed for a lease, not renewed, swept to another worker
        return now - getattr(request, "received_at", now) >= self.early_after

    def hand_back_waiting(self, request: Any) -> bool:
        """Reject, with requeue, a request due for early acknowledgement that no thread has started.

        Acknowledged early it would free a prefetch slot while it still waits, and the
        worker would take on more work than its threads, without bound. The task skips
        it when a thread finally runs it (``tasks.recovery.early_acks.Starts``). False if it runs.
        """
        tag = tag_of(request)
        with ACKS:
            if request.acknowledged or not self.starts.hand_back_if_waiting(tag):
                return False
            try:
                request.reject(requeue=True)
            except BaseException:
                self.starts.withdraw(tag)  # not handed back after all
                raise
        log.warning(
            "job %s: waited %.0f s for a thread; its message goes back to its queue"
            " (only a running job is acknowledged early)",
            clip(job_of(request) or "?"),
            time.monotonic() - getattr(request, "received_at", time.monotonic()),
        )
        return True

    def ack_early(self, request: Any) -> bool:
        """Owe the job for a lease, then acknowledge its message; False if it was acknowledged already."""
        job, queue = job_of(request), (request.delivery_info or {}).get("routing_key")
        tag = early_acks.amqp_tag(job, request.id)
        if job is None or tag is None or not isinstance(queue, str):
            return False
        with ACKS:
            if request.acknowledged:
                return False
            # By the job id: the sweep reads the job's document under it, the task renews and clears it.
            # With the message's own call: the document may hold no options, or not exist at all.
            record = early_acks.call_record(getattr(request, "args", ()), getattr(request, "kwargs", {}), request.id)
            self.owed.owe({queue: [job]}, self.lease, calls={queue: {job: record}} if record else None)
            self.early.mark(tag, job, queue)
            request.acknowledge()
        telemetry.acked_early()
        log.warning(
            "job %s: held %.0f s; its message is acknowledged early and the job kept owed in Redis"
            " (RabbitMQ's consumer_timeout would otherwise close the channel under it)",
            clip(job),
            time.monotonic() - getattr(request, "received_at", time.monotonic()),
        )
        return True

    def _renew_owed(self, held: list[Any], now: float) -> int:
        by_queue: dict[str, list[str]] = {}
        holding = {tag_of(request) for request in held}
        for tag, early in self.early.all().items():
            lease = self.book.get(tag)
            if tag not in holding:
                self.early.pop(tag)  # its task has returned; an entry left owed is the sweep's to drop
            elif lease is None or renewable(lease, now):
                by_queue.setdefault(early.queue, []).append(early.job_id)
        if by_queue:
            self.owed.owe(by_queue, self.lease, mode="XX")
        return sum(len(jobs) for jobs in by_queue.values())

    def on_stop_signal(self, grace: float) -> None:
        threading.Thread(target=self.stop_consuming, name="wsupload-amqp-stop", daemon=True).start()
        super().on_stop_signal(grace)

    def stop_consuming(self) -> None:
        """Cancel this worker's consumers, then keep its connection alive until the process ends.

        Celery's warm shutdown stops reading from RabbitMQ but does not cancel the
        consumers: RabbitMQ would go on delivering to this worker (as acks free its
        prefetch), a handed-back message first among them, and those messages would sit
        unread until the connection closes. Cancelled (``nowait``: the frames on a
        channel are handled in order), they go to the other workers.
        """
        try:
            consumer = self.consumer.task_consumer
            with ACKS:
                for tag in list(getattr(consumer, "_active_tags", {}).values()):
                    consumer.channel.basic_cancel(tag, nowait=True)
        except Exception as exc:
            log.warning("stop: could not cancel the consumers (%s: %s)", type(exc).__name__, clip(str(exc)))
        self.keep_alive()

    def keep_alive(self, every: float = HEARTBEAT / 4) -> None:
        """Send the consumer connection's heartbeats while the worker stops, until its process ends.

        Celery's consumer stops its event loop, and with it the heartbeats, as soon as a
        warm shutdown begins, but keeps the connection for the acknowledgements of the
        jobs finishing within the stop grace: two heartbeats later RabbitMQ would close
        it, requeue those messages and refuse their acks ("Couldn't ack").
        """
        while True:
            try:
                connection = self.consumer.connection.connection  # kombu's, then py-amqp's: None once closed
                if connection is None:
                    return
                with ACKS:
                    connection.send_heartbeat()
            except Exception as exc:
                log.info("stop: no more heartbeats to RabbitMQ (%s: %s)", type(exc).__name__, clip(str(exc)))
                return
            time.sleep(every)

    def hand_back(self, grace: float) -> int:
        """Wait up to ``grace`` for running jobs to end; hand the rest back now and tell them to stop.

        Each message still held is rejected with requeue (RabbitMQ puts it back at the
        front of its queue); a job acknowledged early is made due now, for the sweep.
        The job stops at its next block, writing nothing more.
        """
        if self.book.wait_empty(grace):
            return 0
        requests = {tag_of(request): request for request in self.requests()}
        handed = 0
        for lease in self.book.all():
            request = requests.get(lease.tag)
            try:
                with ACKS:
                    early = self.early.pop(lease.tag)
                    if early is not None:
                        self.owed.owe({early.queue: [early.job_id]}, 0, mode="XX")
                    elif request is not None and not request.acknowledged:
                        # On the socket now: Celery's own reject would wait for its event loop,
                        # which a warm shutdown has stopped, until the job ends.
                        request.message.reject(requeue=True)
                        request.acknowledged = True
                    lease.handed_back = True
            except Exception as exc:
                log.warning(
                    "job %s: could not hand it back (%s); it runs on, or returns when its connection closes",
                    clip(lease.job_id),
                    clip(str(exc)),
                )
                continue
            telemetry.handed_back()
            handed += 1
            log.warning("job %s: still running after the stop grace; handed back to its queue", clip(lease.job_id))
        return handed
