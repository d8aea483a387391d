"""Enqueue → real worker → sandbox over HTTP → result in Redis: success, errors, retries."""

import dataclasses
import hashlib
import json
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import SANDBOX_MAX_BYTES, run_jobs, run_one, unacked_messages
from wsupload.tasks.store import results
from wsupload.worker.dev.local_services import WorkerProcess, wait_until
from wsupload.worker.dev.samples import mp4_bytes, png_bytes, wav_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration, pytest.mark.core, pytest.mark.usefixtures("worker")]


@pytest.fixture
def png(media_root: Path, request: pytest.FixtureRequest) -> Path:
    path = media_root / f"{request.node.name[:40]}.png"
    path.write_bytes(png_bytes())
    return path


def test_uploads_arrive_with_bytes_intact(producer: Producer, sandbox: SandboxServer, media_root: Path) -> None:
    files = {"a.png": png_bytes(), "b.wav": wav_bytes(), "c.mp4": mp4_bytes(20_000)}
    for name, data in files.items():
        (media_root / name).write_bytes(data)
    jobs, docs = run_jobs(producer, [str(media_root / name) for name in files])
    for job, doc in zip(jobs, docs, strict=True):
        data = files[Path(job.source).name]
        assert doc["status"] == "succeeded", doc
        assert doc["attempts"] == 1
        assert doc["result"]["size"] == len(data)
        assert doc["result"]["filename"] == Path(job.source).name
        assert doc["result"]["type"] == {"png": "image", "wav": "audio", "mp4": "video"}[job.source[-3:]]
        with urllib.request.urlopen(doc["result"]["download_url"], timeout=10) as answer:
            assert answer.read() == data
    received = {r.filename: r.sha256 for r in sandbox.records}
    assert received == {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def test_result_document_fields(producer: Producer, png: Path) -> None:
    doc = run_one(producer, png)
    assert set(doc) >= {"job_id", "status", "source", "attempts", "result", "error", "created_at"}
    assert doc["source"] == str(png)
    assert doc["error"] is None
    for name in ("created_at", "started_at", "finished_at", "expires_at"):
        assert doc[name].endswith("Z")
    assert doc["created_at"] <= doc["started_at"] <= doc["finished_at"] < doc["expires_at"]
    ttl = producer.redis.ttl(results.result_key(doc["job_id"]))
    assert 7 * 86400 - 60 < ttl <= 7 * 86400


def test_status_goes_queued_running_retrying_succeeded(producer: Producer, sandbox: SandboxServer, png: Path) -> None:
    sandbox.add_fault(Fault(status=503))
    pubsub = producer.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(results.EVENTS_CHANNEL)
    (job,) = producer.enqueue([str(png)])
    first = producer.status([job.job_id])[0]
    assert first is not None  # never "unknown" for a real job
    seen: list[str] = [first["status"]] if first["status"] == "queued" else []
    outcome = producer.wait([job.job_id], timeout=60)
    deadline = time.monotonic() + 10
    while "succeeded" not in seen and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)  # None also for the ignored subscribe confirmation
        event = json.loads(message["data"]) if message else {}
        if event.get("job_id") == job.job_id and (not seen or seen[-1] != event["status"]):
            seen.append(event["status"])
    pubsub.close()
    assert outcome.docs[0] is not None
    assert outcome.docs[0]["status"] == "succeeded"
    assert seen[-4:] == ["running", "retrying", "running", "succeeded"]


@pytest.mark.parametrize(
    ("fault", "kind"),
    [(Fault(status=400), "rejected"), (Fault(status=401), "unauthorized"), (Fault(status=404), "client_error")],
)
def test_permanent_answers_are_sent_exactly_once(
    producer: Producer, sandbox: SandboxServer, png: Path, fault: Fault, kind: str
) -> None:
    sandbox.add_fault(dataclasses.replace(fault))
    doc = run_one(producer, png)
    assert len(sandbox.records) == 1
    assert doc["status"] == "failed"
    assert doc["error"]["kind"] == kind
    assert doc["error"]["http_status"] == fault.status
    assert doc["error"]["retryable"] is False
    assert f"sandbox fault {fault.status}" in doc["error"]["message"]


def test_the_real_413_from_the_server_is_sent_once(
    producer: Producer, sandbox: SandboxServer, media_root: Path
) -> None:
    big = media_root / "big.mp4"
    big.write_bytes(mp4_bytes(SANDBOX_MAX_BYTES * 2))  # within the worker's limit, over the server's
    doc = run_one(producer, big)
    assert [r.status for r in sandbox.records] == [413]
    assert (doc["error"]["kind"], doc["error"]["http_status"], doc["error"]["message"]) == (
        "too_large",
        413,
        "HTTP 413: File too large",
    )


def test_a_wrong_api_key_is_unauthorized(
    producer: Producer, sandbox: SandboxServer, png: Path, worker: WorkerProcess
) -> None:
    original = sandbox.api_key
    sandbox.api_key = "another-key"
    try:
        doc = run_one(producer, png)
    finally:
        sandbox.api_key = original
    assert len(sandbox.records) == 1
    assert not sandbox.records[0].authorized
    assert (doc["error"]["kind"], doc["error"]["message"]) == ("unauthorized", "HTTP 401: Invalid API key")


@pytest.mark.parametrize(
    "fault",
    [
        Fault(status=503),
        Fault(status=500, body={"code": 500, "message": "busy"}),
        Fault(status=408),
        Fault(reset=True),
        Fault(stall=3.0),  # longer than WSUPLOAD_READ_TIMEOUT=1.5
        Fault(body={"code": 500, "message": "Upload failed: invalid file type"}),  # HTTP 200 carrying 500
    ],
    ids=["503", "500", "408", "reset", "read-timeout", "200-with-code-500"],
)
def test_transient_failures_are_retried_then_succeed(
    producer: Producer, sandbox: SandboxServer, png: Path, fault: Fault
) -> None:
    sandbox.add_fault(dataclasses.replace(fault))
    doc = run_one(producer, png)
    assert doc["status"] == "succeeded", doc
    assert doc["attempts"] == 2
    assert len(sandbox.records) == 2
    assert sandbox.records[-1].sha256 == hashlib.sha256(png.read_bytes()).hexdigest()


def test_retries_exhausted_reports_the_last_status(producer: Producer, sandbox: SandboxServer, png: Path) -> None:
    sandbox.add_fault(Fault(status=502, times=10))
    doc = run_one(producer, png)
    assert len(sandbox.records) == 3  # WSUPLOAD_MAX_ATTEMPTS
    assert doc["attempts"] == 3
    assert doc["error"]["kind"] == "retries_exhausted"
    assert doc["error"]["http_status"] == 502
    assert "gave up after 3 attempts" in doc["error"]["message"]


def test_retry_after_is_honoured_beyond_the_backoff_ceiling(
    producer: Producer, sandbox: SandboxServer, png: Path
) -> None:
    sandbox.add_fault(Fault(status=429, retry_after="1"))
    doc = run_one(producer, png)
    assert doc["status"] == "succeeded"
    first, second = sandbox.records
    # WSUPLOAD_BACKOFF_MAX is 0.2 s here: only Retry-After explains a full second.
    assert second.received_at - first.answered_at >= 1.0


def test_many_jobs_at_once_all_accounted_for(producer: Producer, sandbox: SandboxServer, media_root: Path) -> None:
    paths = []
    for n in range(20):
        path = media_root / f"many-{n}.png"
        path.write_bytes(png_bytes(8 + n, 8))
        paths.append(str(path))
    sandbox.add_fault(Fault(status=503, times=2))  # fewer than WSUPLOAD_MAX_ATTEMPTS: every job must succeed
    _, docs = run_jobs(producer, paths)
    assert [d["status"] for d in docs] == ["succeeded"] * 20
    assert len({d["result"]["download_url"] for d in docs}) == 20
    # Acknowledged right after each outcome is recorded: nothing left in flight.
    wait_until(lambda: unacked_messages(producer) == [], 10, what="every message to be acknowledged")
