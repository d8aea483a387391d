"""Celery's consumer, with every message it cannot run moved aside instead of dropped.

Celery's own handling of a message without a task name, of an unknown task, of
an invalid one and of a body it cannot decode is to log it (with a traceback)
and drop it; and a protocol-2 body is only decoded in the pool child, where a
bad one fails the task before it starts, so the job's document stays
``queued``. Here each message is read in the consumer before dispatch —
headers, task name, body, and for ``wsupload.upload`` the arguments (see
``tasks.wire.decode``) — and what cannot run goes to the quarantine
(``worker.quarantine``): the dead-letter list, the job's failed document, one
log line. Then it is acknowledged. Sources and options are not judged here:
a bad source is the job's own outcome (``invalid_input``), recorded by the task.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, ClassVar

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.message import Message

from wsupload.config.settings import UPLOAD_MANY_TASK_NAME, UPLOAD_TASK_NAME
from wsupload.errors import InvalidMessage
from wsupload.tasks.observe.bounds import clip
from wsupload.tasks.wire.decode import (
    bulk_jobs_in,
    check_upload_call,
    check_upload_many,
    is_upload_task,
    job_id_of,
    jobs_named,
)
from wsupload.worker.quarantine import Quarantine

log = logging.getLogger(__name__)
Problem = tuple[str, list[str]]
"""Why a message cannot run, and the jobs it names (if any)."""


def message_problem(message: Message, known_tasks: Any) -> Problem | None:
    """Why ``message`` cannot be handed to a task, or None if it can."""
    headers: object = message.headers
    if not isinstance(headers, dict):
        return "the message has no headers object (wsupload reads Celery message protocol 2)", []
    task, task_id = headers.get("task"), headers.get("id")
    job_ids = jobs_named(headers)
    if not isinstance(task, str):
        return "the message has no 'task' header (wsupload reads Celery message protocol 2)", job_ids
    if task not in known_tasks:
        return f"unknown task {clip(task)!r}", job_ids
    if not isinstance(task_id, str) or not task_id:
        return "the message has no 'id' header", job_ids
    try:
        body = message.decode()
    except Exception as exc:  # the serializer's errors, whatever they are
        return f"the body cannot be decoded ({message.content_type}): {type(exc).__name__}: {clip(str(exc))}", job_ids
    if not (
        isinstance(body, list | tuple)
        and len(body) == 3
        and isinstance(body[0], list | tuple)
        and isinstance(body[1], dict)
        and isinstance(body[2], dict | None)
    ):
        return "the body is not [args, kwargs, embed] (Celery message protocol 2)", job_ids
    if task == UPLOAD_TASK_NAME:
        try:
            check_upload_call(body[0], body[1], task_id)
        except InvalidMessage as exc:
            job_id = job_id_of(body[0], body[1], task_id)
            return exc.message, [job_id] if job_id else []
        except Exception:  # noqa: S110 - anything else is the task's to record, as its source and options are
            pass
    if task == UPLOAD_MANY_TASK_NAME:
        try:
            check_upload_many(body[0], body[1], job_ids)  # a job's bad source or options: its own outcome
        except InvalidMessage as exc:
            return exc.message, list(dict.fromkeys([*job_ids, *bulk_jobs_in(body[0])]))
    return None


def raw_message(message: Message) -> str:
    """The message as the broker held it (kombu's envelope for virtual transports)."""
    raw = getattr(message, "_raw", None)
    if isinstance(raw, dict):
        return json.dumps(raw, default=repr)
    body = message.body.decode("utf-8", "replace") if isinstance(message.body, bytes) else str(message.body)
    return json.dumps(
        {"headers": message.headers, "properties": message.properties, "body": body},
        default=repr,
    )


_CeleryBlueprint: Any = CeleryConsumer.Blueprint


class _Blueprint(_CeleryBlueprint):  # type: ignore[misc]
    # Celery turns on RabbitMQ "native delayed delivery" when it sees quorum queues: 28 topic
    # exchanges and 28 quorum queues per vhost, for ETAs and countdowns, which wsupload never
    # sends (retries run inside the task).
    default_steps: ClassVar[list[str]] = [
        step for step in _CeleryBlueprint.default_steps if not step.endswith(":DelayedDelivery")
    ]


class Consumer(CeleryConsumer):
    Blueprint = _Blueprint

    @property
    def quarantine(self) -> Quarantine:
        found: Quarantine | None = getattr(self.app, "quarantine", None)
        assert found is not None, "the app was not made by worker.app.create_app"
        return found

    def create_task_handler(self, promise: Any = None) -> Callable[[Message], Any]:
        dispatch = super().create_task_handler() if promise is None else super().create_task_handler(promise)
        known = self.app.tasks

        def on_task_received(message: Message) -> Any:
            try:
                problem = message_problem(message, known)
            except Exception as exc:
                problem = (f"the message cannot be read: {type(exc).__name__}: {clip(str(exc))}", [])
            if problem is not None:
                return self.move_aside(message, *problem)
            try:
                return dispatch(message)
            except Exception as exc:
                # Celery could not build a request from it (a bad eta, a header of the wrong type).
                problem = (f"Celery could not dispatch it: {type(exc).__name__}: {clip(str(exc))}", [])
                return self.move_aside(message, *problem)

        return on_task_received

    def move_aside(self, message: Message, reason: str, job_ids: list[str]) -> None:
        headers: object = message.headers
        info: object = message.delivery_info
        headers = headers if isinstance(headers, dict) else {}
        info = info if isinstance(info, dict) else {}
        self.quarantine(
            raw_message(message),
            reason,
            queue=info.get("routing_key"),
            job_ids=job_ids,
            is_upload=is_upload_task(headers.get("task")),
        )
        if not message.acknowledged:
            message.ack_log_error(log, self.connection_errors)  # type: ignore[attr-defined]

    # Celery's own handlers for these cases log and drop; they are reached only
    # if dispatch finds something the check above did not.
    def on_unknown_message(self, body: Any, message: Message) -> None:
        self.move_aside(message, "the message has no task name", [])

    def on_unknown_task(self, body: Any, message: Message, exc: BaseException) -> None:
        self.move_aside(message, f"unknown task: {exc}", [])

    def on_invalid_task(self, body: Any, message: Message, exc: BaseException) -> None:
        self.move_aside(message, f"invalid task message: {clip(str(exc))}", [])

    def on_decode_error(self, message: Message, exc: BaseException) -> None:
        self.move_aside(message, f"the body cannot be decoded: {type(exc).__name__}: {clip(str(exc))}", [])
