"""wsupload's Celery result backend: a Celery client's ``AsyncResult(job_id)`` read from the job's document.

A producer's own Celery app sets ``result_backend="wsupload+redis://host:6379/0"`` (the URL is
``REDIS_URL``'s, ``rediss://``, ``unix://`` and the Sentinel spellings included): Celery takes
the name before ``+`` from the entry-point group ``celery.result_backends`` (pyproject.toml)
and hands this class the rest. Then, for a job sent as task ``wsupload.upload`` with the job id
as its task id:

- ``AsyncResult(job_id).state`` is the document's status in Celery's words (``celery_state``);
  no document yet (or none any more) is PENDING, as Celery says of any id it does not know;
- ``.get(timeout=)`` returns the document's ``result`` dict, or raises ``wsupload.JobError``
  (the document's ``error`` on it) for FAILURE and REVOKED alike: one exception to catch,
  carrying the document, where Celery's own REVOKED would carry only a reason;
- ``.get`` is woken by ``wsupload:ended`` (each job's final document, published once), to which
  it subscribes before its first read, and re-reads the document every ``RECHECK_SECONDS`` in
  case that message was missed (a reconnect); Celery's ``interval`` argument is not used;
- ``.get`` rides out a Redis outage (a restart, a failover) as ``Producer.wait`` does
  (``tasks.recovery.outage``): it reconnects, subscribes and reads again until its timeout
  (then Celery's ``TimeoutError``), or, with no timeout, until Redis has been unreachable for
  ``OUTAGE_LIMIT`` seconds; a Redis never reached raises at once (a wrong URL).

Read-only: the worker writes the documents. What Celery would write through a backend (a
client worker's own task results, ``forget``, revocations) is dropped, never stored under a
job's key; groups and chords need a backend that stores results, and are refused.

Imports Celery's backend base, redis-py and, of wsupload, only ``wsupload.errors``,
``config`` (the key prefix, URL parsing), ``tasks.store`` (keys, connections, the document
statuses) and ``tasks.recovery.outage`` (the waiters' outage policy): never
``wsupload.worker``, so a web app's Celery client loads no worker code.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import redis
from celery import states
from celery.backends.base import BaseBackend
from celery.exceptions import ImproperlyConfigured, TimeoutError

from wsupload.config.redis_urls import is_sentinel_url, masked
from wsupload.errors import JobError
from wsupload.tasks.recovery.outage import REDIS_DOWN, Outage
from wsupload.tasks.store import keys, results
from wsupload.tasks.store.connections import redis_client

log = logging.getLogger(__name__)

SCHEME = "wsupload"
"""The backend's name in ``celery.result_backends``: ``result_backend="wsupload+<REDIS_URL>"``."""
RECHECK_SECONDS = 2.0
"""How often a waiting ``.get`` re-reads the document, whatever ``wsupload:ended`` said."""
REDIS_SCHEMES = ("redis", "rediss", "unix")

STATES = {
    results.QUEUED: states.PENDING,
    results.RUNNING: states.STARTED,
    results.RETRYING: states.RETRY,
    results.SUCCEEDED: states.SUCCESS,
    results.FAILED: states.FAILURE,
    results.CANCELLED: states.REVOKED,
    results.EXPIRED: states.REVOKED,
}


def celery_state(status: str) -> str:
    """A document's status as Celery's state; an end this version does not know is a FAILURE."""
    known = STATES.get(status)
    if known is not None:
        return known
    return states.FAILURE if results.is_end(status) else states.PENDING


def job_error(doc: dict[str, Any]) -> JobError:
    """The exception ``.get`` raises for a document that ended without success."""
    status = str(doc.get("status"))
    error = doc.get("error")
    return JobError(str(doc.get("job_id")), status, error if isinstance(error, dict) else {"kind": status}, doc)


def task_meta(job_id: str, doc: dict[str, Any] | None) -> dict[str, Any]:
    """Celery's task meta for a job's document (None: no document, or one that cannot be read)."""
    meta: dict[str, Any] = {"task_id": job_id, "status": states.PENDING, "result": None, "traceback": None}
    meta["children"] = []
    if doc is None:
        return meta
    state = celery_state(doc["status"])
    meta["status"] = state
    if state == states.SUCCESS:
        meta["result"] = doc.get("result")
    elif state in states.PROPAGATE_STATES:
        meta["result"] = job_error(doc)
    elif state == states.RETRY:
        meta["result"] = doc.get("last_error")
    if state in states.READY_STATES:
        meta["date_done"] = doc.get("finished_at")
    return meta


def read_doc(raw: bytes | str | None, job_id: str) -> dict[str, Any] | None:
    """The stored document, or None if there is none or it cannot be read as one (logged)."""
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("status"), str):
        log.warning("job %s: its document is not a wsupload job document; reported as PENDING", job_id[:128])
        return None
    return doc


class WsuploadBackend(BaseBackend):
    """Celery's result backend over wsupload's job documents (``wsupload+redis://…``)."""

    supports_native_join = False
    supports_autoexpire = True  # documents expire by themselves (WSUPLOAD_RESULT_TTL)
    persistent = True

    def __init__(self, app: Any = None, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(app, url=url, **kwargs)
        self.redis_url = checked_url(url)
        self.client: redis.Redis = redis_client(
            self.redis_url, socket_connect_timeout=5, socket_keepalive=True, health_check_interval=30
        )

    def __reduce__(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        return super().__reduce__(args, {**(kwargs or {}), "url": self.redis_url})  # type: ignore[call-arg]

    def as_uri(self, include_password: bool = False) -> str:
        return f"{SCHEME}+{self.redis_url if include_password else masked(self.redis_url)}"

    # Reads

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        return task_meta(task_id, read_doc(self.client.get(keys.result(task_id)), task_id))

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_interval: Any = None,
    ) -> dict[str, Any]:
        """The job's meta once it has ended, woken by ``wsupload:ended``; Celery's TimeoutError after ``timeout``."""
        self._ensure_not_eager()  # type: ignore[attr-defined]
        deadline = None if timeout is None else time.monotonic() + timeout
        outage = Outage(deadline)
        while True:
            try:
                return self._wait_connected(task_id, deadline, on_interval, outage)
            except REDIS_DOWN:
                now = time.monotonic()
                pause = outage.failed(now)
                if pause is None:
                    raise  # never reached (a wrong URL), or away for OUTAGE_LIMIT with no timeout
                if deadline is not None and now + pause >= deadline:
                    raise TimeoutError("The operation timed out.") from None
                time.sleep(pause)

    def _wait_connected(self, task_id: str, deadline: float | None, on_interval: Any, outage: Outage) -> dict[str, Any]:
        """One connection's worth of ``wait_for``: ``REDIS_DOWN`` when it is lost."""
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            # Subscribed before the read: an end published between the two (or during an outage) is not missed.
            pubsub.subscribe(keys.ENDED_CHANNEL)
            outage.connected()
            while True:
                meta = self.get_task_meta(task_id)
                outage.recovered()
                if meta["status"] in states.READY_STATES:
                    return meta
                if on_interval:
                    on_interval()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("The operation timed out.")
                wait_for_end(pubsub, task_id, RECHECK_SECONDS if left is None else min(RECHECK_SECONDS, left))
        finally:
            pubsub.close()

    # Writes: the documents are the worker's.

    def store_result(
        self, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None, **kwargs: Any
    ) -> Any:
        return result

    def _store_result(self, *args: Any, **kwargs: Any) -> Any:
        return None

    def _forget(self, task_id: str) -> None:
        """A job's document is kept for ``WSUPLOAD_RESULT_TTL`` whatever a client forgets."""

    def _save_group(self, group_id: str, result: Any) -> Any:
        raise NotImplementedError("wsupload's result backend stores nothing: groups need a backend of their own")

    def _restore_group(self, group_id: str) -> Any:
        raise NotImplementedError("wsupload's result backend stores nothing: groups need a backend of their own")

    def _delete_group(self, group_id: str) -> None:
        raise NotImplementedError("wsupload's result backend stores nothing: groups need a backend of their own")

    def ensure_chords_allowed(self) -> None:
        raise ImproperlyConfigured("chords need a result backend that stores results; wsupload's only reads jobs")


def wait_for_end(pubsub: redis.client.PubSub, job_id: str, timeout: float) -> None:
    """Return once ``job_id``'s end is announced, or ``timeout`` has passed."""
    until = time.monotonic() + timeout
    wanted = job_id.encode()
    while (left := until - time.monotonic()) > 0:
        message = pubsub.get_message(timeout=left)
        data = None if message is None else message["data"]
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, bytes) or wanted not in data:  # most ends are other jobs': not parsed
            continue
        try:
            if json.loads(data).get("job_id") == job_id:
                return
        except (ValueError, AttributeError):
            continue


def checked_url(url: str | None) -> str:
    """The Redis URL after ``wsupload+``, or ImproperlyConfigured saying how to spell it."""
    example = "result_backend='wsupload+redis://host:6379/0' (the workers' REDIS_URL after 'wsupload+')"
    if not url:
        raise ImproperlyConfigured(f"wsupload's result backend needs the Redis URL of the job documents: {example}")
    if is_sentinel_url(url) or urlsplit(url).scheme in REDIS_SCHEMES:
        return url
    raise ImproperlyConfigured(f"wsupload's result backend reads Redis, not {masked(url)!r}: {example}")
