"""Deduplication: the same bytes uploaded while an earlier upload is still retained.

Keyed by SHA-256 of the content at ``wsupload:dedup:<sha256>``, holding the
earlier result and its ``expires_at``. An entry is only reused while it has
more than ``WSUPLOAD_DEDUP_MARGIN`` left, and its Redis TTL ends at that margin,
so a URL about to be deleted by the API is never handed out.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

import redis

from wsupload.tasks.recovery import lease
from wsupload.tasks.sources.media import OpenedSource
from wsupload.tasks.store import keys

BLOCK = 1024 * 1024


dedup_key = keys.dedup


def content_digest(source: OpenedSource) -> str:
    """SHA-256 of the source, read as a stream (one extra pass over its bytes)."""
    digest = hashlib.sha256()
    stream = source.open_stream()
    while block := stream.read(BLOCK):
        digest.update(block)
        lease.tick()  # bytes moving: the job is alive
    return digest.hexdigest()


class DedupStore:
    def __init__(self, client: redis.Redis, margin: int) -> None:
        self.redis = client
        self.margin = margin

    def find(self, digest: str, now: datetime) -> dict[str, Any] | None:
        """The earlier upload of these bytes, if it stays valid past the margin."""
        raw = self.redis.get(dedup_key(digest))
        if raw is None:
            return None
        entry: dict[str, Any] = json.loads(raw)
        expires = datetime.fromisoformat(entry["expires_at"])
        return entry if expires - now > timedelta(seconds=self.margin) else None

    def remember(self, digest: str, job_id: str, result: dict[str, Any], expires_at: str, now: datetime) -> None:
        usable = (datetime.fromisoformat(expires_at) - now).total_seconds() - self.margin
        if usable >= 1:
            entry = {"job_id": job_id, "result": result, "expires_at": expires_at}
            self.redis.set(dedup_key(digest), json.dumps(entry), ex=int(usable))
