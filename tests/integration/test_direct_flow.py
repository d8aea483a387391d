"""The direct flow end to end: a real worker (WSUPLOAD_UPLOAD_FLOW=direct, debug logging) against the sandbox.

Each step's faults are caused for real, each in its own test; the last tests prove the API key
never reached the PUT target and the signed URL is in no log line (urllib3's DEBUG lines included)
and no document, and that ``auto`` against a server without the ticket endpoint uses the binary one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import rabbit
from tests.integration.conftest import (
    S3,
    SANDBOX_MAX_BYTES,
    Fleet,
    StartWorker,
    finished,
    producer_env,
    run_one,
    unacked_messages,
)
from wsupload.config import Settings
from wsupload.tasks.store import results
from wsupload.tasks.store.keys import DEAD
from wsupload.worker.dev.local_services import WorkerProcess, wait_until
from wsupload.worker.dev.samples import mp4_bytes, png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def direct_worker(
    worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Producer, WorkerProcess]]:
    queue = "direct-" + uuid.uuid4().hex[:8]
    env = {
        **worker_env,
        "WSUPLOAD_QUEUE": queue,
        "WSUPLOAD_BULK_QUEUE": f"{queue}.bulk",
        "WSUPLOAD_UPLOAD_FLOW": "direct",
    }
    producer = Producer(Settings.from_env(producer_env(env)))
    log = tmp_path_factory.mktemp("direct-logs") / "worker.log"
    process = WorkerProcess(env=env, log_path=log, concurrency=2, loglevel="debug")
    try:
        with rabbit.opening_channels(env):
            process.start().wait_ready(producer.app)
        yield producer, process
    finally:
        process.stop()
        producer.close()


@pytest.fixture
def direct_producer(direct_worker: tuple[Producer, WorkerProcess]) -> Producer:
    return direct_worker[0]


@pytest.fixture
def png(media_root: Path, request: pytest.FixtureRequest) -> Path:
    path = media_root / f"direct-{request.node.name[:40]}.png"
    path.write_bytes(png_bytes(48 + len(request.node.name) % 16, 32))
    return path


def steps(sandbox: SandboxServer) -> list[tuple[str, int | None]]:
    return [(r.step, r.status) for r in sandbox.records]


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return bytes(answer.read())


def assert_landed(doc: results.JobDoc, sandbox: SandboxServer, data: bytes) -> None:
    assert doc["status"] == "succeeded", doc
    assert doc["result"]["method"] == "direct"
    assert doc["result"]["size"] == len(data)
    tickets = [r for r in sandbox.records if r.step == "ticket" and r.status == 200]
    # The download_url the last ticket named, and its bytes are the file's.
    assert doc["result"]["download_url"].startswith(f"{sandbox.url}/files/d{tickets[-1].object}/")
    assert download(doc["result"]["download_url"]) == data
    puts = [r for r in sandbox.records if r.step == "put"]
    assert puts[-1].sha256 == hashlib.sha256(data).hexdigest()
    assert not any(r.authorization_sent or r.key_seen for r in puts)


def test_happy_path(direct_producer: Producer, sandbox: SandboxServer, png: Path) -> None:
    doc = run_one(direct_producer, png)
    assert_landed(doc, sandbox, png.read_bytes())
    assert doc["attempts"] == 1
    assert steps(sandbox) == [("ticket", 200), ("put", 200)]


def test_ticket_503_then_429_then_ok(direct_producer: Producer, sandbox: SandboxServer, png: Path) -> None:
    sandbox.add_fault(Fault(step="ticket", status=503))
    sandbox.add_fault(Fault(step="ticket", status=429, retry_after="0"))
    doc = run_one(direct_producer, png)
    assert_landed(doc, sandbox, png.read_bytes())
    assert doc["attempts"] == 3
    assert steps(sandbox) == [("ticket", 503), ("ticket", 429), ("ticket", 200), ("put", 200)]


def test_put_reset_mid_body_then_500_then_ok(
    direct_producer: Producer, sandbox: SandboxServer, media_root: Path
) -> None:
    big = media_root / "direct-reset.mp4"
    big.write_bytes(mp4_bytes(SANDBOX_MAX_BYTES // 2))  # large enough that the reset comes mid-body
    sandbox.add_fault(Fault(step="put", reset=True))
    sandbox.add_fault(Fault(step="put", status=500))
    doc = run_one(direct_producer, big)
    assert_landed(doc, sandbox, big.read_bytes())
    assert doc["attempts"] == 3
    # One ticket: the PUTs were repeated on it while it was valid.
    assert steps(sandbox) == [("ticket", 200), ("put", None), ("put", 500), ("put", 200)]


def test_expired_ticket_then_a_new_ticket(
    direct_producer: Producer, sandbox: SandboxServer, png: Path, direct_worker: tuple[Producer, WorkerProcess]
) -> None:
    sandbox.add_fault(Fault(step="ticket", expired=True))
    doc = run_one(direct_producer, png)
    assert_landed(doc, sandbox, png.read_bytes())
    assert doc["attempts"] == 2
    assert steps(sandbox) == [("ticket", 200), ("put", 403), ("ticket", 200), ("put", 200)]
    refused = sandbox.records[1].signature
    assert refused
    # The 403 quoted it, as S3 does; neither the retry's log line nor last_error kept it.
    assert "SignatureDoesNotMatch" in direct_worker[1].log_path.read_text(errors="replace")
    assert refused not in direct_worker[1].log_path.read_text(errors="replace")
    assert refused not in json.dumps(doc)


def test_ticket_401_fails_after_one_request(direct_producer: Producer, sandbox: SandboxServer, png: Path) -> None:
    sandbox.add_fault(Fault(step="ticket", status=401))
    doc = run_one(direct_producer, png)
    assert (doc["status"], doc["error"]["kind"], doc["attempts"]) == ("failed", "unauthorized", 1)
    assert steps(sandbox) == [("ticket", 401)]


def test_ticket_413_fails_after_one_request(
    direct_producer: Producer, sandbox: SandboxServer, media_root: Path
) -> None:
    big = media_root / "direct-big.mp4"
    big.write_bytes(mp4_bytes(SANDBOX_MAX_BYTES * 2))  # within the worker's limit, over the server's
    doc = run_one(direct_producer, big)
    assert (doc["status"], doc["error"]["kind"], doc["error"]["http_status"]) == ("failed", "too_large", 413)
    assert steps(sandbox) == [("ticket", 413)]


def test_no_key_at_the_put_target_and_the_signed_url_nowhere(
    direct_producer: Producer, sandbox: SandboxServer, png: Path, direct_worker: tuple[Producer, WorkerProcess]
) -> None:
    # PUT errors first (their texts go into last_error and the log), then an exhausted job.
    sandbox.add_fault(Fault(step="put", reset=True))
    sandbox.add_fault(Fault(step="put", status=503))
    ok = run_one(direct_producer, png)
    assert_landed(ok, sandbox, png.read_bytes())
    sandbox.add_fault(Fault(step="put", status=502, times=10))
    exhausted = run_one(direct_producer, png)
    assert exhausted["error"]["kind"] == "retries_exhausted"
    assert not any(r.authorization_sent or r.key_seen for r in sandbox.records if r.step == "put")
    log = direct_worker[1].log_path.read_text(errors="replace")
    assert "PUT /_storage/" in log  # urllib3's DEBUG request lines are in the log
    stored = json.dumps([direct_producer.status([ok["job_id"], exhausted["job_id"]])])
    dead = json.dumps(direct_producer.redis.lrange(DEAD, 0, -1), default=str)
    # Dead letters hold messages a worker could not run, never an upload's error: checked all the same.
    for text in (log, stored, dead):
        assert "signature=" not in text
        assert "expires=" not in text


def test_auto_without_the_ticket_endpoint_uses_the_binary_one(
    fleet: Fleet, sandbox: SandboxServer, media_root: Path
) -> None:
    path = media_root / "direct-auto.png"
    path.write_bytes(png_bytes())
    sandbox.direct = False
    try:
        # One process: what it learns of the endpoints is per process (each child of --processes N learns it).
        handle = fleet(WSUPLOAD_UPLOAD_FLOW="auto", WSUPLOAD_PROCESSES="1")
        first = run_one(handle.producer, path)
        second = run_one(handle.producer, path)
    finally:
        sandbox.direct = True
    for doc in (first, second):
        assert (doc["status"], doc["attempts"], doc["result"]["method"]) == ("succeeded", 1, "upload")
        assert download(doc["result"]["download_url"]) == path.read_bytes()
    assert steps(sandbox) == [("binary", 200), ("binary", 200)]
    log = handle.workers[0].log_path.read_text()
    assert log.count("WSUPLOAD_UPLOAD_FLOW=auto uses the binary endpoint") == 1


def test_an_s3_key_streams_into_the_put(direct_producer: Producer, sandbox: SandboxServer, s3: S3) -> None:
    name = f"in/direct-{uuid.uuid4().hex[:8]}.png"
    data = png_bytes(40, 24)
    s3.admin.put_object(Bucket="media", Key=name, Body=data)
    doc = run_one(direct_producer, f"s3://media/{name}")
    assert_landed(doc, sandbox, data)
    assert steps(sandbox) == [("ticket", 200), ("put", 200)]


def test_a_bulk_batch_by_the_job_option(
    worker: WorkerProcess, sandbox: SandboxServer, media_root: Path, worker_env: dict[str, str]
) -> None:
    # The session worker runs WSUPLOAD_UPLOAD_FLOW=binary: options.upload_flow chooses for these jobs.
    paths = []
    for n in range(6):
        path = media_root / f"direct-bulk-{n}.png"
        path.write_bytes(png_bytes(20 + n, 20))
        paths.append(str(path))
    bulk_producer = Producer(Settings.from_env(producer_env(worker_env)))
    try:
        batch = bulk_producer.enqueue_batch(paths, options={"dedup": False, "upload_flow": "direct"})
        outcome = bulk_producer.wait([job.job_id for job in batch.jobs], timeout=60)
    finally:
        bulk_producer.close()
    docs = [doc for doc in outcome.docs if doc is not None]
    assert [doc["status"] for doc in docs] == ["succeeded"] * 6
    assert {doc["result"]["method"] for doc in docs} == {"direct"}
    assert all(doc["options"]["upload_flow"] == "direct" for doc in docs)  # kept for the sweep
    for source, doc in zip(paths, docs, strict=True):
        assert download(doc["result"]["download_url"]) == Path(source).read_bytes()
    assert sorted(r.step for r in sandbox.records) == ["put"] * 6 + ["ticket"] * 6


def test_a_worker_sigkilled_mid_put_the_job_ends_once(
    own_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, png: Path
) -> None:
    first = start_worker(WSUPLOAD_UPLOAD_FLOW="direct")
    sandbox.add_fault(Fault(step="put", stall=30))  # the first PUT hangs at the storage
    (job,) = own_producer.enqueue([str(png)])
    wait_until(lambda: steps(sandbox)[-1:] == [("put", None)], 30, what="the PUT to reach the sandbox")
    second = start_worker(WSUPLOAD_UPLOAD_FLOW="direct")
    first.kill()
    doc: results.JobDoc = wait_until(finished(own_producer, job.job_id), 30, interval=0.2, what="the job to end")
    sandbox.release_stalls()
    assert_landed(doc, sandbox, png.read_bytes())
    assert (doc["worker"], doc["generation"], doc["attempts"]) == (second.hostname, 2, 2)
    # The second delivery asked its own ticket: the first one's PUT is not trusted to have landed.
    assert [step for step, _ in steps(sandbox)] == ["ticket", "put", "ticket", "put"]
    wait_until(lambda: unacked_messages(own_producer) == [], 10, what="the message to be acknowledged")


def test_a_ticket_answer_carrying_an_error_code_is_retried(
    direct_producer: Producer, sandbox: SandboxServer, png: Path
) -> None:
    sandbox.add_fault(Fault(step="ticket", body={"code": 500, "message": "Upload failed"}))  # HTTP 200, code 500
    doc = run_one(direct_producer, png)
    assert_landed(doc, sandbox, png.read_bytes())
    assert steps(sandbox) == [("ticket", 200), ("ticket", 200), ("put", 200)]


def test_a_ticket_that_is_not_a_put_is_unexpected_and_nothing_is_sent(
    direct_producer: Producer, sandbox: SandboxServer, png: Path
) -> None:
    data = {"type": "image", "download_url": f"{sandbox.url}/files/x", "filename": png.name, "size": 1}
    upload = {"method": "POST", "url": f"{sandbox.url}/_storage/1?signature=x", "headers": {}}
    sandbox.add_fault(
        Fault(step="ticket", body={"code": 200, "message": "success", "data": {**data, "upload": upload}})
    )
    doc = run_one(direct_producer, png)
    assert (doc["status"], doc["error"]["kind"], doc["attempts"]) == ("failed", "unexpected_response", 1)
    assert "signature" not in json.dumps(doc)
    assert steps(sandbox) == [("ticket", 200)]


@pytest.mark.parametrize(
    "fault",
    [
        Fault(step="ticket", status=408),
        Fault(step="ticket", reset=True),
        Fault(step="ticket", stall=3.0),  # longer than WSUPLOAD_READ_TIMEOUT=1.5
        Fault(step="put", status=503),
        Fault(step="put", status=429, retry_after="0"),
        Fault(step="put", stall=3.0),
    ],
    ids=["ticket-408", "ticket-reset", "ticket-read-timeout", "put-503", "put-429", "put-read-timeout"],
)
def test_each_steps_transient_failures_are_retried(
    direct_producer: Producer, sandbox: SandboxServer, png: Path, fault: Fault
) -> None:
    sandbox.add_fault(dataclasses.replace(fault))
    doc = run_one(direct_producer, png)
    assert_landed(doc, sandbox, png.read_bytes())
    assert doc["attempts"] == 2
    tickets = [step for step, _ in steps(sandbox)].count("ticket")
    assert tickets == (2 if fault.step == "ticket" else 1)  # a PUT is repeated on its valid ticket
    sandbox.release_stalls()


@pytest.mark.parametrize(("step", "status"), [("ticket", 502), ("put", 502)])
def test_retries_exhausted_on_either_step(
    direct_producer: Producer, sandbox: SandboxServer, png: Path, step: str, status: int
) -> None:
    sandbox.add_fault(Fault(step=step, status=status, times=10))
    doc = run_one(direct_producer, png)
    assert (doc["error"]["kind"], doc["error"]["http_status"], doc["attempts"]) == ("retries_exhausted", status, 3)
    assert len(sandbox.records) == (3 if step == "ticket" else 4)  # a ticket, then three PUTs


def test_bad_input_sends_nothing(direct_producer: Producer, sandbox: SandboxServer, media_root: Path) -> None:
    fake = media_root / "direct-fake.png"
    fake.write_bytes(b"not a png at all")
    doc = run_one(direct_producer, fake)
    assert (doc["status"], doc["error"]["kind"]) == ("failed", "invalid_input")
    assert sandbox.records == []
