"""Bulk messages (``wsupload.upload_many``) against real workers: each job still ends once, on its own.

A bulk call puts several jobs in one message (``WSUPLOAD_JOBS_PER_MESSAGE``). These
tests kill, stop and pause the worker running such a message part-way and check
what users care about: every job ends ``succeeded`` with one final document, a job
that had ended is not uploaded again, the batch's counters count each job once.
The producer runs in this process, so ``tasks.enqueue.SPREAD`` is lowered to put
a handful of jobs in one message. Redis broker only: RabbitMQ sends one message per job.
"""

import json
import os
import signal
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import StartWorker, finished, unacked_messages
from wsupload.tasks import enqueue
from wsupload.tasks.recovery.lost_sweep import jobs_of
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import JobDoc
from wsupload.worker.dev.local_services import wait_until
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOBS = 5


@pytest.fixture(autouse=True)
def _redis_broker_only(broker_env: dict[str, str]) -> None:
    if broker_env:
        pytest.skip("bulk messages are the Redis broker's (RabbitMQ sends one message per job)")


@pytest.fixture
def one_message(monkeypatch: pytest.MonkeyPatch, own_env: dict[str, str]) -> None:
    monkeypatch.setattr(enqueue, "SPREAD", 1)
    own_env["WSUPLOAD_JOBS_PER_MESSAGE"] = str(JOBS)


@pytest.fixture
def pngs(media_root: Path) -> list[Path]:
    tag = uuid.uuid4().hex[:6]
    paths = [media_root / f"bulk-{tag}-{n}.png" for n in range(JOBS)]
    for n, path in enumerate(paths):
        path.write_bytes(png_bytes(16 + n, 16))
    return paths


def enqueue_one_message(producer: Producer, pngs: list[Path]) -> tuple[str, list[str]]:
    """Enqueue the files as one batch; returns once a worker holds them as one message."""
    batch = producer.enqueue_batch([str(p) for p in pngs], options={"dedup": False})  # every job uploads
    job_ids = [job.job_id for job in batch.jobs]

    def held_as_one() -> bool:
        held = [jobs_of(json.dumps(json.loads(raw)[0])) for raw in unacked_messages(producer)]
        return job_ids in held  # (the unacked hash is shared with other tests' workers)

    wait_until(held_as_one, 30, interval=0.05, what="a worker to hold the batch as one message")
    return batch.batch_id, job_ids


def all_finished(producer: Producer, job_ids: list[str]) -> list[JobDoc] | None:
    docs = [finished(producer, job_id)() for job_id in job_ids]
    return None if None in docs else docs  # type: ignore[return-value]


def assert_counted_once(producer: Producer, batch_id: str) -> None:
    counters = producer.redis.hgetall(keys.batch(batch_id))
    total = str(JOBS).encode()
    assert [counters[f] for f in (b"total", b"done", b"succeeded", b"failed")] == [total, total, total, b"0"]


def test_a_worker_sigkilled_mid_message_its_unfinished_jobs_complete_elsewhere_the_finished_are_not_sent_again(
    one_message: None,
    own_producer: Producer,
    start_worker: StartWorker,
    sandbox: SandboxServer,
    pngs: list[Path],
) -> None:
    first = start_worker()
    sandbox.add_fault(Fault(times=2))  # the first two answered at once
    sandbox.add_fault(Fault(stall=30))  # the third hangs at the server
    batch_id, job_ids = enqueue_one_message(own_producer, pngs)
    wait_until(lambda: len(sandbox.records) == 3, 30, what="the third upload to reach the sandbox")
    second = start_worker()
    first.kill()  # SIGKILL to the whole process group

    docs = wait_until(lambda: all_finished(own_producer, job_ids), 60, interval=0.2, what="every job to end")
    assert [d["status"] for d in docs] == ["succeeded"] * JOBS
    assert [d["worker"] for d in docs] == [first.hostname] * 2 + [second.hostname] * 3
    assert [d["generation"] for d in docs] == [1, 1, 2, 1, 1]  # only the one in flight was claimed twice
    assert len(sandbox.records) == JOBS + 1  # the two that had ended were not uploaded again
    assert_counted_once(own_producer, batch_id)
    wait_until(lambda: unacked_messages(own_producer) == [], 10, what="the message to be acknowledged")


def test_on_stop_the_running_job_finishes_and_the_jobs_not_started_go_back_to_the_queue(
    one_message: None,
    own_producer: Producer,
    start_worker: StartWorker,
    sandbox: SandboxServer,
    pngs: list[Path],
) -> None:
    stopping = start_worker(WSUPLOAD_STOP_GRACE="20")
    sandbox.add_fault(Fault(stall=30))  # the first job is still running when the stop comes
    batch_id, job_ids = enqueue_one_message(own_producer, pngs)
    wait_until(lambda: len(sandbox.records) == 1, 30, what="the first upload to reach the sandbox")
    taker = start_worker()
    assert stopping.process is not None
    os.killpg(stopping.process.pid, signal.SIGTERM)
    wait_until(lambda: "Warm shutdown" in stopping.log_path.read_text(), 30, what="the stop to begin")
    sandbox.release_stalls()  # now the first job ends, within the stop grace

    docs = wait_until(lambda: all_finished(own_producer, job_ids), 60, interval=0.2, what="every job to end")
    assert [d["status"] for d in docs] == ["succeeded"] * JOBS
    assert [d["worker"] for d in docs] == [stopping.hostname] + [taker.hostname] * (JOBS - 1)
    assert len(sandbox.records) == JOBS
    assert_counted_once(own_producer, batch_id)
    wait_until(lambda: stopping.process is not None and stopping.process.poll() is not None, 30, what="a clean stop")
    assert f"its {JOBS - 1} job(s) not started go back to the queue" in stopping.log_path.read_text()


def test_a_worker_paused_past_its_lease_mid_message_claims_nothing_more_and_each_job_ends_once(
    one_message: None,
    own_producer: Producer,
    start_worker: StartWorker,
    sandbox: SandboxServer,
    pngs: list[Path],
) -> None:
    paused = start_worker()
    sandbox.add_fault(Fault(times=1))
    sandbox.add_fault(Fault(stall=8))  # the second upload is answered while its worker is stopped
    batch_id, job_ids = enqueue_one_message(own_producer, pngs)
    wait_until(lambda: len(sandbox.records) == 2, 30, what="the second upload to reach the sandbox")
    assert paused.process is not None
    os.killpg(paused.process.pid, signal.SIGSTOP)
    taker = start_worker()
    docs = wait_until(lambda: all_finished(own_producer, job_ids), 60, interval=0.2, what="every job to end")
    assert [d["worker"] for d in docs] == [paused.hostname] + [taker.hostname] * (JOBS - 1)

    os.killpg(paused.process.pid, signal.SIGCONT)  # it wakes holding an answer for a job it lost
    # Its write is refused (or its renewer finds the lease gone first): either way it stops.
    wait_until(
        lambda: any(s in paused.log_path.read_text() for s in ("may no longer write", "this delivery of message")),
        30,
        interval=0.2,
        what="the paused worker to stop",
    )
    assert all_finished(own_producer, job_ids) == docs  # every outcome stands as written
    assert len(sandbox.records) == JOBS + 1  # the second job twice; nothing after it from the paused worker
    assert_counted_once(own_producer, batch_id)
