"""A plain Celery client against real workers: ``AsyncResult`` through ``wsupload+redis://``, ``link``, ``link_error``.

The client (``tests/integration/celery_client.py``) runs as processes of its own, so what it
imports is checked (never ``wsupload.worker``): one sends and gets, one is its Celery worker,
which consumes Celery's default queue ``celery`` (where a link that names no queue goes) and a
queue of its own for the errback, recording what its tasks receive. wsupload's workers here are
the test's own (``start_worker``: one thread, so a message's copy runs before the job behind it).
Two kinds of second delivery must not run the link: a copy of the message, and a delivery
superseded while paused (SIGSTOP). Run over RabbitMQ too (``core``). The cancel feature is not
on this branch: the cancelled job's document is written here, as a worker would leave it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import StartWorker, clean_env
from wsupload.tasks.store import keys
from wsupload.worker.dev.local_services import wait_until
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration, pytest.mark.core]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client_env(own_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    redis_url = own_env["REDIS_URL"]
    return {
        **clean_env(),
        "CLIENT_BROKER": own_env.get("WSUPLOAD_BROKER_URL") or redis_url,
        "CLIENT_BACKEND": f"wsupload+{redis_url}",
        "CLIENT_QUEUE": own_env["WSUPLOAD_QUEUE"],
        "CLIENT_ERRBACK_QUEUE": "client-errors-" + uuid.uuid4().hex[:6],
        "CLIENT_REDIS": redis_url,
        "CLIENT_RECORDS": "client-records-" + uuid.uuid4().hex[:6],
    }


def records(producer: Producer, env: dict[str, str]) -> list[dict[str, Any]]:
    return [json.loads(entry) for entry in producer.redis.lrange(env["CLIENT_RECORDS"], 0, -1)]


@pytest.fixture
def client_worker(client_env: dict[str, str], own_producer: Producer, tmp_path: Path) -> Iterator[None]:
    """The client's own Celery worker, consuming ``celery`` and its errback queue."""
    log = open(tmp_path / "client-worker.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.celery_client", "worker"],
        cwd=ROOT,
        env=client_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: any(r["task"] == "ready" for r in records(own_producer, client_env)) or process.poll() is not None,
            60,
            what="the client's worker to start",
        )
        assert process.poll() is None, (tmp_path / "client-worker.log").read_text()
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def run_client(env: dict[str, str], spec: list[dict[str, Any]]) -> dict[str, Any]:
    """Send and get the jobs in ``spec`` from a client process of its own; what it saw."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.celery_client", "run", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen: dict[str, Any] = json.loads(done.stdout)
    assert not [name for name in seen["modules"] if name.startswith("wsupload.worker")], seen["modules"]
    assert "wsupload.celery_backend" in seen["modules"]
    return seen


def of(task: str, job_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r["task"] == task and r.get("job_id") == job_id


@pytest.fixture
def png(media_root: Path) -> Path:
    path = media_root / f"client-{uuid.uuid4().hex[:6]}.png"
    path.write_bytes(png_bytes(16, 16))
    return path


def test_success_gives_the_result_dict_and_runs_the_link_once_even_when_delivered_twice(
    client_env: dict[str, str], client_worker: None, start_worker: StartWorker, own_producer: Producer, png: Path
) -> None:
    start_worker()
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    seen = run_client(client_env, [{"job_id": first, "source": str(png), "link": True}])
    got = seen["got"][first]
    doc = own_producer.status([first])[0]
    assert doc is not None
    assert got == {"value": doc["result"], "state": "SUCCESS"}
    assert got["value"]["download_url"].startswith("http")

    # The same message again (an acknowledgement lost), then a second job behind it on the same
    # one-thread worker: once the second job's link has run, the copy has been handled.
    run_client(
        client_env,
        [
            {"job_id": first, "source": str(png), "link": True, "get": False},
            {"job_id": second, "source": str(png), "link": True},
        ],
    )
    wait_until(
        lambda: any(map(of("on_done", second), records(own_producer, client_env))), 30, what="the second job's link"
    )
    links = [r for r in records(own_producer, client_env) if r["task"] == "on_done"]
    assert [(r["job_id"], r["result"]) for r in links if r["job_id"] == first] == [(first, doc["result"])]
    assert {r["queue"] for r in links} == {"celery"}  # the signature named no queue: Celery's default
    assert own_producer.status([first])[0] == doc  # the copy changed nothing


def test_a_refused_file_is_a_failure_with_the_named_error_and_runs_the_errback_on_its_queue(
    client_env: dict[str, str],
    client_worker: None,
    start_worker: StartWorker,
    own_producer: Producer,
    media_root: Path,
) -> None:
    start_worker()
    fake = media_root / f"fake-{uuid.uuid4().hex[:6]}.png"
    fake.write_bytes(b"this is not a PNG image, whatever its name says" * 4)
    job_id = uuid.uuid4().hex
    seen = run_client(client_env, [{"job_id": job_id, "source": str(fake), "link": True, "link_error": True}])
    got = seen["got"][job_id]
    doc = own_producer.status([job_id])[0]
    assert doc is not None
    assert (got["state"], got["raised"], got["status"], got["kind"]) == (
        "FAILURE",
        "wsupload.errors.JobError",
        "failed",
        "invalid_input",
    )
    assert got["error"] == doc["error"]
    (errback,) = wait_until(
        lambda: [r for r in records(own_producer, client_env) if of("on_error", job_id)(r)],
        30,
        what="the errback to run",
    )
    assert errback == {
        "task": "on_error",
        "job_id": job_id,
        "state": "FAILURE",
        "error_type": "JobError",
        "kind": "invalid_input",
        "queue": client_env["CLIENT_ERRBACK_QUEUE"],
    }
    assert not [r for r in records(own_producer, client_env) if of("on_done", job_id)(r)]  # no link on failure
    dead = own_producer.redis.lrange(keys.DEAD, 0, -1)
    assert not [
        entry for entry in dead if b"client.on_" in entry
    ]  # none of the client's tasks went to wsupload's queue


def test_a_cancelled_job_is_revoked_with_the_named_error(client_env: dict[str, str], own_producer: Producer) -> None:
    job_id = uuid.uuid4().hex
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    error = {"kind": "cancelled", "http_status": None, "message": "cancelled by its producer", "retryable": False}
    doc = {"job_id": job_id, "status": "cancelled", "source": "/m/a.png", "attempts": 0, "result": None}
    doc.update({"error": error, "created_at": now, "started_at": None, "finished_at": now, "expires_at": None})
    own_producer.redis.set(keys.result(job_id), json.dumps(doc), ex=600)
    seen = run_client(client_env, [{"job_id": job_id, "source": "/m/a.png", "send": False}])
    got = seen["got"][job_id]
    assert (got["state"], got["raised"], got["status"], got["kind"], got["error"]) == (
        "REVOKED",
        "wsupload.errors.JobError",
        "cancelled",
        "cancelled",
        error,
    )
    assert seen["backend"].startswith("wsupload+redis://")


@pytest.mark.slow
def test_a_delivery_superseded_while_paused_never_runs_the_link(
    client_env: dict[str, str],
    client_worker: None,
    start_worker: StartWorker,
    own_producer: Producer,
    sandbox: SandboxServer,
    png: Path,
) -> None:
    paused = start_worker()
    sandbox.add_fault(Fault(stall=8))  # its upload is answered while it is stopped
    job_id = uuid.uuid4().hex
    run_client(client_env, [{"job_id": job_id, "source": str(png), "link": True, "get": False}])
    wait_until(
        lambda: (own_producer.status([job_id])[0] or {}).get("worker") == paused.hostname,
        30,
        interval=0.1,
        what="the first worker to hold the job",
    )
    assert paused.process is not None
    os.killpg(paused.process.pid, signal.SIGSTOP)
    taker = start_worker()
    seen = run_client(client_env, [{"job_id": job_id, "source": str(png), "send": False}])
    doc = own_producer.status([job_id])[0]
    assert doc is not None
    assert (seen["got"][job_id], doc["worker"]) == ({"value": doc["result"], "state": "SUCCESS"}, taker.hostname)

    os.killpg(paused.process.pid, signal.SIGCONT)  # it wakes up holding an answer for a job it lost
    wait_until(
        lambda: "this delivery stops" in paused.log_path.read_text(),
        60,
        interval=0.2,
        what="the paused worker to find it may no longer act for the job",
    )
    # The paused delivery has returned (its line is written as it stops): were it to run the link,
    # the link's message would be sent now. A job behind it on the same worker shows when it has.
    later = uuid.uuid4().hex
    run_client(client_env, [{"job_id": later, "source": str(png), "link": True}])
    wait_until(lambda: any(map(of("on_done", later), records(own_producer, client_env))), 30, what="a later link")
    links = [r for r in records(own_producer, client_env) if of("on_done", job_id)(r)]
    assert [r["result"] for r in links] == [doc["result"]]
