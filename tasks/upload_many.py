"""The Celery task ``wsupload.upload_many``: a bulk message, several jobs run one after another.

A bulk enqueue on the Redis broker (``tasks.enqueue``) puts up to
``WSUPLOAD_JOBS_PER_MESSAGE`` jobs in one message, so Celery's and kombu's work per
message (fetch, unacked record, request, hand-over, ack) is shared by them. Each
job is still a job of its own: ``JobRunner.run_delivery`` claims it (its own
generation), writes its own documents, ends it and sends its callback; a job that
has ended is a no-op when the message is delivered again, so a redelivered message
re-runs only the jobs that had not ended.

The jobs run under one lease, the message's (``tasks.lease``), kept in the book for
the whole message and re-armed for each job: the renewer keeps it while the running
job shows signs of life, and a lease lost or handed back during one job stops the
jobs after it. The claim takes a job only while the message's lease is in kombu's
index (``tasks.fencing``), so a delivery that was paused past its lease claims
nothing more. The message stops when:

- its lease is lost or handed back (``LeaseLost``): the message is already back on
  its queue, or running elsewhere;
- the worker is stopping (SIGTERM) before its next job: the message goes back to its
  queue (``Reject`` with requeue) and the jobs not started run on another worker;
- Redis cannot record an outcome now: likewise back to its queue.

A job another delivery holds (``Superseded``) is left to it; the message goes on.
Bulk messages run on the Redis broker only: on RabbitMQ each of a bulk message's
jobs ends ``failed`` (``invalid_message``) saying so.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Reject

from wsupload.config.settings import UPLOAD_MANY_TASK_NAME
from wsupload.tasks import lease
from wsupload.tasks.errors import InternalError, InvalidMessage
from wsupload.tasks.fencing import Superseded
from wsupload.tasks.lease import LeaseLost
from wsupload.tasks.limits import clip
from wsupload.tasks.messages import Refused, UploadCall, bulk_jobs_in, read_upload_many
from wsupload.tasks.upload import cannot_record_now, delivery_tag, runner, send_callback, worker_stopping

log = logging.getLogger(__name__)

ON_RABBITMQ = InvalidMessage(
    "bulk messages (wsupload.upload_many) run on the Redis broker only; on RabbitMQ send one"
    " wsupload.upload message per job"
)


@shared_task(bind=True, name=UPLOAD_MANY_TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def upload_many(self: Task[Any, Any], /, *args: object, **kwargs: object) -> None:
    """``upload_many([[job_id, source], …], options=None)``: see the module docstring."""
    job = runner()
    try:
        verdicts = read_upload_many(args, kwargs, None)
    except InvalidMessage as exc:
        # The consumer moves such a message aside before it gets here (worker.consumer).
        ids = bulk_jobs_in(args)
        log.error("a %s message that cannot run: %s; ending its %d named job(s)", UPLOAD_MANY_TASK_NAME, exc, len(ids))
        for job_id in ids:
            job.fail(job_id, "", exc)
        return
    if job.settings.broker_is_amqp:
        for verdict in verdicts:
            job.fail(verdict.job_id, verdict.source, ON_RABBITMQ)
        return
    tag = delivery_tag(self.request, None, amqp=False)
    grace = job.settings.connect_timeout + job.settings.read_timeout + job.settings.lease
    message = lease.JobLease(verdicts[0].job_id, tag, grace)
    with lease.holding(message):
        for number, verdict in enumerate(verdicts):
            if number and worker_stopping():
                log.warning(
                    "message %s: the worker is stopping; its %d job(s) not started go back to the queue",
                    self.request.id,
                    len(verdicts) - number,
                )
                raise Reject("the worker is stopping", requeue=True)
            if not run_one(self, verdict, tag, message):
                return


def run_one(self: Task[Any, Any], verdict: UploadCall | Refused, tag: str | None, message: lease.JobLease) -> bool:
    """Run one job of the message; False when the message must stop here (its lease is gone)."""
    job = runner()
    if isinstance(verdict, Refused):
        job.fail(verdict.job_id, verdict.source, verdict.error)
        return True
    try:
        job.run_delivery(
            verdict.job_id, verdict.source, verdict.options, worker=self.request.hostname, tag=tag, held=message
        )
    except LeaseLost as exc:
        log.warning("%s; this delivery of message %s stops", exc, self.request.id)
        return False
    except Superseded as exc:
        log.warning("%s; this message goes on with its next job", exc)
        return True
    except Exception as exc:
        if cannot_record_now(exc):
            log.error(
                "job %s: Redis unreachable or refusing writes (%s); requeueing its message",
                verdict.job_id,
                clip(str(exc)),
            )
            raise Reject(str(exc), requeue=True) from None
        log.exception("job %s: internal error", verdict.job_id)
        job.fail(verdict.job_id, verdict.source, InternalError(f"internal error: {type(exc).__name__}: {exc}"))
    if verdict.options.callback_url:
        send_callback(verdict.job_id, verdict.options.callback_url, job.settings.queue)
    return True
