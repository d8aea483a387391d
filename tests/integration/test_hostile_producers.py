"""Whatever a producer sends, its job ends terminal and published, and what is kept of it is bounded.

These producers send with Celery's own ``send_task`` (as a producer in
another language would send its own JSON): wrong arguments, a partial queued
document, a 10 MB source. A waiter is the judge: it returns only when the
outcome is published.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from wsupload.config import UPLOAD_TASK_NAME
from wsupload.tasks.store.results import ENDED_CHANNEL, JobDoc, result_key
from wsupload.worker.dev.local_services import WorkerProcess, wait_until
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker")]


def send_and_wait(producer: Producer, job_id: str, args: list[Any], kwargs: dict[str, Any] | None = None) -> JobDoc:
    """Send as a foreign producer would (no queued document); return the final document as published."""
    pubsub = producer.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(ENDED_CHANNEL)
    try:
        queue = producer.settings.queue
        producer.app.send_task(UPLOAD_TASK_NAME, args=args, kwargs=kwargs or {}, task_id=job_id, queue=queue)

        def published() -> JobDoc | None:
            message = pubsub.get_message(timeout=0.2)
            doc: JobDoc | None = json.loads(message["data"]) if message else None
            return doc if doc and doc["job_id"] == job_id else None

        found: JobDoc = wait_until(published, 30, interval=0, what=f"job {job_id} to end and be published")
        return found
    finally:
        pubsub.close()


@pytest.mark.parametrize(
    ("args", "kwargs", "needle"),
    [
        (["JOB"], {}, "no source"),
        (["JOB", "/m/a.png"], {"option": {"dedup": True}}, "unknown keyword arguments"),
        (["JOB", "/m/a.png", None, 1], {}, "too many args"),
    ],
    ids=["no-source", "kwargs-typo", "too-many"],
)
def test_arguments_that_do_not_fit_end_the_job_invalid_message(
    producer: Producer, args: list[Any], kwargs: dict[str, Any], needle: str
) -> None:
    job_id = uuid.uuid4().hex
    doc = send_and_wait(producer, job_id, [job_id if a == "JOB" else a for a in args], kwargs)
    assert (doc["status"], doc["error"]["kind"]) == ("failed", "invalid_message")
    assert needle in doc["error"]["message"]


def test_a_partial_queued_document_does_not_stop_the_job(producer: Producer, media_root: Path) -> None:
    png = media_root / f"partial-{uuid.uuid4().hex[:6]}.png"
    png.write_bytes(png_bytes())
    job_id = uuid.uuid4().hex
    producer.redis.set(result_key(job_id), json.dumps({"status": "queued"}))
    doc = send_and_wait(producer, job_id, [job_id, str(png)])
    assert doc["status"] == "succeeded"
    assert doc["job_id"] == job_id


def test_a_10_mb_source_is_refused_and_kept_bounded(producer: Producer, worker: WorkerProcess) -> None:
    job_id = uuid.uuid4().hex
    huge = "/media/" + "a" * (10 * 1024 * 1024) + ".png"
    log_before = worker.log_path.stat().st_size
    doc = send_and_wait(producer, job_id, [job_id, huge])
    assert (doc["status"], doc["error"]["kind"]) == ("failed", "invalid_input")
    assert "over the limit of 4096" in doc["error"]["message"]
    stored = producer.redis.get(result_key(job_id))
    assert stored is not None
    assert len(stored) < 4096
    wait_until(lambda: job_id in worker.log_path.read_text(), 10, what="the worker to log the job")
    assert worker.log_path.stat().st_size - log_before < 4096
