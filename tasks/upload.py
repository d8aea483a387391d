"""The Celery task ``wsupload.upload``: the thin shell around ``tasks.job``.

The message carries only ``[job_id, source]`` (+ ``options``); the API key
comes from the worker's environment. The HTTP session, Redis client and
settings are the process's own (``tasks.runtime``), built once after the fork.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import Task, shared_task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.exceptions import TimeLimitExceeded as HardTimeLimitExceeded

from wsupload.config.settings import UPLOAD_TASK_NAME, Settings
from wsupload.tasks import runtime
from wsupload.tasks.callbacks import callback
from wsupload.tasks.errors import InternalError, TimeLimitExceeded, UploadError
from wsupload.tasks.job import JobRunner
from wsupload.tasks.messages import NoJobId, job_id_of, read_upload_call, shown

log = logging.getLogger(__name__)

FINAL_SAVE_MARGIN = 1.0
"""Seconds kept free before the soft time limit to write the final document."""
REDIS_UNAVAILABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,  # full, under maxmemory-policy noeviction
    redis.exceptions.ReadOnlyError,  # a replica, after a failover
)
"""Redis cannot record the outcome now: the job must run again, not end."""


def runner() -> JobRunner:
    return runtime.current().runner


def time_limit_message(settings: Settings, which: str, seconds: int) -> str:
    return (
        f"the upload did not finish within the task's {which} time limit ({seconds} s, "
        f"derived from WSUPLOAD_VISIBILITY_TIMEOUT={settings.visibility_timeout})"
    )


class UploadTask(Task[Any, Any]):
    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # Celery calls this in the pool's parent when a child is killed at the
        # hard time limit (the soft limit did not get it to stop). The message
        # is acknowledged then, so record the failure or the job would stay
        # "running" for good.
        if not isinstance(exc, HardTimeLimitExceeded):
            return
        try:
            call = read_upload_call(args, kwargs, task_id)
        except UploadError:
            return  # the child refused this message before it started: its outcome is recorded
        # The pool's parent: its store, not a runner with an HTTP session it never uses.
        here = runtime.current()
        try:
            message = time_limit_message(here.settings, "hard", here.settings.hard_time_limit)
            doc = here.store.end_with_error(call.job_id, TimeLimitExceeded(message))
            log.error("job %s failed (time_limit): %s", call.job_id, doc["error"]["message"])
        except Exception:
            log.exception("job %s: could not record the hard time limit", call.job_id)
            return
        # The child that would have sent the callback was killed: send it from here.
        if call.options.callback_url:
            send_callback(call.job_id, call.options.callback_url, here.settings.queue)


@shared_task(
    base=UploadTask, bind=True, name=UPLOAD_TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True
)
def upload(self: UploadTask, /, *args: object, **kwargs: object) -> None:
    """``upload(job_id, source, options=None)``, taking whatever a producer sent.

    Any arguments are accepted here and judged by ``tasks.messages``: Python
    would raise a TypeError before the body ran, and the job would stay
    ``queued``. The worker's consumer moves messages that name no job aside
    before they get here; this still ends every job it can name.
    """
    started = time.monotonic()
    job = runner()
    try:
        call = read_upload_call(args, kwargs, self.request.id)
    except NoJobId as exc:
        log.error("dropping a %s message that names no job: %s", UPLOAD_TASK_NAME, exc.message)
        return
    except UploadError as exc:  # InvalidMessage or InvalidInput, with a job to record it in
        job_id = job_id_of(args, kwargs, self.request.id)
        assert job_id is not None
        job.fail(job_id, shown(kwargs.get("source", args[1] if len(args) > 1 else "")), exc)
        return
    job_id, source = call.job_id, call.source
    try:
        budget = job.settings.soft_time_limit - (time.monotonic() - started) - FINAL_SAVE_MARGIN
        job.run(job_id, source, call.options, time_budget=budget)
    except SoftTimeLimitExceeded:
        message = time_limit_message(job.settings, "soft", job.settings.soft_time_limit)
        job.fail(job_id, source, TimeLimitExceeded(message))
    except REDIS_UNAVAILABLE as exc:
        # Without a Redis that takes writes the outcome cannot be recorded: hand the
        # message back so the job runs again, rather than vanish or end "failed".
        log.error("job %s: Redis unreachable or refusing writes (%s); requeueing", job_id, exc)
        raise Reject(str(exc), requeue=True) from None
    except Exception as exc:
        log.exception("job %s: internal error", job_id)
        job.fail(job_id, source, InternalError(f"internal error: {type(exc).__name__}: {exc}"))
    if call.options.callback_url:
        send_callback(job_id, call.options.callback_url, job.settings.queue)


def send_callback(job_id: str, url: str, queue: str) -> None:
    """Hand delivery to its own task: the upload's outcome is already recorded."""
    try:
        callback.apply_async(args=(job_id, url), queue=queue)
    except Exception:
        log.exception("job %s: could not queue its callback", job_id)
