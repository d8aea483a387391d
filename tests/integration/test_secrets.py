"""The API key lives in the worker's environment only: not in Redis, messages or logs."""

from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.conftest import API_KEY, run_one
from worker.local_services import WorkerProcess, wait_until
from worker.producer import Producer
from worker.samples import png_bytes
from worker.sandbox import Fault, SandboxServer

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

    log = worker.log_path.read_text()
    assert held.job_id in log, "the worker log must record jobs for this check to mean anything"
    assert API_KEY not in log
