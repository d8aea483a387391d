"""The API key lives in the worker's environment only: not in Redis, messages or logs."""

import contextlib
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.conftest import API_KEY, producer_env, run_one
from wsupload.config import Settings
from wsupload.tasks.store import keys
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


@contextlib.contextmanager
def debug_worker_with(
    worker_env: dict[str, str], log_path: Path, **env: str
) -> Iterator[tuple[WorkerProcess, Producer]]:
    """A worker at debug level that holds the callback secret too, on a queue of its own."""
    env = {
        **worker_env,
        "WSUPLOAD_QUEUE": "secrets-" + uuid.uuid4().hex[:8],
        "WSUPLOAD_CALLBACK_SECRET": CALLBACK,
        **env,
    }
    producer = Producer(Settings.from_env(producer_env(env)))
    process = WorkerProcess(env=env, log_path=log_path, concurrency=1, loglevel="debug").start()
    try:
        process.wait_ready(producer.app)
        yield process, producer
    finally:
        process.stop()


@pytest.fixture
def debug_worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[WorkerProcess, Producer]]:
    with debug_worker_with(worker_env, tmp_path / "worker.log") as started:
        yield started


@pytest.fixture
def json_worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[WorkerProcess, Producer]]:
    with debug_worker_with(worker_env, tmp_path / "worker.jsonl", WSUPLOAD_LOG_FORMAT="json") as started:
        yield started


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


def test_json_logs_are_one_object_per_line_carry_the_job_and_no_secret(
    json_worker: tuple[WorkerProcess, Producer], sandbox: SandboxServer, media_root: Path
) -> None:
    worker, producer = json_worker
    png = media_root / "json-logs.png"
    png.write_bytes(png_bytes())
    # Succeeds, and its callback (signed with the secret) is refused by the sandbox: the callback task logs too.
    (ok,) = producer.enqueue([str(png)], options={"callback_url": f"{sandbox.url}/hook"})
    assert producer.wait([ok.job_id], timeout=60).all_succeeded
    wait_until(lambda: producer.redis.exists(keys.callback(ok.job_id)), 30, what="the callback's delivery record")
    # A server that echoes both secrets: retried once, then refused.
    echo = {"code": 503, "message": f"bad key {API_KEY} (secret {CALLBACK})"}
    sandbox.add_fault(Fault(status=503, body=echo))
    sandbox.add_fault(Fault(status=401, body={**echo, "code": 401}))
    echoed = run_one(producer, png)
    assert (echoed["status"], echoed["error"]["kind"]) == ("failed", "unauthorized")
    # An internal error, with its traceback: today a 200 whose size is not finite (NaN) passes the client's
    # check and breaks the document's write (int(nan)). If the client learns to refuse it, provoke another.
    data = {"type": "image", "download_url": "https://cdn/x.png", "filename": "x.png", "size": float("nan")}
    sandbox.add_fault(Fault(status=200, body={"code": 200, "data": data}))
    broken = run_one(producer, png)
    assert (broken["status"], broken["error"]["kind"]) == ("failed", "internal_error")

    wait_until(lambda: broken["job_id"] in worker.log_path.read_text(), 10, what="the worker to log the last job")
    worker.stop()  # its last lines too (the stop notice Celery writes from its signal handler)
    text = worker.log_path.read_text()
    assert API_KEY not in text
    assert CALLBACK not in text
    lines = [json_object(line) for line in text.splitlines() if line.strip()]
    assert {"ts", "level", "event", "logger", "host", "pid"} <= set.intersection(*(set(line) for line in lines))
    assert any(line["level"] == "debug" for line in lines), "debug lines must be there for this check to mean anything"
    assert any(line["event"] == "worker: Warm shutdown (MainProcess)" for line in lines)

    def of(job_id: str, logger: str) -> list[dict[str, Any]]:
        return [line for line in lines if line.get("job_id") == job_id and line["logger"].startswith(logger)]

    # The job's own lines, the HTTP client's (urllib3, debug) and Celery's task line carry the job's id.
    for job in (ok.job_id, echoed["job_id"], broken["job_id"]):
        assert of(job, "urllib3.connectionpool"), f"no request line of {job} names it"
        assert of(job, "celery.app.trace"), f"Celery's line for {job} does not name it"
    (outcome,) = [line for line in of(ok.job_id, "wsupload.tasks.job") if line["level"] == "info"]
    assert (outcome["status"], outcome["attempt"], outcome["bytes"]) == ("succeeded", 1, png.stat().st_size)
    assert outcome["duration_s"] >= 0
    assert of(ok.job_id, "wsupload.tasks.callbacks"), "the callback's lines name its job"
    retry, failure = of(echoed["job_id"], "wsupload.tasks.job")
    assert (retry["status"], retry["kind"], retry["http_status"], retry["attempt"]) == (
        "retrying",
        "server_error",
        503,
        1,
    )
    said = re.search(
        r"HTTP 503: bad key \[redacted\] \(secret \[redacted\]\) \(server_error\); retrying in (\S+) s$", retry["event"]
    )
    assert said is not None, retry["event"]
    assert float(said.group(1)) == pytest.approx(retry["retry_in_s"], abs=0.01)  # the line rounds to 10 ms
    assert (failure["status"], failure["kind"], failure["http_status"]) == ("failed", "unauthorized", 401)
    assert "bad key [redacted] (secret [redacted])" in failure["event"]
    (crash,) = [line for line in of(broken["job_id"], "wsupload.tasks.upload") if "exc" in line]
    assert crash["event"] == f"job {broken['job_id']}: internal error"
    assert crash["exc"].startswith("Traceback (most recent call last)")
    assert "ValueError" in crash["exc"]


def json_object(line: str) -> dict[str, Any]:
    try:
        parsed = json.loads(line)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        pytest.fail(f"a log line that is not one JSON object: {line[:300]!r}")
    return parsed
