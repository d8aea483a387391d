"""s3:// sources end to end: moto's S3 server (IAM enforced), the worker and the sandbox."""

import hashlib
import json
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import S3, WORKER_MAX_BYTES, Fleet, producer_env, run_one
from wsupload.config import Settings
from wsupload.errors import SourceUnavailable
from wsupload.tasks.sources.object_store import ObjectURL, S3Store
from wsupload.worker.dev.local_services import WorkerProcess
from wsupload.worker.dev.samples import mp4_bytes, png_bytes
from wsupload.worker.dev.sandbox import SandboxServer
from wsupload.worker.producer import Producer

pytestmark = pytest.mark.integration


def key() -> str:
    return f"in/{uuid.uuid4().hex[:8]}.png"


@pytest.mark.usefixtures("worker")
def test_an_s3_key_enqueued_by_the_cli_arrives_intact(
    s3: S3, sandbox: SandboxServer, worker_env: dict[str, str]
) -> None:
    name = key()
    s3.admin.put_object(Bucket="media", Key=name, Body=png_bytes())
    env = producer_env(worker_env)

    def wsupload(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "wsupload.worker.cli", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=90, check=False)

    (job,) = json.loads(wsupload("enqueue", "--json", f"s3://media/{name}").stdout)
    waited = wsupload("wait", "--json", "--timeout", "60", job["job_id"])
    assert waited.returncode == 0, waited.stdout + waited.stderr
    (doc,) = json.loads(waited.stdout)
    assert doc["result"]["filename"] == name.rsplit("/", 1)[1]
    assert doc["result"]["method"] == "upload"
    assert [r.sha256 for r in sandbox.records] == [hashlib.sha256(png_bytes()).hexdigest()]


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize(
    ("source", "kind", "needle"),
    [
        ("s3://media/in/missing.png", "source_unavailable", "no such object"),
        ("s3://vanished/a.png", "source_unavailable", "no such bucket 'vanished'"),
        ("s3://no-such-bucket/a.png", "invalid_input", "outside WSUPLOAD_ALLOWED_BUCKETS"),
        ("s3://media/", "invalid_input", "does not name an object"),
        ("s3://media/in/notes.txt", "invalid_input", "supported extension"),
    ],
)
def test_bad_keys_fail_clearly_with_no_upload(
    producer: Producer, sandbox: SandboxServer, source: str, kind: str, needle: str
) -> None:
    doc = run_one(producer, source)
    assert (doc["status"], doc["error"]["kind"], doc["error"]["retryable"]) == ("failed", kind, False)
    assert needle in doc["error"]["message"]
    assert sandbox.records == []


@pytest.mark.usefixtures("worker")
def test_access_denied_by_policy(producer: Producer, sandbox: SandboxServer, s3: S3) -> None:
    s3.admin.put_object(Bucket="private", Key="secret.png", Body=png_bytes())
    doc = run_one(producer, "s3://private/secret.png")
    assert (doc["error"]["kind"], doc["error"]["retryable"]) == ("source_unavailable", False)
    assert "access denied" in doc["error"]["message"]
    assert sandbox.records == []


def test_wrong_credentials_are_access_denied(s3: S3) -> None:
    name = key()
    s3.admin.put_object(Bucket="media", Key=name, Body=png_bytes())
    env = {**s3.worker_env, "AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG", "AWS_SECRET_ACCESS_KEY": "wrong"}
    with pytest.MonkeyPatch.context() as patch:
        for name_, value in env.items():
            patch.setenv(name_, value)
        store = S3Store(Settings.from_env(env))
        with pytest.raises(SourceUnavailable, match="access denied") as caught:
            store.open(ObjectURL("s3", "media", name))
    assert "wrong" not in str(caught.value).lower().replace("wrongwrong", "")


@pytest.mark.usefixtures("worker")
def test_a_store_failing_transiently_then_recovering(producer: Producer, sandbox: SandboxServer, s3: S3) -> None:
    name = key()
    s3.admin.put_object(Bucket="media", Key=name, Body=png_bytes())
    before = s3.s3_requests()
    s3.fault(status=503, code="SlowDown", times=2)
    doc = run_one(producer, f"s3://media/{name}")
    assert doc["status"] == "succeeded", doc
    assert doc["attempts"] == 1  # the store's failures cost no upload attempt
    assert s3.s3_requests() - before >= 5  # two refused, then HEAD, ranged GET, GET
    assert len(sandbox.records) == 1


@pytest.mark.usefixtures("worker")
def test_a_store_failing_mid_upload_is_retried(producer: Producer, sandbox: SandboxServer, s3: S3) -> None:
    name = key()
    s3.admin.put_object(Bucket="media", Key=name, Body=png_bytes())
    # HEAD, then the ranged GET succeed; the first full GET (inside upload attempt 1) fails.
    s3.fault(status=500, code="InternalError", times=1, method="GET", skip=1)
    doc = run_one(producer, f"s3://media/{name}")
    assert doc["status"] == "succeeded", doc
    assert doc["attempts"] == 2
    assert sandbox.records[-1].sha256 == hashlib.sha256(png_bytes()).hexdigest()


@pytest.mark.usefixtures("worker")
def test_a_store_that_stays_down_ends_the_job(producer: Producer, sandbox: SandboxServer, s3: S3) -> None:
    s3.fault(status=503, code="SlowDown", times=3)  # WSUPLOAD_MAX_ATTEMPTS
    doc = run_one(producer, f"s3://media/{key()}")
    assert (doc["error"]["kind"], doc["error"]["http_status"]) == ("retries_exhausted", 503)
    assert "the store answered 503" in doc["error"]["message"]  # a HEAD answer carries no error code
    assert sandbox.records == []


@pytest.mark.usefixtures("worker")
def test_an_object_over_the_limit_is_refused_by_default(producer: Producer, sandbox: SandboxServer, s3: S3) -> None:
    name = f"in/{uuid.uuid4().hex[:8]}.mp4"
    s3.admin.put_object(Bucket="media", Key=name, Body=mp4_bytes(WORKER_MAX_BYTES + 1))
    doc = run_one(producer, f"s3://media/{name}")
    assert doc["error"]["kind"] == "too_large"
    assert sandbox.records == []


@pytest.fixture
def presign_worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Producer]:
    env = {**worker_env, "WSUPLOAD_QUEUE": "presign-" + uuid.uuid4().hex[:6], "WSUPLOAD_OVERSIZE_POLICY": "presign"}
    env["WSUPLOAD_PRESIGN_TTL"] = "15m"
    producer = Producer(Settings.from_env(producer_env(env)))
    process = WorkerProcess(env=env, log_path=tmp_path / "presign.log", concurrency=1).start()
    try:
        process.wait_ready(producer.app)
        yield producer
    finally:
        process.stop()


def test_presign_policy_answers_with_a_working_url(presign_worker: Producer, sandbox: SandboxServer, s3: S3) -> None:
    name = f"in/{uuid.uuid4().hex[:8]}.mp4"
    data = mp4_bytes(WORKER_MAX_BYTES + 1)
    s3.admin.put_object(Bucket="media", Key=name, Body=data)
    doc = run_one(presign_worker, f"s3://media/{name}")
    assert doc["status"] == "succeeded", doc
    assert doc["result"]["method"] == "presigned_url"
    assert doc["result"]["size"] == len(data)
    assert doc["attempts"] == 0
    assert sandbox.records == []
    with s3.auth_off(), urllib.request.urlopen(doc["result"]["download_url"], timeout=10) as answer:
        assert answer.read() == data
    assert "X-Amz-Expires=900" in doc["result"]["download_url"]  # WSUPLOAD_PRESIGN_TTL=15m


def test_ingest_of_an_s3_prefix_uploads_every_object_under_it(
    fleet: Fleet, s3: S3, sandbox: SandboxServer, tmp_path: Path
) -> None:
    prefix = f"batch-{uuid.uuid4().hex[:6]}"
    bodies = [mp4_bytes(2000 + n) for n in range(3)]
    for n, body in enumerate(bodies):
        s3.admin.put_object(Bucket="media", Key=f"{prefix}/{n}.mp4", Body=body)
    s3.admin.put_object(Bucket="media", Key=f"{prefix}/notes.txt", Body=b"not media")  # not listed
    s3.admin.put_object(Bucket="media", Key=f"{prefix}-other/x.mp4", Body=mp4_bytes())  # another prefix
    workers = fleet()
    # The producer lists the prefix with its own credentials (here, the worker's).
    env = {**workers.env, **s3.worker_env}
    output = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "wsupload.worker.cli", "ingest", f"s3://media/{prefix}/", "--output", str(output)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(row["source"] for row in rows) == [f"s3://media/{prefix}/{n}.mp4" for n in range(3)]
    assert sorted(r.sha256 or "" for r in sandbox.records) == sorted(hashlib.sha256(b).hexdigest() for b in bodies)
