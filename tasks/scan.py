"""The Celery task ``wsupload.scan``: one run of a scheduled batch.

Celery beat sends the schedule's whole definition (``config.schedules``), so
workers need no schedules file. A run lists the source, enqueues as one batch
only what is new or changed since the last run (a file's size and mtime, an
object's ETag, a manifest line's text), then remembers it. Enqueue first,
remember second: a crash in between enqueues again next time, and dedup keeps
that from uploading twice. Runs of one schedule never overlap (a lock).

State, per schedule: ``wsupload:scan:<name>:seen`` (source → version) and
``wsupload:scan:<name>`` (runs, last_run_at, last_found, last_enqueued,
last_batch, last_error).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from celery import shared_task
from redis.exceptions import LockError

from wsupload.config.schedules import Schedule
from wsupload.config.settings import SCAN_TASK_NAME, Settings
from wsupload.errors import InvalidInput, WsuploadError
from wsupload.tasks import runtime
from wsupload.tasks.enqueue import Enqueuer
from wsupload.tasks.sources.discovery import Found, discover, read_manifest
from wsupload.tasks.sources.local_files import inside_roots
from wsupload.tasks.store import keys, results
from wsupload.tasks.wire.options import JobOptions

log = logging.getLogger(__name__)
CHUNK = 2000


state_key = keys.scan_state


seen_key = keys.scan_seen


def list_sources(schedule: Schedule, settings: Settings) -> list[Found]:
    if schedule.manifest:
        return [Found(source, None, "") for source in read_manifest(Path(schedule.manifest))]
    assert schedule.source is not None
    if "://" not in schedule.source:
        local = Path(schedule.source)
        if settings.allowed_roots and not inside_roots(local.resolve(), settings.allowed_roots):
            raise InvalidInput(f"{schedule.source!r} is outside WSUPLOAD_ALLOWED_ROOTS")
        if not local.is_dir():
            raise InvalidInput(f"{schedule.source!r} is not a directory")
    return list(discover(schedule.source, settings, schedule.glob))


SCAN_LOCK_TIMEOUT = 3600
"""Seconds a run holds its schedule's lock at most: a worker that dies mid-scan blocks that schedule this long."""


def fresh_sources(client: redis.Redis, name: str, found: Sequence[Found]) -> list[Found]:
    """Those not seen before, or seen with another version."""
    fresh = []
    for chunk in results.chunks(found, CHUNK):
        known = client.hmget(seen_key(name), [f.source for f in chunk])
        for item, version in zip(chunk, known, strict=True):
            if version is None or results.text(version) != (item.version or ""):
                fresh.append(item)
    return fresh


def run_scan(settings: Settings, client: redis.Redis, schedule: Schedule) -> dict[str, str | int]:
    """One run; returns what it recorded in the schedule's state."""
    # redis-py's Lock: released only by its holder's token, in one script.
    lock = client.lock(keys.scan_lock(schedule.name), timeout=SCAN_LOCK_TIMEOUT)
    if not lock.acquire(blocking=False):
        log.info("scan %s: the previous run is still going; skipping this one", schedule.name)
        return {"skipped": 1}
    record: dict[str, str | int] = {"last_run_at": results.isoformat(results.utcnow()), "last_error": ""}
    try:
        found = list_sources(schedule, settings)
        fresh = fresh_sources(client, schedule.name, found)
        record.update(last_found=len(found), last_enqueued=len(fresh), last_batch="")
        if fresh:
            options = JobOptions(callback_url=schedule.callback_url).to_message()
            # Explicit either way: a batch deduplicates unless told not to.
            options["dedup"] = schedule.dedup
            enqueuer = Enqueuer(settings, client)
            try:
                batch = enqueuer.enqueue_batch(fresh, name=schedule.name, options=options)
            finally:
                enqueuer.close()
            record["last_batch"] = batch.batch_id
            for chunk in results.chunks(fresh, CHUNK):
                client.hset(seen_key(schedule.name), mapping={f.source: f.version or "" for f in chunk})
        log.info("scan %s: %d found, %d new or changed", schedule.name, len(found), len(fresh))
    except (WsuploadError, OSError) as exc:
        record["last_error"] = str(exc)
        log.error("scan %s failed: %s", schedule.name, exc)
    finally:
        client.hset(state_key(schedule.name), mapping=record)  # type: ignore[arg-type]  # (key type is invariant)
        client.hincrby(state_key(schedule.name), "runs", 1)
        with contextlib.suppress(LockError):  # it expired mid-run: someone else may hold it now
            lock.release()
    return record


@shared_task(name=SCAN_TASK_NAME, ignore_result=True)
def scan(schedule: dict[str, Any]) -> None:
    try:
        parsed = Schedule.from_message(schedule)
    except WsuploadError as exc:
        log.error("scan: a malformed schedule was sent: %s", exc)
        return
    here = runtime.current()
    run_scan(here.settings, here.redis, parsed)
