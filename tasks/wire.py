"""The producer wire contract: a ``wsupload.upload`` message exactly as Redis holds it.

Celery (message protocol v2) wrapped in kombu's Redis envelope, built here so a
batch of 10,000 jobs goes to Redis in a few pipelined round trips instead of
one ``send_task`` each. A producer in another language writes the same JSON with
``LPUSH <queue>``; ``tests/unit/test_wire.py`` checks it against what Celery
itself sends.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

from wsupload.config.settings import UPLOAD_TASK_NAME

_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def upload_message(job_id: str, source: str, queue: str, options: dict[str, Any] | None = None) -> str:
    """The JSON string to ``LPUSH`` onto ``queue`` for one job."""
    args = [job_id, source]
    kwargs = {"options": options} if options else {}
    body = json.dumps([args, kwargs, _EMBED]).encode()
    headers = {
        "lang": "py",
        "task": UPLOAD_TASK_NAME,
        "id": job_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": job_id,
        "parent_id": None,
        "argsrepr": repr(args),
        "kwargsrepr": repr(kwargs),
        "origin": _ORIGIN,
        "ignore_result": None,
    }
    properties = {
        "correlation_id": job_id,
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
