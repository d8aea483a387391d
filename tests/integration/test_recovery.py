"""A worker dying mid-upload loses no job; a long upload never runs twice at once.

Each test runs its own worker on its own queue (the session worker must not
take these jobs) with WSUPLOAD_VISIBILITY_TIMEOUT=20 s, as the settings allow.
"""

import hashlib
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import producer_env, unacked_messages
from wsupload.config import Settings
from wsupload.tasks.results import TERMINAL, JobDoc
from wsupload.worker.dev.local_services import WorkerProcess, wait_until
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

StartWorker = Callable[[], WorkerProcess]


@pytest.fixture
def own_env(worker_env: dict[str, str]) -> dict[str, str]:
    # A long read timeout: the sandbox holds the upload open while we kill things.
    return {**worker_env, "WSUPLOAD_QUEUE": "recovery-" + uuid.uuid4().hex[:8], "WSUPLOAD_READ_TIMEOUT": "60"}


@pytest.fixture
def own_producer(own_env: dict[str, str]) -> Producer:
    return Producer(Settings.from_env(producer_env(own_env)))


@pytest.fixture
def start_worker(own_env: dict[str, str], own_producer: Producer, tmp_path: Path) -> Iterator[StartWorker]:
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        process = WorkerProcess(env=own_env, log_path=tmp_path / f"worker-{len(started)}.log", concurrency=1)
        started.append(process.start())
        process.wait_ready(own_producer.app)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def png(media_root: Path) -> Path:
    path = media_root / f"recovery-{uuid.uuid4().hex[:6]}.png"
    path.write_bytes(png_bytes(32, 32))
    return path


def finished(producer: Producer, job_id: str) -> Callable[[], JobDoc | None]:
    def check() -> JobDoc | None:
        doc = producer.status([job_id])[0]
        return doc if doc and doc["status"] in TERMINAL else None

    return check


def test_whole_worker_sigkilled_mid_upload_job_completes_after_restart(
    own_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, png: Path
) -> None:
    first = start_worker()
    sandbox.add_fault(Fault(stall=30))  # the first upload hangs at the server
    (job,) = own_producer.enqueue([str(png)])
    wait_until(lambda: len(sandbox.records) == 1, 30, what="the upload to reach the sandbox")
    first.kill()  # SIGKILL to the parent and every pool child: nothing gets to clean up

    start_worker()
    # kombu hands the message back once it is older than the visibility timeout (20 s).
    doc: JobDoc = wait_until(finished(own_producer, job.job_id), 90, interval=0.2, what="the job to finish")
    assert doc["status"] == "succeeded"
    assert doc["attempts"] == 2
    assert len(sandbox.records) == 2
    assert sandbox.records[-1].sha256 == hashlib.sha256(png.read_bytes()).hexdigest()
    wait_until(lambda: unacked_messages(own_producer) == [], 10, what="the message to be acknowledged")


def test_pool_child_killed_mid_upload_is_requeued_at_once(
    own_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, png: Path
) -> None:
    worker = start_worker()
    sandbox.add_fault(Fault(stall=30))
    (job,) = own_producer.enqueue([str(png)])
    wait_until(lambda: len(sandbox.records) == 1, 30, what="the upload to reach the sandbox")
    assert worker.process is not None
    (child,) = psutil.Process(worker.process.pid).children()
    os.kill(child.pid, signal.SIGKILL)

    # task_reject_on_worker_lost: the parent requeues the message itself, well
    # before the 20 s visibility timeout would.
    doc: JobDoc = wait_until(finished(own_producer, job.job_id), 15, interval=0.2, what="the job to finish")
    assert doc["status"] == "succeeded"
    assert doc["attempts"] == 2
    assert len(sandbox.records) == 2


def test_an_upload_past_the_time_limit_fails_once_and_is_not_redelivered(
    own_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, png: Path
) -> None:
    start_worker()
    settings = own_producer.settings
    sandbox.add_fault(Fault(stall=settings.hard_time_limit + 5))
    (job,) = own_producer.enqueue([str(png)])
    doc: JobDoc = wait_until(finished(own_producer, job.job_id), 60, interval=0.2, what="the job to finish")
    assert doc["status"] == "failed"
    assert doc["error"]["kind"] == "time_limit"
    assert "WSUPLOAD_VISIBILITY_TIMEOUT=20" in doc["error"]["message"]
    assert len(sandbox.records) == 1
    # Acknowledged: nothing left for kombu to hand out again beside the first run.
    wait_until(lambda: unacked_messages(own_producer) == [], 10, what="the message to be acknowledged")
    assert own_producer.redis.llen(settings.queue) == 0
