"""Byte progress for real: a worker uploads 48 MiB through a sandbox that reads 8 MiB a second.

What a watcher sees is read from ``wsupload:events`` (subscribed before the job is enqueued):
``bytes_sent`` rising in several updates, at most one a second, ``bytes_total`` the file's
size; nothing of the kind for a small file; and the same through the direct flow's PUT and
from an object store. The sync producer's ``wait(on_update=...)`` and the asyncio producer's
``updates()`` show it too.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import API_KEY, S3, Fleet, FleetHandle
from wsupload import AsyncProducer, Settings
from wsupload.tasks.store import results
from wsupload.tasks.store.results import JobDoc
from wsupload.worker.dev.local_services import wait_until
from wsupload.worker.dev.samples import mp4_bytes, png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
RATE = 8 * MIB
"""Bytes a second the sandbox reads: 48 MiB take about six seconds."""
BIG = 48 * MIB


@pytest.fixture(scope="module")
def slow_sandbox() -> Iterator[SandboxServer]:
    """A sandbox of this module's own: no size limit, every body read at ``RATE``."""
    with SandboxServer(api_key=API_KEY, read_rate=RATE) as server:
        yield server


def big_mp4(path: Path, size: int = BIG) -> Path:
    with open(path, "wb") as out:
        out.write(mp4_bytes(4096))
        out.write(uuid.uuid4().bytes)  # bytes of its own: no upload is an earlier one's duplicate
        out.truncate(size)  # sparse: cheap to make, read at full size
    return path


def workers_for(fleet: Fleet, sandbox: SandboxServer, **env: str) -> FleetHandle:
    return fleet(
        WAVESPEED_BASE_URL=sandbox.url,
        WSUPLOAD_MAX_BYTES=str(2 * BIG),
        # The sandbox is still reading the socket's buffers after the last byte went: not a timeout.
        WSUPLOAD_READ_TIMEOUT="30",
        **env,
    )


class Events:
    """Everything published on ``wsupload:events`` from subscription on, by job."""

    def __init__(self, workers: FleetHandle) -> None:
        self.pubsub = workers.producer.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self.pubsub.subscribe(results.EVENTS_CHANNEL)
        self.pubsub.get_message(timeout=5)  # the subscription's answer: subscribed from here on
        self.seen: list[dict[str, Any]] = []

    def of(self, job_id: str) -> list[dict[str, Any]]:
        return [event for event in self.seen if event.get("job_id") == job_id]

    def until_ended(self, job_ids: list[str], timeout: float = 60) -> None:
        """Read events until each job's terminal one came."""

        def all_ended() -> bool:
            while (message := self.pubsub.get_message(timeout=0.1)) is not None:
                self.seen.append(json.loads(message["data"]))
            return all(any(e["status"] in results.TERMINAL for e in self.of(job_id)) for job_id in job_ids)

        wait_until(all_ended, timeout, interval=0, what=f"the end events of {job_ids}")

    def close(self) -> None:
        self.pubsub.close()


def check_progress(events: list[dict[str, Any]], size: int) -> list[int]:
    """The job's progress events: running, rising ``bytes_sent`` (≥ 3 distinct), ``bytes_total`` the size."""
    progress = [e for e in events if "progress" in e]
    sent = [e["progress"]["bytes_sent"] for e in progress]
    assert len(set(sent)) >= 3, f"bytes_sent in only {len(set(sent))} distinct updates: {progress}"
    assert sent == sorted(sent), f"bytes_sent went back: {sent}"
    assert sent[-1] <= size
    assert {e["progress"]["bytes_total"] for e in progress} == {size}
    assert {e["status"] for e in progress} == {"running"}
    assert set(progress[0]) == {"job_id", "status", "progress"}
    return sent


def test_a_48_mib_upload_shows_bytes_sent_rising_and_the_waiting_producer_sees_it(
    fleet: Fleet, slow_sandbox: SandboxServer, media_root: Path
) -> None:
    workers = workers_for(fleet, slow_sandbox)
    path = big_mp4(media_root / f"progress-{uuid.uuid4().hex[:8]}.mp4")
    events = Events(workers)
    try:
        began = time.monotonic()
        (job,) = workers.producer.enqueue([str(path)])
        seen_by_wait: list[JobDoc] = []

        def on_update(docs: list[JobDoc | None]) -> None:
            seen_by_wait.extend(doc for doc in docs if doc is not None and "progress" in doc)

        outcome = workers.producer.wait([job.job_id], timeout=60, on_update=on_update)
        events.until_ended([job.job_id])
        took = time.monotonic() - began
    finally:
        events.close()

    (doc,) = outcome.docs
    assert doc is not None
    assert doc["status"] == "succeeded", doc
    assert doc["result"]["size"] == BIG
    assert "progress" not in doc  # the ended document drops it
    sent = check_progress(events.of(job.job_id), BIG)
    # At most one progress write a second (the upload's whole time bounds how many there were).
    assert len(sent) <= took + 1, f"{len(sent)} progress events in {took:.1f} s"
    assert seen_by_wait, "wait(on_update=...) re-read the running document but never saw its progress"
    assert seen_by_wait[-1]["progress"]["bytes_total"] == BIG
    assert seen_by_wait[-1]["status"] == "running"


def test_a_small_files_job_publishes_no_progress(fleet: Fleet, slow_sandbox: SandboxServer, media_root: Path) -> None:
    workers = workers_for(fleet, slow_sandbox)
    path = media_root / f"progress-small-{uuid.uuid4().hex[:8]}.png"
    path.write_bytes(png_bytes(256, 256))
    events = Events(workers)
    try:
        (job,) = workers.producer.enqueue([str(path)])
        events.until_ended([job.job_id])
    finally:
        events.close()
    mine = events.of(job.job_id)
    assert [e["status"] for e in mine][-1] == "succeeded"
    assert [e for e in mine if "progress" in e] == []


def test_the_direct_flows_put_and_an_s3_object_show_progress_too(
    fleet: Fleet, slow_sandbox: SandboxServer, media_root: Path, s3: S3
) -> None:
    workers = workers_for(fleet, slow_sandbox, WSUPLOAD_UPLOAD_FLOW="direct")
    local = big_mp4(media_root / f"progress-direct-{uuid.uuid4().hex[:8]}.mp4")
    key = f"progress/{uuid.uuid4().hex[:8]}.mp4"
    s3.admin.upload_file(str(big_mp4(media_root / "for-s3.mp4")), "media", key)
    events = Events(workers)
    try:
        jobs = workers.producer.enqueue([str(local), f"s3://media/{key}"])
        ids = [job.job_id for job in jobs]
        outcome = workers.producer.wait(ids, timeout=90)
        events.until_ended(ids)
    finally:
        events.close()
        s3.admin.delete_object(Bucket="media", Key=key)
    assert [(d or {}).get("status") for d in outcome.docs] == ["succeeded", "succeeded"], outcome.docs
    assert {(d or {})["result"]["method"] for d in outcome.docs} == {"direct"}
    check_progress(events.of(ids[0]), BIG)
    check_progress(events.of(ids[1]), BIG)


def test_wait_and_batch_wait_print_a_large_uploads_bytes_in_a_log(
    fleet: Fleet, slow_sandbox: SandboxServer, media_root: Path
) -> None:
    # Slower still: `batch wait` writes a log line every 5 s, and one must fall while bytes move.
    slow_sandbox.add_fault(Fault(rate=3 * MIB, step="binary", times=2))
    workers = workers_for(fleet, slow_sandbox)
    (job,) = workers.producer.enqueue([str(big_mp4(media_root / f"progress-cli-{uuid.uuid4().hex[:8]}.mp4"))])
    batch = workers.producer.enqueue_batch([str(big_mp4(media_root / f"progress-batch-{uuid.uuid4().hex[:8]}.mp4"))])
    cli = [sys.executable, "-m", "wsupload.worker.cli"]
    watchers = [
        subprocess.Popen(
            [*cli, "wait", "--timeout", "90", job.job_id], env=workers.env, stderr=subprocess.PIPE, text=True
        ),
        subprocess.Popen(
            [*cli, "batch", "wait", "--timeout", "90", batch.batch_id],
            env=workers.env,
            stderr=subprocess.PIPE,
            text=True,
        ),
    ]
    logs = [watcher.communicate(timeout=120)[1] for watcher in watchers]
    assert [watcher.returncode for watcher in watchers] == [0, 0], logs
    waited, batch_waited = (log.splitlines() for log in logs)
    # Not a terminal: plain lines, a job's bytes at most every few seconds, then its end.
    moving = [line for line in waited if line.startswith(f"{job.job_id}  running  ") and line.endswith("/48.0 MiB")]
    assert moving, logs[0]
    assert len(moving) <= 5, logs[0]
    assert waited[-1] == f"{job.job_id}  succeeded"
    assert any(line.endswith("/48.0 MiB") and "0/1 ·" in line for line in batch_waited), logs[1]


def test_updates_yields_bytes_sent_rising(fleet: Fleet, slow_sandbox: SandboxServer, media_root: Path) -> None:
    workers = workers_for(fleet, slow_sandbox)
    path = big_mp4(media_root / f"aio-progress-{uuid.uuid4().hex[:8]}.mp4")

    async def scenario() -> list[JobDoc]:
        async with AsyncProducer(Settings.from_env(workers.env)) as producer:
            (job,) = await producer.enqueue([str(path)])
            return [doc async for doc in producer.updates([job.job_id])]

    docs = asyncio.run(scenario())
    sent = [doc["progress"]["bytes_sent"] for doc in docs if doc.get("progress")]
    assert len(sent) >= 3, [doc["status"] for doc in docs]
    assert sent == sorted(sent)
    assert {doc["progress"]["bytes_total"] for doc in docs if doc.get("progress")} == {BIG}
    assert docs[-1]["status"] == "succeeded"
