"""Real workers' heartbeats: `wsupload workers` shows what each one runs, `wsupload health` follows its life.

The workers here use a Redis of this module's own, so that `wsupload health`
(any fresh worker on this host) sees no other test's workers. The commands run
as a producer would, without the API key.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.conftest import Fleet
from wsupload.tasks.store import keys
from wsupload.worker.dev.local_services import LocalRedis, wait_until
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer
from wsupload.worker.worker_records import RECORD_TTL

pytestmark = pytest.mark.integration
HOST = socket.gethostname()
STALL = 60.0
"""The sandbox holds the upload this long: the job runs for as long as the test looks at it."""


@pytest.fixture
def png(media_root: Path) -> Path:
    path = media_root / f"heartbeat-{uuid.uuid4().hex[:6]}.png"
    path.write_bytes(png_bytes(16, 16))
    return path


def wsupload(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    assert "WAVESPEED_API_KEY" not in env
    return subprocess.run(
        [sys.executable, "-m", "wsupload.worker.cli", *args], env=env, capture_output=True, text=True, timeout=30
    )


def listed(env: dict[str, str]) -> list[dict[str, Any]]:
    answer = wsupload(env, "workers", "--json")
    assert answer.returncode == 0, answer.stderr
    records: list[dict[str, Any]] = json.loads(answer.stdout)
    return records


def holding(env: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    return [record for record in listed(env) if job_id in record["jobs"]]


def healthy(env: dict[str, str], *args: str) -> bool:
    answer = wsupload(env, "health", *args)
    assert answer.returncode in (0, 1), answer.stderr  # never 2 here: Redis is up
    return answer.returncode == 0


def no_heartbeat_error(env: dict[str, str]) -> str:
    answer = wsupload(env, "health")
    return answer.stderr if answer.returncode == 1 else ""


def test_health_is_ok_while_a_worker_runs_and_fails_at_once_after_a_clean_stop(
    fleet: Fleet, own_redis: LocalRedis
) -> None:
    handle = fleet(1, REDIS_URL=own_redis.url, WSUPLOAD_PROCESSES="1")  # one process's record (parents: test_processes)
    (worker,) = handle.workers
    env = handle.env
    wait_until(lambda: healthy(env), 30, what="wsupload health to pass")
    assert healthy(env, "--name", worker.hostname)
    assert not healthy(env, "--name", f"someone-else@{HOST}")
    answer = wsupload(env, "health")
    assert answer.stdout.startswith(f"ok: {worker.hostname} beat ")
    assert answer.stdout.endswith(" s ago, 0 job(s) running\n")

    worker.stop()  # SIGTERM: a warm shutdown
    assert worker.process is not None
    assert worker.process.returncode == 0
    # Deleted on the way out, not left to expire: gone as soon as the worker has exited.
    assert not redis.Redis.from_url(own_redis.url).exists(keys.worker(worker.hostname))
    answer = wsupload(env, "health")
    assert answer.returncode == 1
    assert (
        answer.stderr
        == f"wsupload: unhealthy: no heartbeat from a worker on host {HOST}: none is running, or it stopped or died\n"
    )
    assert wsupload(env, "workers").stdout == "no live workers\n"


@pytest.mark.slow
def test_workers_shows_the_job_a_worker_runs_and_health_fails_once_a_killed_workers_record_expires(
    fleet: Fleet, own_redis: LocalRedis, sandbox: SandboxServer, png: Path
) -> None:
    handle = fleet(1, REDIS_URL=own_redis.url, WSUPLOAD_READ_TIMEOUT=str(STALL), WSUPLOAD_PROCESSES="1")
    (worker,) = handle.workers
    env = handle.env
    sandbox.add_fault(Fault(stall=STALL))
    (job,) = handle.producer.enqueue([str(png)])

    (record,) = wait_until(lambda: holding(env, job.job_id), 30, interval=0.2, what="the job in the worker's record")
    assert worker.process is not None
    assert {k: record[k] for k in ("name", "host", "pid", "pool", "concurrency", "state", "waiting")} == {
        "name": worker.hostname,
        "host": HOST,
        "pid": worker.process.pid,
        "pool": "threads",
        "concurrency": 2,
        "state": "running",
        "waiting": [],
    }
    assert record["jobs"] == [job.job_id]
    assert record["queues"] == [env["WSUPLOAD_QUEUE"], env["WSUPLOAD_BULK_QUEUE"]]
    lines = wsupload(env, "workers").stdout.splitlines()
    assert lines[0].startswith(f"{worker.hostname}  {HOST}/{worker.process.pid}  threads×2  1 running  beat ")
    assert lines[1:] == [f"    running  {job.job_id}"]
    assert healthy(env)
    assert healthy(env, "--name", worker.hostname)

    worker.kill()  # SIGKILL to the whole process group: nothing deletes the record
    message = wait_until(lambda: no_heartbeat_error(env), RECORD_TTL + 20, interval=0.2, what="the record to expire")
    assert (
        message
        == f"wsupload: unhealthy: no heartbeat from a worker on host {HOST}: none is running, or it stopped or died\n"
    )
    assert listed(env) == []


@pytest.fixture
def threads_worker(fleet: Fleet, own_redis: LocalRedis, worker_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """A worker on Celery's threads pool (``celery -A wsupload.worker.app worker -P threads``), on fresh queues."""
    handle = fleet(0, REDIS_URL=own_redis.url, WSUPLOAD_READ_TIMEOUT=str(STALL))
    name = f"threads-{uuid.uuid4().hex[:6]}@{HOST}"
    args = [sys.executable, "-m", "celery", "-A", "wsupload.worker.app", "worker", "--pool=threads", "-c", "3"]
    args += [f"--hostname={name}", f"--queues={handle.env['WSUPLOAD_QUEUE']}", "--without-gossip", "--without-mingle"]
    env = {**handle.env, "WAVESPEED_API_KEY": worker_env["WAVESPEED_API_KEY"]}
    with open(tmp_path / "threads-worker.log", "wb") as log:
        process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(
                lambda: process.poll() is not None or handle.producer.app.control.ping(destination=[name], timeout=0.5),
                60,
                interval=0.1,
                what="the threads worker to answer a ping",
            )
            assert process.poll() is None, (tmp_path / "threads-worker.log").read_text()[-3000:]
            yield handle, process, name
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.mark.slow
def test_a_threads_pool_worker_lists_its_job_and_says_stopping_during_a_warm_shutdown(
    threads_worker: Any, sandbox: SandboxServer, png: Path
) -> None:
    handle, process, name = threads_worker
    env = handle.env
    sandbox.add_fault(Fault(stall=STALL))
    (job,) = handle.producer.enqueue([str(png)])

    (record,) = wait_until(lambda: holding(env, job.job_id), 30, interval=0.2, what="the job in the worker's record")
    assert (record["name"], record["pool"], record["concurrency"], record["pid"]) == (name, "threads", 3, process.pid)
    assert healthy(env, "--name", name)

    os.kill(process.pid, signal.SIGTERM)  # warm shutdown: the running upload may finish, the record says so
    (record,) = wait_until(
        lambda: [r for r in holding(env, job.job_id) if r["state"] == "stopping"], 30, interval=0.2, what="stopping"
    )
    assert not healthy(env, "--name", name)
    assert wsupload(env, "health").stderr == f"wsupload: unhealthy: {name} is shutting down\n"
