"""The producer wire contract: a ``wsupload.upload`` message exactly as Redis holds it, or as RabbitMQ is sent it.

Celery (message protocol v2) wrapped in kombu's Redis envelope, built here so a
batch of 10,000 jobs goes to Redis in a few pipelined round trips instead of
one ``send_task`` each. A producer in another language writes the same JSON with
``LPUSH <queue>``; ``tests/unit/test_wire.py`` checks it against what Celery
itself sends. On RabbitMQ (``amqp_message``) the same body and headers are published
to the default exchange with the queue's name as routing key (``tasks.wire.amqp_publisher``).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wsupload.config.settings import MARKER_TASK_NAME, UPLOAD_MANY_TASK_NAME, UPLOAD_TASK_NAME
from wsupload.tasks.wire.decode import JOBS_HEADER

_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_REPLY_TO = str(uuid.uuid4())
"""Celery's ``reply_to`` is the sending app's id; wsupload's results never travel back over AMQP."""
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def upload_call(job_id: str, source: str, options: dict[str, Any] | None = None) -> tuple[bytes, dict[str, Any]]:
    """The body (JSON bytes) and Celery headers of one job's message, whatever the broker."""
    args = [job_id, source]
    kwargs = {"options": options} if options else {}
    return json.dumps([args, kwargs, _EMBED]).encode(), _headers(UPLOAD_TASK_NAME, job_id, repr(args), repr(kwargs))


def _headers(task: str, task_id: str, argsrepr: str, kwargsrepr: str) -> dict[str, Any]:
    return {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": argsrepr,
        "kwargsrepr": kwargsrepr,
        "origin": _ORIGIN,
        "ignore_result": None,
    }


def upload_message(job_id: str, source: str, queue: str, options: dict[str, Any] | None = None) -> str:
    """The JSON string to ``LPUSH`` onto ``queue`` for one job."""
    return _redis_envelope(*upload_call(job_id, source, options), queue)


def upload_many_message(jobs: Sequence[tuple[str, str]], queue: str, options: dict[str, Any] | None = None) -> str:
    """The JSON string to ``LPUSH`` onto ``queue`` for a bulk message: ``jobs`` are (job id, source) pairs.

    Task ``wsupload.upload_many``, args ``[[[job_id, source], …]]``, kwargs ``{"options": …}``
    (shared by every job of the message) and the header ``wsupload_jobs`` listing the
    job ids in the same order; its task id is its own, not a job's.
    """
    args = [[[job_id, source] for job_id, source in jobs]]
    kwargs = {"options": options} if options else {}
    body = json.dumps([args, kwargs, _EMBED]).encode()
    headers = _headers(UPLOAD_MANY_TASK_NAME, uuid.uuid4().hex, f"<{len(jobs)} jobs>", repr(kwargs))
    headers[JOBS_HEADER] = [job_id for job_id, _ in jobs]
    return _redis_envelope(body, headers, queue)


def _redis_envelope(body: bytes, headers: dict[str, Any], queue: str) -> str:
    """kombu's Redis envelope around a Celery message."""
    properties = {
        "correlation_id": headers["id"],
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": properties,
    }
    return json.dumps(envelope)


@dataclass(frozen=True)
class AmqpMessage:
    """One job's message as Celery publishes it over AMQP 0-9-1: to the default exchange ``""``,
    routing key = the queue's name, these body, headers (``application_headers``) and properties."""

    routing_key: str
    body: bytes
    headers: dict[str, Any]
    properties: dict[str, Any]


def amqp_message(job_id: str, source: str, queue: str, options: dict[str, Any] | None = None) -> AmqpMessage:
    """What ``send_task`` publishes for one job on RabbitMQ (checked in ``tests/integration/test_amqp_wire.py``)."""
    body, headers = upload_call(job_id, source, options)
    properties = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "delivery_mode": 2,  # persistent (quorum queues keep every message on disk anyway)
        "priority": 0,
        "correlation_id": job_id,
        "reply_to": _REPLY_TO,
    }
    return AmqpMessage(queue, body, headers, properties)


def marker_message(queue: str, token: str) -> AmqpMessage:
    """The sweep's marker for ``queue`` (``tasks.recovery.markers``): ``wsupload.marker``, args ``[queue, token]``."""
    args = [queue, token]
    body = json.dumps([args, {}, _EMBED]).encode()
    properties = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "delivery_mode": 2,
        "priority": 0,  # the lowest, should a queue ever have priorities (quorum queues have none)
        "correlation_id": token,
        "reply_to": _REPLY_TO,
    }
    return AmqpMessage(queue, body, _headers(MARKER_TASK_NAME, token, repr(args), "{}"), properties)
