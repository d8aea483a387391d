"""A plain Celery client of wsupload, as a web app would write it: Celery, and wsupload's result backend.

Run as a process of its own by ``test_celery_client`` (so what it imports is its own), configured by
``CLIENT_*`` variables. It imports nothing of wsupload but what ``result_backend="wsupload+…"``
loads, and reports that (``sys.modules``).

    python -m tests.integration.celery_client worker       # consumes ``celery`` and CLIENT_ERRBACK_QUEUE
    python -m tests.integration.celery_client run SPEC     # sends and gets the jobs SPEC (JSON) lists

The worker's tasks record what they receive in the Redis list CLIENT_RECORDS (JSON objects).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import TimeoutError
from celery.signals import worker_ready
from kombu import Exchange, Queue

ENV = os.environ
QUEUE = ENV["CLIENT_QUEUE"]
"""wsupload's queue (the workers' WSUPLOAD_QUEUE)."""
ERRBACK_QUEUE = ENV["CLIENT_ERRBACK_QUEUE"]
"""A queue of the client's own, for its errback."""
AMQP = ENV["CLIENT_BROKER"].startswith("amqp")

app = Celery("client", broker=ENV["CLIENT_BROKER"], backend=ENV["CLIENT_BACKEND"])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    task_routes={"wsupload.upload": {"queue": QUEUE}},
    task_queues=[
        Queue("celery", Exchange("celery", "direct"), routing_key="celery"),
        Queue(ERRBACK_QUEUE, Exchange(ERRBACK_QUEUE, "direct"), routing_key=ERRBACK_QUEUE),
        # On RabbitMQ wsupload's queues are quorum queues: declared any other way, they are refused.
        Queue(QUEUE, Exchange(QUEUE, "direct"), routing_key=QUEUE, queue_arguments={"x-queue-type": "quorum"}),
    ],
)


def record(entry: dict[str, Any]) -> None:
    redis.Redis.from_url(ENV["CLIENT_REDIS"]).rpush(ENV["CLIENT_RECORDS"], json.dumps(entry))


@app.task(bind=True, name="client.on_done")
def on_done(self: Task[Any, Any], result: Any) -> None:
    info = self.request.delivery_info or {}
    record({"task": "on_done", "job_id": self.request.parent_id, "result": result, "queue": info.get("routing_key")})


@app.task(bind=True, name="client.on_error")
def on_error(self: Task[Any, Any], job_id: str) -> None:
    outcome = app.AsyncResult(job_id)
    error = outcome.result
    info = self.request.delivery_info or {}
    record(
        {
            "task": "on_error",
            "job_id": job_id,
            "state": outcome.state,
            "error_type": type(error).__name__,
            "kind": getattr(error, "kind", None),
            "queue": info.get("routing_key"),
        }
    )


@worker_ready.connect
def _ready(**_: Any) -> None:
    record({"task": "ready"})


def wsupload_modules() -> list[str]:
    return sorted(name for name in sys.modules if name.startswith("wsupload"))


def run(spec: list[dict[str, Any]]) -> dict[str, Any]:
    """Send each job that says ``send`` (with a link, an errback on the client's queue), then get each."""
    for job in spec:
        if job.get("send", True):
            app.send_task(
                "wsupload.upload",
                args=[job["job_id"], job["source"]],
                task_id=job["job_id"],
                link=on_done.s() if job.get("link") else None,
                link_error=on_error.s().set(queue=ERRBACK_QUEUE) if job.get("link_error") else None,
            )
    got: dict[str, Any] = {}
    for job in spec:
        if not job.get("get", True):
            continue
        outcome = app.AsyncResult(job["job_id"])
        try:
            got[job["job_id"]] = {"value": outcome.get(timeout=60), "state": outcome.state}
        except TimeoutError:
            got[job["job_id"]] = {"timed_out": True, "state": outcome.state}
        except Exception as exc:
            got[job["job_id"]] = {
                "state": outcome.state,
                "raised": f"{type(exc).__module__}.{type(exc).__name__}",
                "status": getattr(exc, "status", None),
                "kind": getattr(exc, "kind", None),
                "error": getattr(exc, "error", None),
                "text": str(exc),
            }
    return {"got": got, "modules": wsupload_modules(), "backend": app.backend.as_uri()}


def main(argv: list[str]) -> None:
    if argv[:1] == ["worker"]:
        queues = f"celery,{ERRBACK_QUEUE}"
        app.worker_main(["worker", "-Q", queues, "-P", "threads", "-c", "2", "--without-mingle", "--without-gossip"])
    elif argv[:1] == ["run"]:
        print(json.dumps(run(json.loads(argv[1]))))
    else:
        raise SystemExit(f"usage: {sys.argv[0]} worker | run SPEC")


if __name__ == "__main__":
    main(sys.argv[1:])
