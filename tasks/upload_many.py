"""The Celery task ``wsupload.upload_many``: a bulk message, several jobs run one after another.

A bulk enqueue on the Redis broker (``tasks.enqueue``) puts up to
``WSUPLOAD_JOBS_PER_MESSAGE`` jobs in one message, so Celery's and kombu's work per
message (fetch, unacked record, request, hand-over, ack) is shared by them. Each
job is still a job of its own: ``JobRunner.run_delivery`` claims it (its own
generation), writes its own documents, ends it and sends its callback; a job that
has ended is a no-op when the message is delivered again, so a redelivered message
re-runs only the jobs that had not ended. Each job's claim is made in the same Lua call
as the outcome of the job before it (``_MessageRun``): one Redis round trip a job.

The jobs run under one lease, the message's (``tasks.recovery.lease``), kept in the book for
the whole message and re-armed for each job: the renewer keeps it while the running
job shows signs of life, and a lease lost or handed back during one job stops the
jobs after it. Where kombu's index is in the results Redis (the broker is
``REDIS_URL``), the claim takes a job only while the message's lease is in it
(``tasks.store.fencing``), so a delivery paused past its lease claims nothing more. The
message stops when:

- its lease is lost or handed back (``LeaseLost``): the message is already back on
  its queue, or running elsewhere;
- the worker is stopping (SIGTERM) before its next job: the message goes back to its
  queue (``Reject`` with requeue) and the jobs not started run on another worker;
- Redis cannot record an outcome now: likewise back to its queue;
- another delivery claimed one of its jobs after it (``Superseded``): the message goes
  back to its queue rather than leave that job to a delivery that may stop;
- an interactive job waits (``interactive_waiting``): the jobs not started go back to the
  bulk queue, so interactive jobs still overtake a bulk backlog by a job, not a message;
- its queue is paused (``tasks.store.pauses``): the jobs not started go back to it, the job
  running finishes (a message met paused before its first job goes back whole).

Any path that would acknowledge the message while Redis refuses writes sends it back
instead: acknowledged, its jobs not ended yet would be in no queue and never end.
Bulk messages run on the Redis broker only: on RabbitMQ each of a bulk message's
jobs ends ``failed`` (``invalid_message``) saying so. A Celery ``link``/``link_error`` on a bulk
message is a logged no-op: links are per job (``tasks.upload``), and the message ends with
``Ignore`` instead of returning, so Celery does not run the link once for all its jobs; an
errback would only run for an internal error, with the message's task id.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import Any

import redis
from celery import Task, shared_task
from celery.exceptions import Ignore, Reject

from wsupload.config.settings import UPLOAD_MANY_TASK_NAME, UPLOAD_TASK_NAME, Settings
from wsupload.errors import Cancelled, InternalError, InvalidMessage, LeaseLost, Superseded, UploadError
from wsupload.tasks.job import Ahead, JobRunner
from wsupload.tasks.recovery import lease
from wsupload.tasks.store.fencing import ClaimAsk
from wsupload.tasks.upload import (
    callback_after,
    cannot_record_now,
    delivery_tag,
    queue_paused,
    requeue_for_redis,
    runner,
    send_callback,
    send_cancel_callback,
    was_cancelled,
    worker_stopping,
)
from wsupload.tasks.wire.decode import Refused, UploadCall, bulk_jobs_in, read_upload_many

log = logging.getLogger(__name__)

ON_RABBITMQ = InvalidMessage(
    "bulk messages (wsupload.upload_many) run on the Redis broker only; on RabbitMQ send one"
    " wsupload.upload message per job"
)


@shared_task(bind=True, name=UPLOAD_MANY_TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def upload_many(self: Task[Any, Any], /, *args: object, **kwargs: object) -> None:
    """``upload_many([[job_id, source], …], options=None)``: see the module docstring."""
    linked = bool(self.request.callbacks)
    if linked or self.request.errbacks:
        log.warning(
            "a %s message with link/link_error: links are per job and not run for bulk messages;"
            " send one %s message per job to use them",
            UPLOAD_MANY_TASK_NAME,
            UPLOAD_TASK_NAME,
        )
    run_message(self, args, kwargs)
    if linked:
        raise Ignore()  # returned, Celery would run the link once for the whole message, with None


def run_message(task: Task[Any, Any], args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    """The task's body: the message's jobs in turn."""
    job = runner()
    try:
        verdicts = read_upload_many(args, kwargs, None)
    except InvalidMessage as exc:
        # The consumer moves such a message aside before it gets here (worker.consumer).
        ids = bulk_jobs_in(args)
        log.error("a %s message that cannot run: %s; ending its %d named job(s)", UPLOAD_MANY_TASK_NAME, exc, len(ids))
        for job_id in ids:
            fail_or_requeue(job, job_id, "", exc)
        return
    if job.settings.broker_is_amqp:
        for verdict in verdicts:
            fail_or_requeue(job, verdict.job_id, verdict.source, ON_RABBITMQ)
        return
    request = task.request  # a lookup in Celery's request stack: once, not once a job
    paused = queue_paused(job, request)
    if paused is not None:
        left = len(verdicts)
        log.info("message %s: queue %s is paused; its %d job(s) go back to the queue", request.id, paused, left)
        raise Reject(f"queue {paused} is paused", requeue=True)
    tag = delivery_tag(request, None, amqp=False)
    grace = job.settings.connect_timeout + job.settings.read_timeout + job.settings.lease
    message = lease.JobLease(verdicts[0].job_id, tag, grace)
    run = _MessageRun(job, request, verdicts, tag, message)
    with lease.holding(message):
        for number in range(len(verdicts)):
            if not run.job(number):
                return


class _MessageRun:
    """One delivery of a bulk message: its jobs in turn, each job's claim made with the outcome before it.

    Whether the message goes on after a job is decided as that job ends, before its outcome is
    written: when it goes on, the next job's claim rides on that write (``JobRunner.run_delivery``'s
    ``then``), one round trip a job fewer; when it stops (the worker stopping, an interactive
    job waiting), nothing more is claimed, so a message that yields burns no job's deliveries.
    """

    def __init__(
        self, job: JobRunner, request: Any, verdicts: list[UploadCall | Refused], tag: str | None, held: lease.JobLease
    ) -> None:
        self.runner, self.request, self.verdicts, self.tag, self.held = job, request, verdicts, tag, held
        self.claimed: Ahead | None = None
        """The claim of the job about to run, made with the previous job's outcome."""
        self.stop: str | None = None
        """Why the jobs not started go back to the queue, once decided."""

    def job(self, number: int) -> bool:
        """Run the message's job ``number``; False when the message must stop here (its lease is gone).

        Raises ``Reject`` (with requeue) when the message must go back to its queue.
        """
        claimed, self.claimed = self.claimed, None
        if number and claimed is None and self.stop is None:
            self.stop = why_stop(self.runner.settings, self.request)
        if self.stop is not None:
            self._hand_back(number)
        verdict, job, request = self.verdicts[number], self.runner, self.request
        if isinstance(verdict, Refused):
            fail_or_requeue(job, verdict.job_id, verdict.source, verdict.error)
            return True
        try:
            outcome = job.run_delivery(
                verdict.job_id,
                verdict.source,
                verdict.options,
                worker=request.hostname,
                tag=self.tag,
                held=self.held,
                claimed=claimed,
                then=lambda now: self._ask(number + 1, now),
            )
            self.claimed = outcome.next_claim
        except LeaseLost as exc:
            log.warning("%s; this delivery of message %s stops", exc, request.id)
            return False
        except Cancelled as exc:
            log.info("%s; message %s goes on with its next job", exc, request.id)
            send_cancel_callback(job, verdict.job_id, verdict.options.callback_url)
            return True
        except Superseded as exc:
            if was_cancelled(job, verdict.job_id):
                # Refused because a producer cancelled the job: its end stands, the message goes on.
                log.info("%s (cancelled); message %s goes on with its next job", exc, request.id)
                send_cancel_callback(job, verdict.job_id, verdict.options.callback_url)
                return True
            # Another delivery claimed the job after this one. Going on without it could leave it
            # with no one, if that delivery then stops; back on the queue, the message runs again
            # and its jobs that have ended are no-ops (bounded by WSUPLOAD_MAX_DELIVERIES).
            log.warning("%s; its message goes back to the queue", exc)
            raise Reject(str(exc), requeue=True) from None
        except Exception as exc:
            requeue_if_unrecordable(job, verdict.job_id, exc)
            log.exception("job %s: internal error", verdict.job_id)
            error = InternalError(f"internal error: {type(exc).__name__}: {exc}")
            fail_or_requeue(job, verdict.job_id, verdict.source, error)
            if verdict.options.callback_url:
                send_callback(verdict.job_id, verdict.options.callback_url, job.settings.queue)
            return True
        callback_after(job, outcome, verdict.options.callback_url)
        return True

    def _ask(self, number: int, now: datetime) -> ClaimAsk | None:
        """As a job ends: the claim of job ``number`` to make with its outcome, or None to claim nothing."""
        if number >= len(self.verdicts) or self.held.lost or self.held.handed_back:
            return None
        verdict = self.verdicts[number]
        if isinstance(verdict, Refused):
            return None
        self.stop = why_stop(self.runner.settings, self.request)
        if self.stop is not None:
            return None
        return self.runner.ask(
            verdict.job_id, verdict.source, verdict.options, worker=self.request.hostname, tag=self.tag, now=now
        )

    def _hand_back(self, number: int) -> None:
        left = len(self.verdicts) - number
        if self.stop == STOPPING:
            log.warning(
                "message %s: the worker is stopping; its %d job(s) not started go back to the queue",
                self.request.id,
                left,
            )
        elif self.stop == PAUSED:
            log.info("message %s: its queue is paused; its %d job(s) not started go back to it", self.request.id, left)
        else:
            log.info(
                "message %s: an interactive job waits; its %d job(s) not started go back to the bulk queue",
                self.request.id,
                left,
            )
        raise Reject(self.stop, requeue=True)


STOPPING, YIELDING, PAUSED = "the worker is stopping", "an interactive job waits", "its queue is paused"


def why_stop(settings: Settings, request: Any) -> str | None:
    """Why a bulk message must hand its jobs not started back now (``STOPPING``, ``PAUSED``, ``YIELDING``), or None."""
    if worker_stopping():
        return STOPPING
    if queue_paused(runner(), request) is not None:
        return PAUSED
    if interactive_waiting(settings, request):
        return YIELDING
    return None


LOOK_EVERY = 0.02
"""Seconds between two looks of this process at the interactive queue (one LLEN) from bulk messages."""
_next_look = 0.0
_look_lock = threading.Lock()


def interactive_waiting(settings: Settings, request: Any) -> bool:
    """Whether an interactive job waits while this bulk message runs: it then yields its thread.

    Workers serve ``WSUPLOAD_QUEUE`` first, but a bulk message holds its thread for all its
    jobs: without yielding, an interactive job would wait for a whole message. One look
    per ``LOOK_EVERY`` per process (whichever thread is due), only for messages from the
    bulk queue, only where the queues are in the results Redis; an error is "no".
    """
    global _next_look
    if not settings.broker_is_results_redis:
        return False
    if (request.delivery_info or {}).get("routing_key") != settings.bulk_queue:
        return False
    now = time.monotonic()
    with _look_lock:
        if now < _next_look:
            return False
        _next_look = now + LOOK_EVERY
    try:
        return bool(runner().store.here().llen(settings.queue))
    except redis.RedisError:
        return False


def fail_or_requeue(job: JobRunner, job_id: str, source: str, error: UploadError) -> None:
    """End the job ``failed``; if Redis cannot record that now, send the message back (``Reject``).

    Acknowledged instead, the message's jobs not ended yet would be in no queue and never end.
    """
    try:
        job.fail(job_id, source, error)
    except Exception as exc:
        requeue_if_unrecordable(job, job_id, exc)
        raise


def requeue_if_unrecordable(job: JobRunner, job_id: str, exc: Exception) -> None:
    """``Reject`` with requeue when ``exc`` says Redis will not take the job's writes for now."""
    if isinstance(exc, redis.RedisError) and cannot_record_now(exc):
        requeue_for_redis(job, job_id, None, exc)
