"""The API key lives in the worker's environment only: not in Redis, messages or logs."""

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.conftest import API_KEY, producer_env, run_one
from wsupload.config import Settings
from wsupload.worker.dev.local_services import WorkerProcess, wait_until
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer
from wsupload.worker.producer import Producer

pytestmark = pytest.mark.integration


def everything_in(client: redis.Redis) -> list[Any]:
    """Every key name and stored value in the database, whatever its type."""
    found: list[Any] = []
    for key in client.scan_iter(count=1000):
        found.append(key)
        kind = client.type(key)
        if kind == b"string":
            found.append(client.get(key) or b"")
        elif kind == b"list":
            found.extend(client.lrange(key, 0, -1))
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                found += [field, value]
        elif kind == b"set":
            found.extend(client.smembers(key))
        elif kind == b"zset":
            found.extend(client.zrange(key, 0, -1))
    return found


def test_api_key_is_absent_from_redis_and_worker_logs(
    producer: Producer, sandbox: SandboxServer, worker: WorkerProcess, media_root: Path
) -> None:
    png = media_root / "secret-check.png"
    png.write_bytes(png_bytes())
    assert run_one(producer, png)["status"] == "succeeded"
    sandbox.add_fault(Fault(status=401))
    assert run_one(producer, png)["error"]["kind"] == "unauthorized"

    # One more job, held by the sandbox, so its message sits in kombu's unacked hash while we look.
    sandbox.add_fault(Fault(stall=1.0))
    (held,) = producer.enqueue([str(png)])
    wait_until(lambda: len(sandbox.records) == 3, 30, what="the held upload to reach the sandbox")
    stored = everything_in(producer.redis)
    assert any(held.job_id.encode() in value for value in stored), "the scan must see the in-flight message"
    assert not any(API_KEY.encode() in value for value in stored)
    assert producer.wait([held.job_id], timeout=60).all_succeeded

    # The outcome line is written just after the document: wait for it, then look.
    wait_until(lambda: held.job_id in worker.log_path.read_text(), 10, what="the worker to log the held job")
    assert API_KEY not in worker.log_path.read_text()


@pytest.fixture
def debug_worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[WorkerProcess, Producer]]:
    env = {**worker_env, "WSUPLOAD_QUEUE": "secrets-" + uuid.uuid4().hex[:8], "WSUPLOAD_CALLBACK_SECRET": CALLBACK}
    producer = Producer(Settings.from_env(producer_env(env)))
    process = WorkerProcess(env=env, log_path=tmp_path / "worker.log", concurrency=1, loglevel="debug").start()
    try:
        process.wait_ready(producer.app)
        yield process, producer
    finally:
        process.stop()


CALLBACK = "whsec-integration-" + uuid.uuid4().hex


def test_a_server_that_echoes_the_key_does_not_put_it_in_logs_or_redis(
    debug_worker: tuple[WorkerProcess, Producer], sandbox: SandboxServer, media_root: Path
) -> None:
    worker, producer = debug_worker
    png = media_root / "echo-check.png"
    png.write_bytes(png_bytes())
    echo = {"code": 503, "message": f"bad key {API_KEY} (secret {CALLBACK})"}
    sandbox.add_fault(Fault(status=503, body=echo))  # retried: the retry warning quotes it
    sandbox.add_fault(Fault(status=401, body={**echo, "code": 401}))  # final: the failure line quotes it
    doc = run_one(producer, png)
    assert (doc["status"], doc["error"]["kind"]) == ("failed", "unauthorized")
    assert "bad key [redacted] (secret [redacted])" in doc["error"]["message"]
    assert doc["last_error"]["message"] == "HTTP 503: bad key [redacted] (secret [redacted])"

    wait_until(lambda: doc["job_id"] in worker.log_path.read_text(), 10, what="the worker to log the job")
    log = worker.log_path.read_text()
    assert "retrying in" in log, "the retry warning must be in the log for this check to mean anything"
    assert "DEBUG/" in log, "the worker must log at debug level for this check to mean anything"
    assert "bad key [redacted]" in log
    assert API_KEY not in log
    assert CALLBACK not in log
    stored = everything_in(producer.redis)
    assert not any(API_KEY.encode() in value or CALLBACK.encode() in value for value in stored)
