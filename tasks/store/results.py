"""Job result documents: their shape, their transitions, and where they live in Redis.

One JSON document per job at ``wsupload:result:<job_id>`` (expiring after
``WSUPLOAD_RESULT_TTL``), written as ``queued`` when the job is enqueued, then
``running`` → ``retrying`` → ``succeeded`` | ``failed`` | ``cancelled`` | ``expired``. Every status
change is also published on ``wsupload:events`` (job id and status; a large upload's
running document also ``progress``, its bytes sent, at most once a second), and the final
document on ``wsupload:ended``, so waiters need neither poll nor read. This
shape is a wire contract: producers in other languages read it, so fields are
only added.

The end-state rule (docs/wire-contract.md): ``queued``, ``running`` and ``retrying``
are the only statuses of a job that goes on (``ACTIVE``); any other is an end
(``is_end``), whether this version knows its name or not. An end is written once,
published once on ``wsupload:ended``, counted in its batch's ``done`` and in a
counter named as the status; every end but ``succeeded`` carries an ``error`` whose
``kind`` names it (``cancelled``, ``expired``).

A job enqueued with ``expires_in`` carries ``deadline_at`` (ISO-8601 UTC, on Redis's clock):
in its ``options`` (so the worker reads it from the message) and at the document's top level
(for readers); ``expires_at`` is something else, the media's retention.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import redis

from wsupload.errors import Cancelled, Expired, Superseded, UploadError
from wsupload.tasks.observe.bounds import MAX_SOURCE_CHARS, clip
from wsupload.tasks.observe.redaction import redact
from wsupload.tasks.sources.media import OpenedSource
from wsupload.tasks.store import keys
from wsupload.tasks.store.connections import PerThread
from wsupload.tasks.store.fencing import Claim, ClaimAsk, Fencing, FirstAttempt, claim_args

log = logging.getLogger(__name__)

QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED = "queued", "running", "retrying", "succeeded", "failed"
CANCELLED, EXPIRED = "cancelled", "expired"
ACTIVE = frozenset({QUEUED, RUNNING, RETRYING})
"""The statuses of a job that goes on; every other status is an end (``is_end``)."""
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED})
"""The ends this version names. Ask ``is_end``: a status it does not name is an end too."""
STATUSES = ACTIVE | TERMINAL
_TIMES = ("started_at", "finished_at", "expires_at")
# Where documents live and are announced (built in tasks.store.keys, named here for the store's users).
EVENTS_CHANNEL, ENDED_CHANNEL = keys.EVENTS_CHANNEL, keys.ENDED_CHANNEL
result_key, batch_key = keys.result, keys.batch

JobDoc = dict[str, Any]
T = TypeVar("T")


def is_end(status: object) -> bool:
    """The end-state rule: whether a job with this status has ended (any status but queued, running, retrying)."""
    return status not in ACTIVE


def text(value: bytes | str) -> str:
    """A Redis reply as text, whatever the client's decode setting."""
    return value.decode() if isinstance(value, bytes) else value


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in slices of ``size``: how many keys go to Redis in one command or pipeline."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _without(doc: JobDoc, *names: str) -> JobDoc:
    return {name: value for name, value in doc.items() if name not in names}


def new_doc(
    job_id: str, source: str, now: datetime, batch_id: str | None = None, options: dict[str, Any] | None = None
) -> JobDoc:
    """A ``queued`` document; ``options`` (the message's, if any) let the sweep build a lost message again."""
    doc: JobDoc = {
        "job_id": job_id,
        "status": QUEUED,
        "source": source,
        "attempts": 0,
        "result": None,
        "error": None,
        "created_at": isoformat(now),
        "started_at": None,
        "finished_at": None,
        "expires_at": None,
    }
    if batch_id:
        doc["batch_id"] = batch_id
    if options:
        doc["options"] = options
        if isinstance(options.get("deadline_at"), str):
            doc["deadline_at"] = options["deadline_at"]
    return doc


def coerce_doc(raw: object, job_id: str, now: datetime, source: str | None = None) -> JobDoc:
    """A stored document made whole, whoever wrote it.

    Producers in other languages write the ``queued`` document, and a partial or
    mistyped one (``{"status": "queued"}``) must not stop its job from ending:
    every field the worker reads is given its type, ``job_id`` is the key's, and
    fields nobody here knows are kept. An end without the fields that make it
    an outcome (``result.download_url`` for ``succeeded``; ``error.kind`` and
    ``message`` for any other end, ``cancelled`` and names this version does not
    know included) is not believed, so such a job runs instead of hiding.
    """
    doc: JobDoc = dict(raw) if isinstance(raw, dict) else {}
    status = doc["status"] if isinstance(doc.get("status"), str) and doc["status"] else QUEUED
    result, error = doc.get("result"), doc.get("error")
    if status == SUCCEEDED and not (isinstance(result, dict) and isinstance(result.get("download_url"), str)):
        status = QUEUED
    named = isinstance(error, dict) and isinstance(error.get("kind"), str) and isinstance(error.get("message"), str)
    if is_end(status) and status != SUCCEEDED and not named:
        status = QUEUED
    attempts = doc.get("attempts")
    doc.update(
        job_id=job_id,
        status=status,
        # Bounded: a document written by a producer with a huge source is not carried on whole.
        source=clip(doc["source"], MAX_SOURCE_CHARS) if isinstance(doc.get("source"), str) else (source or ""),
        attempts=attempts if isinstance(attempts, int) and not isinstance(attempts, bool) and attempts >= 0 else 0,
        result=result if isinstance(result, dict) else None,
        error=error if isinstance(error, dict) else None,
        created_at=doc["created_at"] if isinstance(doc.get("created_at"), str) else isoformat(now),
    )
    for name in _TIMES:
        if not isinstance(doc.get(name), str):
            doc[name] = None
    for name in ("batch_id", "next_attempt_at", "worker", "deadline_at"):
        if name in doc and not isinstance(doc[name], str):
            del doc[name]
    if "generation" in doc and not (type(doc["generation"]) is int and doc["generation"] > 0):
        del doc["generation"]
    for name in ("last_error", "options", "progress"):
        if name in doc and not isinstance(doc[name], dict):
            del doc[name]
    return doc


def decode_doc(raw: bytes | str | None, job_id: str, now: datetime) -> JobDoc | None:
    """A stored value as a document (see ``coerce_doc``); None when there is none."""
    if raw is None:
        return None
    try:
        value: object = json.loads(raw)
    except ValueError:
        value = None  # not JSON: what is left to go on is the key
    return coerce_doc(value, job_id, now)


def started(doc: JobDoc, now: datetime, generation: int | None = None, worker: str | None = None) -> JobDoc:
    """Running, held by delivery ``generation`` on ``worker`` (both shown in the document)."""
    held = {} if generation is None else {"generation": generation, "worker": worker or "unknown"}
    return {**_without(doc, "progress"), "status": RUNNING, "started_at": doc["started_at"] or isoformat(now), **held}


def attempting(doc: JobDoc) -> JobDoc:
    return {**_without(doc, "next_attempt_at", "progress"), "status": RUNNING, "attempts": doc["attempts"] + 1}


def with_progress(doc: JobDoc, bytes_sent: int, bytes_total: int) -> JobDoc:
    """The running document with the attempt's byte progress (``tasks.observe.upload_progress``).

    Only the running document of an attempt carries it: every other transition drops it.
    """
    return {**doc, "progress": {"bytes_sent": bytes_sent, "bytes_total": bytes_total}}


def stored_as(raw: bytes | str, doc: JobDoc) -> bool:
    """Whether a stored value is ``doc``, as ``ResultStore.save`` would have written it (any key order)."""
    encoded = json.dumps(doc)
    if redact(encoded) != encoded:
        return False  # save would have masked a secret in it
    try:
        return bool(json.loads(raw) == doc)
    except ValueError:
        return False


def retrying(doc: JobDoc, error: UploadError, delay: float, now: datetime) -> JobDoc:
    """Backing off; ``last_error`` shows the transient failure being waited out."""
    return {
        **_without(doc, "progress"),
        "status": RETRYING,
        "last_error": error.to_doc(),
        "next_attempt_at": isoformat(now + timedelta(seconds=delay)),
    }


def _ended(doc: JobDoc, status: str, now: datetime, **fields: Any) -> JobDoc:
    """The document at its end: the wait for a next attempt is over."""
    return {**_without(doc, "next_attempt_at", "progress"), "status": status, **fields, "finished_at": isoformat(now)}


def succeeded(doc: JobDoc, result: dict[str, Any], now: datetime, retention: int, method: str = "upload") -> JobDoc:
    """Uploaded (``method``: ``upload``, the binary endpoint, or ``direct``): kept ``retention`` seconds from now."""
    expires = isoformat(now + timedelta(seconds=retention))
    return _ended(doc, SUCCEEDED, now, result={**result, "method": method}, error=None, expires_at=expires)


def reused(doc: JobDoc, earlier: dict[str, Any], now: datetime) -> JobDoc:
    """Not uploaded: the same bytes were, by ``earlier["job_id"]``, and are still retained."""
    result = {**earlier["result"], "reused": True, "reused_from": earlier["job_id"]}
    return _ended(doc, SUCCEEDED, now, result=result, error=None, expires_at=earlier["expires_at"])


def presigned(doc: JobDoc, source: OpenedSource, url: str, now: datetime, ttl: int) -> JobDoc:
    """Not uploaded (too large): a time-limited GET URL to the object instead."""
    result = {
        "type": source.media_kind,
        "download_url": url,
        "filename": source.filename,
        "size": source.size,
        "method": "presigned_url",
    }
    expires = isoformat(now + timedelta(seconds=ttl))
    return _ended(doc, SUCCEEDED, now, result=result, error=None, expires_at=expires)


def failed(doc: JobDoc, error: UploadError, now: datetime) -> JobDoc:
    return _ended(doc, FAILED, now, result=None, error=error.to_doc())


def cancelled(doc: JobDoc, now: datetime, message: str = "cancelled by a producer") -> JobDoc:
    """Cancelled (``Producer.cancel``): ended without its upload, or with it cut short.

    ``tasks.store.cancels`` writes the same change inside Redis, on whatever document is
    stored there; this is its Python twin, for documents built here and for tests.
    """
    return _ended(doc, CANCELLED, now, result=None, error=Cancelled(message).to_doc())


def expired(doc: JobDoc, now: datetime, message: str) -> JobDoc:
    """Expired: a worker met the job after its ``deadline_at``; nothing was sent (or no more after a retry's wait)."""
    return _ended(doc, EXPIRED, now, result=None, error=Expired(message).to_doc())


class ResultStore:
    """Reads and writes result documents; publishes each status change."""

    def __init__(
        self,
        client: redis.Redis,
        ttl: int,
        clock: Callable[[], float] = time.time,
        replica_wait: float = 0.0,
        per_thread: bool = False,
        entered: Sequence[str] = (),
    ) -> None:
        self.redis = client
        self.ttl = ttl
        self.clock = clock
        """Unix time, for the minute a job that ends is counted in (``keys.stats``)."""
        self.here: Callable[[], redis.Redis] = PerThread(client) if per_thread else (lambda: client)
        """The client a call from this thread goes through: with ``per_thread`` (the worker's
        upload threads), a connection each thread holds (``connections.PerThread``), for claims,
        saves and the worker's other calls per job; else ``client``."""
        self.fencing = Fencing(client, self.here)
        self.replica_wait = replica_wait
        """Seconds a terminal write waits for one replica to have it (``WSUPLOAD_REPLICA_WAIT``); 0: not at all."""
        self._unconfirmed = False
        self._streak = threading.Lock()
        self.entered = tuple(entered)
        """RabbitMQ broker: the entered sets (``keys.entered``) a job leaves in its terminal write, in the same
        script: the marker sweep's index stays as small as the jobs not ended, at no round trip more."""

    def create(self, docs: Iterable[JobDoc], pipe: Any = None) -> None:
        """Write ``queued`` documents: on ``pipe`` if given, else in one round trip now."""
        own = pipe is None
        pipe = self.redis.pipeline(transaction=False) if own else pipe
        for doc in docs:
            pipe.set(result_key(doc["job_id"]), json.dumps(doc), ex=self.ttl)
        if own:
            pipe.execute()

    def save(self, doc: JobDoc, generation: int | None = None) -> bool:
        """Write the document, announce it and count it (a batch member in its batch, a job that ends in
        its minute's statistics, ``keys.stats``); one Lua call.

        Fenced (``tasks.store.fencing``): with a ``generation`` the write happens only while
        that delivery still holds the job, else ``Superseded`` is raised; without one
        it happens unless the job has ended. Either way nothing is written after the
        job's first terminal write, so a batch counts each job once, and its counters
        change in the same step as the member's document. Returns whether it wrote.
        """
        save_keys, args = self._save_call(doc, generation)
        return self._written(doc, generation, self._save(doc["job_id"], is_end(doc["status"]), save_keys, args))

    def save_then_claim(self, doc: JobDoc, generation: int, ask: ClaimAsk) -> Claim | None:
        """``save`` a terminal document, then claim ``ask``'s job as ``claim`` would: one round trip.

        The claim is made only if the document was written (else ``Superseded`` is raised,
        as by ``save``). Returns the claim; None, and no claim made, where a terminal write
        must wait for a replica (``WSUPLOAD_REPLICA_WAIT``): the caller then claims on its own.
        """
        if self.replica_wait > 0:
            self.save(doc, generation)
            return None
        save_keys, args = self._save_call(doc, generation)
        claim_keys, claim_args = self._claim_call(ask.job_id, ask.first, ask.lease_tag)
        written, claimed = self.fencing.save_then_claim(save_keys, args, claim_keys, claim_args)
        self._written(doc, generation, written)
        return claimed

    def _save_call(self, doc: JobDoc, generation: int | None) -> tuple[list[str], list[str | int]]:
        """``fencing_save.lua``'s keys and arguments for ``doc``."""
        # The one place documents are written: no secret leaves in one, whatever an error echoed.
        encoded = redact(json.dumps(doc))
        status = doc["status"]
        batch_id = doc.get("batch_id")
        size = int(doc["result"].get("size") or 0) if status == SUCCEEDED else 0
        job_keys = [keys.generation(doc["job_id"]), result_key(doc["job_id"]), EVENTS_CHANNEL, ENDED_CHANNEL]
        event = {"job_id": doc["job_id"], "status": status}
        if status == RUNNING and "progress" in doc:
            event["progress"] = doc["progress"]  # a progress write: its event says how far, so no one reads
        minute, second = divmod(int(self.clock()), 60)
        save_keys = [*job_keys, batch_key(str(batch_id)) if batch_id else "", keys.stats(minute)]
        if self.entered and is_end(status):
            save_keys += self.entered
        return save_keys, [
            "" if generation is None else str(generation),
            encoded,
            self.ttl,
            json.dumps(event),
            status,
            size,
            doc.get("started_at") or "",
            doc.get("finished_at") or "",
            second,
            keys.STATS_TTL,
        ]

    @staticmethod
    def _written(doc: JobDoc, generation: int | None, written: int) -> bool:
        """The save script's answer as ``save`` returns it: whether it wrote; ``Superseded`` for a delivery refused."""
        if written == 1:
            return True
        if generation is None:
            return False
        why = "it has ended" if written == 0 else "another delivery of it holds it now"
        raise Superseded(f"job {doc['job_id']}: delivery {generation} may no longer write: {why}")

    def _save(self, job_id: str, terminal: bool, save_keys: list[str], args: list[str | int]) -> int:
        """The fenced write; a terminal one then waits for a replica, if asked to (and says once when none answers)."""
        if not (terminal and self.replica_wait > 0):
            return self.fencing.save(save_keys, args)
        written, replicas = self.fencing.save_replicated(save_keys, args, self.replica_wait)
        if written != 1:
            return written
        with self._streak:  # the worker's threads end jobs side by side: one of them says it
            say = replicas < 1 and not self._unconfirmed
            self._unconfirmed = replicas < 1
        if say:
            log.warning(
                "job %s: no replica confirmed its outcome within %g s (WSUPLOAD_REPLICA_WAIT); a failover now"
                " could lose it. Said once until a replica confirms one again",
                job_id,
                self.replica_wait,
            )
        return written

    def claim(self, job_id: str, first: FirstAttempt | None = None, lease_tag: str = "") -> Claim:
        """Take the job for one delivery: its next generation (``Claim.ended`` if it has ended).

        With ``first``, the claim may also write the first attempt's document (``Claim.written``).
        With ``lease_tag``, only while that delivery's lease is in kombu's index (``Claim.lease_gone``).
        """
        return self.fencing.claim(*self._claim_call(job_id, first, lease_tag))

    def _claim_call(self, job_id: str, first: FirstAttempt | None, lease_tag: str) -> tuple[list[str], list[str | int]]:
        """``fencing_claim.lua``'s keys and arguments."""
        claim_keys = [keys.generation(job_id), result_key(job_id), EVENTS_CHANNEL, keys.UNACKED_INDEX]
        if first is None:
            return claim_keys, claim_args(self.ttl, tag=lease_tag)
        event = json.dumps({"job_id": job_id, "status": RUNNING})
        return claim_keys, claim_args(self.ttl, first, event, batch_key(""), lease_tag)

    def get(self, job_id: str) -> JobDoc | None:
        return self.get_many([job_id])[0]

    def get_many(self, job_ids: Sequence[str]) -> list[JobDoc | None]:
        """Documents as ``coerce_doc`` makes them whole; None for a job with none."""
        if not job_ids:
            return []
        raw = self.redis.mget([result_key(job_id) for job_id in job_ids])
        now = utcnow()
        return [decode_doc(value, job_id, now) for job_id, value in zip(job_ids, raw, strict=True)]

    def end_with_error(self, job_id: str, error: UploadError) -> JobDoc:
        """End a job ``failed`` with ``error`` unless it has already ended; returns its document."""
        doc = self.get(job_id) or new_doc(job_id, "", utcnow())
        if not is_end(doc["status"]):
            doc = failed(doc, error, utcnow())
            self.save(doc)
        return doc
