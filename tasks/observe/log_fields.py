"""The fields a job's log lines carry for machines (``WSUPLOAD_LOG_FORMAT=json``), from its document.

The job code passes them as ``extra=`` where it logs an outcome or a retry; the
worker's JSON formatter (``worker.logs``) writes those named in ``FIELDS`` and
ignores the rest, and the text format shows none of them. Values are ids, counts,
kinds and durations: never a source, a URL or an error message (the line's
``event`` says those, redacted and clipped like any message).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from wsupload.errors import UploadError
from wsupload.tasks.store.results import RETRYING

FIELDS = (
    "job_id",
    "batch_id",
    "status",
    "attempt",
    "kind",
    "http_status",
    "duration_s",
    "bytes",
    "method",
    "retry_in_s",
)
"""Every job field a JSON log line may carry, in the order it is written."""

JobDoc = dict[str, Any]
METHODS = ("upload", "direct", "presigned_url")


def outcome_fields(doc: JobDoc) -> dict[str, Any]:
    """For the line that says how a job ended: its status, attempts, duration, and bytes or error kind."""
    fields = _job(doc)
    duration = _seconds_between(doc.get("started_at"), doc.get("finished_at"))
    if duration is not None:
        fields["duration_s"] = duration
    result, error = doc.get("result"), doc.get("error")
    if isinstance(result, dict) and isinstance(result.get("size"), int):
        fields["bytes"] = result["size"]
    if isinstance(result, dict) and result.get("method") in METHODS:
        fields["method"] = result["method"]  # the flow that uploaded it, or how it was answered otherwise
    if isinstance(error, dict):
        fields["kind"] = error.get("kind")
        if error.get("http_status") is not None:
            fields["http_status"] = error["http_status"]
    return fields


def retry_fields(doc: JobDoc, error: UploadError, delay: float) -> dict[str, Any]:
    """For the line that says a job waits to try again, and why."""
    fields = {**_job(doc), "status": RETRYING, "kind": error.kind, "retry_in_s": round(delay, 3)}
    if error.http_status is not None:
        fields["http_status"] = error.http_status
    return fields


def _job(doc: JobDoc) -> dict[str, Any]:
    fields: dict[str, Any] = {"job_id": doc["job_id"], "status": doc["status"], "attempt": doc["attempts"]}
    if doc.get("batch_id"):
        fields["batch_id"] = doc["batch_id"]
    return fields


def _seconds_between(start: object, end: object) -> float | None:
    """Seconds from one document time to another (ISO 8601, ``Z``), or None if either is missing or unreadable."""
    if not (isinstance(start, str) and isinstance(end, str)):
        return None
    try:
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (ValueError, TypeError):  # unreadable, or one has a zone and the other not
        return None
    return round(max(0.0, seconds), 3)
