"""RabbitMQ as the broker, against the RabbitMQ on 127.0.0.1:5672 in a vhost of this module's own.

Results, documents and batch records stay in the session's Redis; messages go
through quorum queues. Each test runs its own workers on fresh queues with a 3 s
lease (``worker_env``); waits poll conditions with deadlines, nothing is timed.
"""

from __future__ import annotations

import hashlib
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration import rabbit
from tests.integration.conftest import producer_env
from wsupload.config import Settings
from wsupload.tasks import keys
from wsupload.tasks.enqueue import EnqueueError
from wsupload.tasks.results import TERMINAL, JobDoc
from wsupload.worker.dev.local_services import WorkerProcess, wait_until
from wsupload.worker.dev.samples import distinct_pngs, png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration]

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def amqp_env(worker_env: dict[str, str], rabbit_vhost: str) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {
        **worker_env,
        "WSUPLOAD_BROKER_URL": rabbit_vhost,
        "WSUPLOAD_QUEUE": f"amqp-{suffix}",
        "WSUPLOAD_BULK_QUEUE": f"amqp-{suffix}.bulk",
        # The sandbox holds answers open while we kill and stall workers.
        "WSUPLOAD_READ_TIMEOUT": "60",
    }


@pytest.fixture
def amqp_producer(amqp_env: dict[str, str]) -> Producer:
    return Producer(Settings.from_env(producer_env(amqp_env)))


@pytest.fixture
def start_worker(amqp_env: dict[str, str], amqp_producer: Producer, tmp_path: Path) -> Iterator[StartWorker]:
    started: list[WorkerProcess] = []

    def start(concurrency: int = 1, **env: str) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        process = WorkerProcess(env={**amqp_env, **env}, log_path=log, concurrency=concurrency)
        started.append(process.start())
        process.wait_ready(amqp_producer.app)
        return process

    yield start
    for process in started:
        if process.process is not None and process.process.poll() is None:
            os.killpg(process.process.pid, signal.SIGCONT)
        process.stop()


@pytest.fixture
def png(media_root: Path) -> Path:
    path = media_root / f"amqp-{uuid.uuid4().hex[:6]}.png"
    path.write_bytes(png_bytes(32, 32))
    return path


def finished(producer: Producer, job_id: str) -> Callable[[], JobDoc | None]:
    def check() -> JobDoc | None:
        doc = producer.status([job_id])[0]
        return doc if doc and doc["status"] in TERMINAL else None

    return check


def owed_jobs(producer: Producer) -> list[bytes]:
    settings = producer.settings
    return [
        job for queue in (settings.queue, settings.bulk_queue) for job in producer.redis.zrange(keys.owed(queue), 0, -1)
    ]


def test_a_batch_on_rabbitmq_all_succeeds_with_one_document_each(
    amqp_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, media_root: Path
) -> None:
    start_worker(concurrency=4)
    paths = distinct_pngs(media_root / "amqp-batch", 20)
    batch = amqp_producer.enqueue_batch([str(p) for p in paths], options={"dedup": False})
    assert owed_jobs(amqp_producer) == []  # published and confirmed before enqueue returned
    outcome = amqp_producer.wait([job.job_id for job in batch.jobs], timeout=60)
    assert outcome.all_succeeded, outcome.docs
    assert {doc["generation"] for doc in outcome.docs if doc} == {1}
    assert len(sandbox.records) == 20
    info = amqp_producer.batches.get(batch.batch_id)
    assert info is not None
    assert (info["done"], info["succeeded"]) == (20, 20)
