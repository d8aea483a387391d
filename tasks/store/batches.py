"""Batches: many jobs under one id, their counters, and the results export.

A batch is a hash ``wsupload:batch:<id>`` (name, total, bytes_total, done,
succeeded, failed, cancelled, expired, bytes_done, created_at, started_at, finished_at; any other
end a job reaches is counted in ``done`` and in a field named as its status), the list of
its job ids ``wsupload:batch:<id>:jobs`` and, for lookup by name,
``wsupload:batch-name:<name>`` → the newest batch of that name. All three are
written by ``tasks.enqueue`` in the one atomic step that queues the batch, so a
batch that exists is a batch whose every job is queued. Workers keep the
counters (``ResultStore.save``); this module describes new batches and reads them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import Any, TextIO

import redis

from wsupload.tasks.store import keys, results
from wsupload.tasks.store.results import JobDoc

CHUNK = 1000
EXPORT_FIELDS = (
    "job_id",
    "source",
    "status",
    "download_url",
    "type",
    "size",
    "expires_at",
    "method",
    "reused",
    "error_kind",
    "error",
)


members_key = keys.batch_members


name_key = keys.batch_name


def batch_fields(batch_id: str, name: str | None, total: int, bytes_total: int) -> dict[str, Any]:
    """A new batch's hash, counters at zero. ``tasks.enqueue`` writes it in the same
    atomic step that puts the batch's messages on the queue, never before."""
    return {
        "batch_id": batch_id,
        "name": name or "",
        "total": total,
        "bytes_total": bytes_total,
        "done": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
        "expired": 0,
        "bytes_done": 0,
        "created_at": results.isoformat(results.utcnow()),
    }


class BatchStore:
    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.redis = client
        self.ttl = ttl

    def resolve(self, name_or_id: str) -> str | None:
        if self.redis.exists(results.batch_key(name_or_id)):
            return name_or_id
        found = self.redis.get(name_key(name_or_id))
        return None if found is None else results.text(found)

    def get(self, batch_id: str) -> dict[str, Any] | None:
        return batch_info(self.redis.hgetall(results.batch_key(batch_id)))

    def job_ids(self, batch_id: str) -> list[str]:
        return [results.text(raw) for raw in self.redis.lrange(members_key(batch_id), 0, -1)]

    def docs(self, batch_id: str) -> Iterator[tuple[str, JobDoc | None]]:
        store = results.ResultStore(self.redis, self.ttl)
        for chunk in results.chunks(self.job_ids(batch_id), CHUNK):
            yield from zip(chunk, store.get_many(chunk), strict=True)

    def status_counts(self, batch_id: str) -> dict[str, int]:
        """Members by status, read from their documents (queued and running included)."""
        counts: dict[str, int] = {}
        for _, doc in self.docs(batch_id):
            status = doc["status"] if doc else "unknown"
            counts[status] = counts.get(status, 0) + 1
        return counts


def batch_info(raw: dict[Any, Any]) -> dict[str, Any] | None:
    """A batch's hash as read (``HGETALL``) made a document: counters as numbers; None for no batch."""
    if not raw:
        return None
    doc: dict[str, Any] = {results.text(k): results.text(v) for k, v in raw.items()}
    for field in ("total", "bytes_total", "done", "succeeded", "failed", "cancelled", "expired", "bytes_done"):
        doc[field] = int(doc.get(field) or 0)
    for field in ("started_at", "finished_at"):
        doc.setdefault(field, None)
    doc["name"] = doc.get("name") or None
    return doc


def export_row(job_id: str, doc: JobDoc | None) -> dict[str, Any]:
    """One line of the results manifest: source → download_url (or the error)."""
    if doc is None:
        return {**dict.fromkeys(EXPORT_FIELDS), "job_id": job_id, "status": "unknown"}
    result = doc.get("result") or {}
    error = doc.get("error") or {}
    return {
        "job_id": job_id,
        "source": doc["source"],
        "status": doc["status"],
        "download_url": result.get("download_url"),
        "type": result.get("type"),
        "size": result.get("size"),
        "expires_at": doc.get("expires_at"),
        "method": result.get("method"),
        "reused": bool(result.get("reused")),
        "error_kind": error.get("kind"),
        "error": error.get("message"),
    }


def write_export(rows: Iterator[dict[str, Any]], out: TextIO, fmt: str) -> int:
    """Write rows as ``jsonl`` or ``csv``; returns how many were written."""
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
            count += 1
        return count
    for row in rows:
        out.write(json.dumps(row) + "\n")
        count += 1
    return count
