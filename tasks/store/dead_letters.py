"""The dead-letter list: messages a worker could not run as a job, kept for a person to see.

``wsupload:dead`` is a Redis list, newest first, of JSON entries::

    {"id", "at", "reason", "queue", "job_id", "raw", "raw_encoding", "raw_bytes", "truncated"}

``raw`` is the message as it was on the queue (text, or base64 when it is not
UTF-8), at most ``MAX_DEAD_MESSAGE_BYTES`` of it; ``job_id`` is the job it
named, if one could be read. The list keeps the newest ``MAX_ENTRIES``.
Nothing here decides what is dead: the transport, the consumer and the task
do, and call ``DeadLetterStore.add``.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import redis

from wsupload.tasks.observe.bounds import MAX_DEAD_MESSAGE_BYTES, clip
from wsupload.tasks.observe.redaction import redact
from wsupload.tasks.store import keys, lua, results

DEAD_KEY = keys.DEAD
MAX_ENTRIES = 10_000
"""The oldest entries beyond this are dropped: a flood of bad messages cannot fill Redis."""


@dataclass(frozen=True)
class DeadLetter:
    id: str
    at: str
    reason: str
    queue: str | None
    job_id: str | None
    raw: str
    raw_encoding: str
    """``text`` or ``base64``."""
    raw_bytes: int
    """The message's whole size; ``raw`` holds at most ``MAX_DEAD_MESSAGE_BYTES`` of it."""
    truncated: bool

    @classmethod
    def of(cls, raw: bytes | str, reason: str, queue: str | None, job_id: str | None) -> DeadLetter:
        data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else bytes(raw)
        kept = data[:MAX_DEAD_MESSAGE_BYTES]
        try:
            text, encoding = kept.decode("utf-8"), "text"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(kept).decode(), "base64"
        return cls(
            id=uuid.uuid4().hex,
            at=results.isoformat(results.utcnow()),
            reason=clip(reason, 1000),
            queue=queue,
            job_id=job_id,
            raw=redact(text) if encoding == "text" else text,
            raw_encoding=encoding,
            raw_bytes=len(data),
            truncated=len(data) > len(kept),
        )

    @classmethod
    def from_json(cls, text: bytes | str) -> DeadLetter:
        doc = json.loads(text)
        return cls(**{name: doc.get(name) for name in cls.__dataclass_fields__})

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def message(self) -> bytes:
        """The message's bytes as they were kept."""
        return base64.b64decode(self.raw) if self.raw_encoding == "base64" else self.raw.encode("utf-8")


class DeadLetterStore:
    def __init__(self, client: redis.Redis, max_entries: int = MAX_ENTRIES) -> None:
        self.redis = client
        self.max_entries = max_entries
        self._move_back = lua.script(client, "dead_letters_move_back")

    def add(self, raw: bytes | str, reason: str, *, queue: str | None = None, job_id: str | None = None) -> DeadLetter:
        entry = DeadLetter.of(raw, reason, queue, job_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(DEAD_KEY, entry.to_json())
        pipe.ltrim(DEAD_KEY, 0, self.max_entries - 1)
        pipe.execute()
        return entry

    def count(self) -> int:
        return int(self.redis.llen(DEAD_KEY))

    def entries(self, limit: int | None = None) -> list[DeadLetter]:
        raw = self.redis.lrange(DEAD_KEY, 0, -1 if limit is None else limit - 1)
        found = []
        for item in raw:
            try:
                found.append(DeadLetter.from_json(item))
            except (ValueError, TypeError):
                continue  # not written by us: leave it for `purge`
        return found

    def _take(self, ids: Iterable[str] | None) -> list[tuple[Any, DeadLetter]]:
        wanted = None if ids is None else set(ids)
        taken = []
        for item in self.redis.lrange(DEAD_KEY, 0, -1):
            try:
                entry = DeadLetter.from_json(item)
            except (ValueError, TypeError):
                continue
            if wanted is None or entry.id in wanted:
                taken.append((item, entry))
        return taken

    def requeue(self, ids: Iterable[str] | None, default_queue: str) -> tuple[int, list[str]]:
        """Put entries (all if ``ids`` is None) back on their queue; returns (requeued, refused ids).

        A truncated entry is refused: part of a message is not the message.
        """
        done, refused = 0, []
        for item, entry in self._take(ids):
            if entry.truncated:
                refused.append(entry.id)
                continue
            moved = self._move_back(keys=[DEAD_KEY, entry.queue or default_queue], args=[item, entry.message()])
            done += int(moved)
        return done, refused

    def purge(self, ids: Iterable[str] | None) -> int:
        """Delete entries (the whole list if ``ids`` is None); returns how many."""
        if ids is None:
            count = self.count()
            self.redis.delete(DEAD_KEY)
            return count
        removed = 0
        for item, _ in self._take(ids):
            removed += int(self.redis.lrem(DEAD_KEY, 1, item))
        return removed
