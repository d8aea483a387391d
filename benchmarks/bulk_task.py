"""A prototype Celery task ``wsupload.upload_many``: one message carrying several upload jobs.

Tooling, not runtime: only the worker ``benchmarks/bulk.py`` starts imports it,
to measure against one message per job how much of Celery's and kombu's work
per message (fetch, unacked bookkeeping, request, hand-over, ack) the jobs of
a message share. It is not in the shipped worker: what it still lacks (the
sweep's places for each job of a message, the consumer's check of its
arguments, a lease lost between two jobs) is listed in ``benchmarks/BULK.md``.

The message carries ``[[job_id, source], …]`` (a third item, the job's options,
is optional). Each job is still a job of its own: ``JobRunner.run_delivery``
claims it (its own generation, ``tasks.fencing``), writes its own document and
outcome, and a job that has ended is not run again, so a redelivered message
re-runs only the jobs that had not ended. The jobs run one after the other on
the message's thread, each under a ``JobLease`` carrying the message's
delivery tag: the renewer keeps the message's lease while the running job
shows signs of life, as for ``wsupload.upload``. Between two jobs a lease for
the message itself sits in the book, so a lease lost or handed back then is
seen too.

Once one job finds the message's lease lost, a write refused (another delivery
of this message runs its jobs now) or the message handed back, the message stops:
going on would claim the next jobs under the other delivery's feet.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Reject

from wsupload.tasks import lease
from wsupload.tasks.errors import InternalError, UploadError
from wsupload.tasks.fencing import Superseded
from wsupload.tasks.lease import LeaseLost
from wsupload.tasks.messages import NoJobId, read_upload_call, shown
from wsupload.tasks.upload import cannot_record_now, runner, send_callback

log = logging.getLogger(__name__)

UPLOAD_MANY_TASK_NAME = "wsupload.upload_many"


@shared_task(bind=True, name=UPLOAD_MANY_TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def upload_many(self: Task[Any, Any], /, jobs: object = None, **_: object) -> None:
    """Run each ``[job_id, source(, options)]`` of ``jobs`` in turn: see the module docstring."""
    job = runner()
    if not isinstance(jobs, list):
        log.error("dropping a %s message without a list of jobs", UPLOAD_MANY_TASK_NAME)
        return
    properties = self.request.properties or {}
    tag = properties.get("delivery_tag")
    tag = tag if isinstance(tag, str) else None
    # Stands for the message between its jobs; each job's own lease replaces it while the job runs.
    message = lease.JobLease(f"message {self.request.id} ({len(jobs)} jobs)", tag, job.settings.lease * 3)
    for number, item in enumerate(jobs, 1):
        if message.lost or message.handed_back:
            log.warning("%s: stopped before its job %d of %d; this delivery stops", message.job_id, number, len(jobs))
            return
        lease.BOOK.add(message)
        message.tick()
        args = item if isinstance(item, list) else [item]
        kwargs = {"options": args[2]} if len(args) > 2 else {}
        try:
            call = read_upload_call(args[:2], kwargs)
        except NoJobId as exc:
            log.error("%s: dropping job %d that names no job: %s", message.job_id, number, exc.message)
            continue
        except UploadError as exc:
            job.fail(str(args[0]), shown(args[1] if len(args) > 1 else ""), exc)
            continue
        try:
            job.run_delivery(call.job_id, call.source, call.options, worker=self.request.hostname, tag=tag)
        except (LeaseLost, Superseded) as exc:
            log.warning("%s; this delivery stops", exc)
            lease.BOOK.remove(message)
            return
        except Exception as exc:
            if cannot_record_now(exc):
                log.error("job %s: Redis unreachable or refusing writes (%s); requeueing", call.job_id, exc)
                lease.BOOK.remove(message)
                raise Reject(str(exc), requeue=True) from None
            log.exception("job %s: internal error", call.job_id)
            job.fail(call.job_id, call.source, InternalError(f"internal error: {type(exc).__name__}: {exc}"))
        if call.options.callback_url:
            send_callback(call.job_id, call.options.callback_url, job.settings.queue)
    lease.BOOK.remove(message)
