"""The Celery task ``wsupload.upload``: the thin shell around ``tasks.job``.

The message carries only ``[job_id, source]`` (+ ``options``); the API key
comes from the worker's environment. The HTTP session, Redis client and
settings are the process's own (``tasks.runtime``). The job runs under its
message's lease (``tasks.recovery.lease``) and its delivery's generation
(``tasks.store.fencing``); there are no Celery time limits: ``WSUPLOAD_JOB_TIMEOUT``
is enforced inside the job.

A job cancelled while it runs (``tasks.recovery.lease``) stops its delivery, which writes
nothing (the producer wrote the end) and is acknowledged. A cancelled job's callback is
sent once, by the first delivery that takes the duty from its cancel request
(``take_cancel_callback``): the one that was running it, or the first to meet its message.

A job that ends ``failed`` in this delivery raises ``JobFailed`` once its outcome is
recorded and its callback queued, so Celery's own tools (events, Flower) see a
FAILURE with the job's readable error; the message is still acknowledged and the
task never retried by Celery. A delivery that stops, or finds its job already
ended, raises nothing, except on RabbitMQ a job handed back as its worker stops:
its message is rejected with requeue (acknowledged, it would be lost), or, if it
was acknowledged early (``worker.amqp_leases``), its owed entry falls due now.
A delivery whose queue is paused (``tasks.store.pauses``: a message fetched before the pause
reached this worker's consumer) goes back to its queue before it claims anything (``Reject``
with requeue; on RabbitMQ, acknowledged early, its owed entry falls due now).
On RabbitMQ a delivery handed back while it waited for a thread returns at once,
touching nothing, and one that cannot record its outcome in Redis waits for Redis
(``tasks.recovery.redis_wait``, bounded) before its message goes back.

A Celery client's ``link`` gets the document's ``result`` from the delivery that wrote the
success, and from no other: with a link attached, every other delivery that does not fail raises
``Ignore`` (the message is still acknowledged, as by a return). The task sends the links itself
(``send_links``) and leaves Celery none to send: a send that fails (the broker away) is logged
and the job stays a success, where Celery would turn it into a failure and run the
``link_error`` of a job that succeeded. ``link_error`` runs where ``JobFailed`` is raised, once: Celery
sends it, unknown to this worker, with the task id (the job id). Neither goes to wsupload's
queues unless the signature names one (``worker.app.route_foreign``).
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import redis
from celery import Task, shared_task, signature
from celery.exceptions import Ignore, Reject
from celery.worker import state

from wsupload.config.settings import UPLOAD_TASK_NAME
from wsupload.errors import Cancelled, InternalError, JobFailed, LeaseLost, NoJobId, Superseded, UploadError
from wsupload.tasks import runtime
from wsupload.tasks.callbacks import callback
from wsupload.tasks.job import JobRunner, Outcome
from wsupload.tasks.observe import redaction
from wsupload.tasks.observe.bounds import clip
from wsupload.tasks.recovery import early_acks, redis_wait
from wsupload.tasks.store import keys, pauses, results
from wsupload.tasks.wire.decode import job_id_of, read_upload_call, shown

log = logging.getLogger(__name__)

REDIS_UNAVAILABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,  # full, under maxmemory-policy noeviction
    redis.exceptions.ReadOnlyError,  # a replica, after a failover
)
"""Redis cannot record the outcome now: the job must run again, not end."""
REFUSING_FOR_NOW = ("MISCONF", "NOREPLICAS", "BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN")
"""Redis's own words for a refusal that passes (a failed RDB save, too few replicas, a long script, a restart)."""


def cannot_record_now(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis will not take the job's writes for now (rather than that they are wrong)."""
    if isinstance(exc, REDIS_UNAVAILABLE):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(REFUSING_FOR_NOW)


def runner() -> JobRunner:
    return runtime.current().runner


class UploadTask(Task):  # type: ignore[type-arg]
    # Acknowledged under one lock with the worker's early acks on RabbitMQ (worker.amqp_leases).
    Request = "wsupload.worker.amqp_leases:Request"


@shared_task(
    bind=True,
    name=UPLOAD_TASK_NAME,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    base=UploadTask,
    # Expected: logged by Celery as one line ("raised expected"), no traceback; the job's own line says more.
    throws=(JobFailed,),
)
def upload(self: Task[Any, Any], /, *args: object, **kwargs: object) -> dict[str, Any] | None:
    """``upload(job_id, source, options=None)``, taking whatever a producer sent.

    Any arguments are accepted here and judged by ``tasks.wire.decode``: Python
    would raise a TypeError before the body ran, and the job would stay
    ``queued``. The worker's consumer moves messages that name no job aside
    before they get here; this still ends every job it can name.
    """
    job = runner()
    amqp = job.settings.broker_is_amqp
    tag = delivery_tag(self.request, job_id_of(args, kwargs, self.request.id), amqp=amqp)
    if amqp and not early_acks.STARTS.begin(tag):
        # Handed back while it waited for a thread (worker.amqp_leases): another delivery runs it.
        log.info("delivery %s: its message went back to its queue while it waited; skipped", clip(tag or ""))
        return for_links(self, None)
    try:
        succeeded = run_upload(self, job, tag, args, kwargs)
    finally:
        if amqp:
            early_acks.STARTS.end(tag)
    return for_links(self, succeeded)


def for_links(task: Task[Any, Any], succeeded: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the task returns: nothing, unless a ``link`` is attached (Celery's ``callbacks``).

    Then the result dict if this delivery wrote the success, its links sent here; any other
    delivery raises ``Ignore`` rather than return, so a link runs once, from the delivery that
    ended the job.
    """
    request = task.request
    if not getattr(request, "callbacks", None):
        return None
    if succeeded is None:
        raise Ignore()
    send_links(task, succeeded)
    return succeeded


def send_links(task: Task[Any, Any], result: dict[str, Any]) -> None:
    """Send the request's links with ``result``, as Celery would, then leave it none to send.

    A link that cannot be sent is logged and dropped (links are at most once): the job
    succeeded, and Celery's own send, failing, would record a failure and run the errbacks.
    """
    request = task.request
    links: list[Any] = list(request.callbacks or ())
    request.callbacks = None
    job_id = str(request.id)
    for link in links:
        try:
            signature(link, app=task.app).apply_async((result,), parent_id=job_id, root_id=request.root_id or job_id)
        except Exception as exc:  # the broker away, a signature that cannot be encoded: the job stays a success
            log.error(
                "job %s succeeded, but its link %s could not be sent (%s): it is not run",
                clip(job_id),
                clip(str(link.get("task") if isinstance(link, dict) else link)),
                clip(f"{type(exc).__name__}: {exc}"),
            )


def run_upload(
    self: Task[Any, Any], job: JobRunner, tag: str | None, args: tuple[object, ...], kwargs: dict[str, object]
) -> dict[str, Any] | None:
    """The task's body, once this delivery may run: the result dict if it wrote the job's success, else None."""
    paused = queue_paused(job, self.request)
    if paused is not None:
        hand_back_paused(job, job_id_of(args, kwargs, self.request.id) or str(self.request.id), tag, paused)
        return None
    try:
        call = read_upload_call(args, kwargs, self.request.id)
    except NoJobId as exc:
        log.error("dropping a %s message that names no job: %s", UPLOAD_TASK_NAME, exc.message)
        return None
    except UploadError as exc:  # InvalidMessage or InvalidInput, with a job to record it in
        job_id = job_id_of(args, kwargs, self.request.id)
        assert job_id is not None
        try:
            outcome = job.fail(job_id, shown(kwargs.get("source", args[1] if len(args) > 1 else "")), exc)
        except redis.RedisError as failed:
            if not cannot_record_now(failed):
                raise
            requeue_for_redis(job, job_id, tag, failed)  # acknowledged, the job would stay queued for good
        raise_if_failed_here(outcome)
        return None
    job_id, source = call.job_id, call.source
    amqp = job.settings.broker_is_amqp
    try:
        outcome = job.run_delivery(job_id, source, call.options, worker=self.request.hostname, tag=tag)
    except Cancelled as exc:
        log.info("%s", exc)
        settle_early_ack(job_id, tag, job.store.redis)
        send_cancel_callback(job, job_id, call.options.callback_url)
        return None
    except Superseded as exc:
        # Another delivery holds the job now (this one was paused or hung past its
        # lease), or a producer cancelled it: nothing of ours is written, and its message is done with.
        early_acks.EARLY.pop(tag)
        log.warning("%s; this delivery stops", exc)
        send_cancel_callback(job, job_id, call.options.callback_url)
        return None
    except LeaseLost as exc:
        # The worker is stopping and handed the job back (or, on Redis, the lease went to another worker).
        log.warning("%s; this delivery stops", exc)
        if amqp:
            hand_back_on_rabbitmq(job_id, tag, job.store.redis)
        return None
    except Exception as exc:
        if isinstance(exc, redis.RedisError) and cannot_record_now(exc):
            requeue_for_redis(job, job_id, tag, exc)
        # Before the job ran (run() records its own internal errors), or Redis refused it for good.
        log.exception("job %s: internal error", job_id)
        outcome = job.fail(job_id, source, InternalError(f"internal error: {type(exc).__name__}: {exc}"))
    settle_early_ack(job_id, tag, job.store.redis)
    callback_after(job, outcome, call.options.callback_url)
    raise_if_failed_here(outcome)
    return succeeded_here(outcome)


def queue_paused(job: JobRunner, request: Any) -> str | None:
    """The queue this delivery's message came from, if it is paused now (``tasks.store.pauses.BOARD``)."""
    queue = (request.delivery_info or {}).get("routing_key")
    if pauses.BOARD.is_paused(queue, lambda: pauses.paused(job.store.here())):
        return str(queue)
    return None


def hand_back_paused(job: JobRunner, job_id: str, tag: str | None, queue: str) -> None:
    """A message of a paused queue met before its job started: back to its queue (``Reject``), nothing
    claimed; on RabbitMQ, acknowledged early, its owed entry falls due now (the sweep publishes it again)."""
    log.info("job %s: queue %s is paused; its message goes back to the queue", job_id, queue)
    why = f"queue {queue} is paused"
    if job.settings.broker_is_amqp:
        hand_back_on_rabbitmq(job_id, tag, job.store.redis, why)
        return
    raise Reject(why, requeue=True)


def succeeded_here(outcome: Outcome) -> dict[str, Any] | None:
    """The document's ``result`` when this delivery ended the job ``succeeded``."""
    if not outcome.ended_here or outcome.doc["status"] != results.SUCCEEDED:
        return None
    result = outcome.doc.get("result")
    return result if isinstance(result, dict) else None


def callback_after(job: JobRunner, outcome: Outcome, url: str | None) -> None:
    """Queue the callback of a job this delivery leaves ended; a cancelled job's only once, fleet-wide."""
    if not url:
        return
    if outcome.doc["status"] == results.CANCELLED and not outcome.ended_here:
        send_cancel_callback(job, outcome.doc["job_id"], url)
    else:
        send_callback(outcome.doc["job_id"], url, job.settings.queue)


def send_cancel_callback(job: JobRunner, job_id: str, url: str | None) -> None:
    """Queue a cancelled job's callback if this delivery takes the duty (``take_cancel_callback``)."""
    if url and take_cancel_callback(job, job_id):
        send_callback(job_id, url, job.settings.queue)


def was_cancelled(job: JobRunner, job_id: str) -> bool:
    """Whether a producer cancelled the job (its cancel request is in Redis); an error is "no"."""
    try:
        return bool(job.store.here().exists(keys.cancel(job_id)))
    except redis.RedisError:
        return False


def take_cancel_callback(job: JobRunner, job_id: str) -> bool:
    """Whether this delivery sends the callback of a job a producer cancelled: the first to ask does.

    The cancel request (``keys.cancel``) holds the duty until one delivery takes it (``HDEL``):
    the producer cannot sign a callback, and a message met twice must not send it twice.
    False for a job that was not cancelled.
    """
    try:
        return bool(job.store.here().hdel(keys.cancel(job_id), "callback"))
    except redis.RedisError as exc:
        log.warning("job %s: cannot take its callback duty (%s); its callback is not sent", job_id, clip(str(exc)))
        return False


def requeue_for_redis(job: JobRunner, job_id: str, tag: str | None, exc: redis.RedisError) -> NoReturn:
    """Without a Redis that takes writes the outcome cannot be recorded: hand the message back
    (``Reject`` with requeue) so the job runs again, rather than vanish or end "failed".

    Acknowledged early on RabbitMQ, its owed entry (no longer renewed) brings it back.
    """
    acked_early = early_acks.EARLY.pop(tag) is not None
    if not job.settings.broker_is_amqp or acked_early:  # (acknowledged early, the reject does nothing)
        log.error("job %s: Redis unreachable or refusing writes (%s); requeueing", job_id, clip(str(exc)))
        raise Reject(str(exc), requeue=True) from None
    budget = redis_wait.wait_budget(early_acks.early_ack_after(job.settings.amqp_consumer_timeout))
    log.error(
        "job %s: Redis unreachable or refusing writes (%s); requeueing once it takes writes again, or in %.0f s",
        job_id,
        clip(str(exc)),
        budget,
    )
    # RabbitMQ delivers a requeued message again at once: without this pause every
    # worker would loop on it, and a quorum queue's delivery-limit would drop it.
    redis_wait.wait_for_writes(
        lambda: redis_wait.takes_writes(job.store.redis), budget=budget, stopping=worker_stopping
    )
    raise Reject(str(exc), requeue=True) from None


def worker_stopping() -> bool:
    """Whether Celery has begun a warm or cold shutdown of this worker."""
    return state.should_stop is not None or state.should_terminate is not None


def delivery_tag(request: Any, job_id: str | None, *, amqp: bool) -> str | None:
    """The key of this delivery's lease: kombu's tag on Redis, ``tasks.recovery.early_acks.amqp_tag`` on RabbitMQ."""
    if amqp:
        return early_acks.amqp_tag(job_id, request.id)
    tag = (request.properties or {}).get("delivery_tag")
    return tag if isinstance(tag, str) else None


def hand_back_on_rabbitmq(
    job_id: str, tag: str | None, client: redis.Redis, why: str = "handed back as the worker stops"
) -> None:
    """A job handed back (as its worker stops, or its queue paused): its message goes back to its queue
    (``Reject``, saying ``why``), or, acknowledged early, its owed entry falls due now and the sweep publishes it."""
    early = early_acks.EARLY.pop(tag)
    if early is None:
        raise Reject(why, requeue=True)
    try:
        early_acks.OwedSet(client).owe({early.queue: [job_id]}, 0, mode="XX")
    except redis.RedisError as exc:
        log.warning("job %s: could not mark it due now (%s); it returns once its owed entry expires", job_id, exc)


def settle_early_ack(job_id: str, tag: str | None, client: redis.Redis) -> None:
    """The job has ended: an early-acknowledged delivery removes its owed entry (else the sweep drops it later)."""
    early = early_acks.EARLY.pop(tag)
    if early is None:
        return
    try:
        early_acks.OwedSet(client).remove(early.queue, [job_id])
    except redis.RedisError as exc:
        log.warning("job %s: could not clear its owed entry (%s); the sweep drops it", job_id, exc)


def raise_if_failed_here(outcome: Outcome) -> None:
    """``JobFailed`` when this delivery ended the job ``failed``: Celery's FAILURE, after the fact."""
    if not outcome.failed_here:
        return
    error = outcome.doc.get("error") or {}
    message = redaction.redact(str(error.get("message", "")))  # redacted when recorded; events are not logs
    raise JobFailed(outcome.doc["job_id"], str(error.get("kind", "failed")), message) from None


def send_callback(job_id: str, url: str, queue: str) -> None:
    """Hand delivery to its own task: the upload's outcome is already recorded."""
    try:
        callback.apply_async(args=(job_id, url), queue=queue)
    except Exception:
        log.exception("job %s: could not queue its callback", job_id)
