"""Leases and fencing against real workers: a dead, paused or stopping worker's job comes back, once.

Each test runs its own workers on their own queue (the session worker must not
take these jobs) with a 3 s lease (``worker_env``). Waits poll conditions with
deadlines well past the lease; no test asserts how long anything took (that is
``benchmarks/``'s to measure).
"""

import hashlib
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Ended, StartWorker, finished, unacked_messages, waiting_messages
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import JobDoc
from wsupload.worker.dev.local_services import WorkerProcess, wait_until
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.core]


@pytest.fixture
def png(media_root: Path) -> Path:
    path = media_root / f"recovery-{uuid.uuid4().hex[:6]}.png"
    path.write_bytes(png_bytes(32, 32))
    return path


def held_by(producer: Producer, job_id: str, worker: WorkerProcess) -> Callable[[], bool]:
    def check() -> bool:
        doc = producer.status([job_id])[0]
        return doc is not None and doc.get("worker") == worker.hostname

    return check


def test_whole_worker_sigkilled_mid_upload_its_job_completes_on_another_worker(
    own_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, png: Path
) -> None:
    first = start_worker()
    sandbox.add_fault(Fault(stall=30))  # the first upload hangs at the server
    (job,) = own_producer.enqueue([str(png)])
    wait_until(lambda: len(sandbox.records) == 1, 30, what="the upload to reach the sandbox")
    second = start_worker()
    first.kill()  # SIGKILL to the whole process group: nothing gets to clean up or hand back

    # Its lease is no longer renewed: kombu hands the message to the live worker.
    doc: JobDoc = wait_until(finished(own_producer, job.job_id), 30, interval=0.2, what="the job to finish")
    assert doc["status"] == "succeeded"
    assert (doc["worker"], doc["generation"], doc["attempts"]) == (second.hostname, 2, 2)
    assert len(sandbox.records) == 2
    assert sandbox.records[-1].sha256 == hashlib.sha256(png.read_bytes()).hexdigest()
    wait_until(lambda: unacked_messages(own_producer) == [], 10, what="the message to be acknowledged")


def test_a_job_every_worker_dies_with_ends_failed_once_max_deliveries_workers_took_it(
    own_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, png: Path
) -> None:
    """``WSUPLOAD_MAX_DELIVERIES=2``: two workers SIGKILLed mid-upload; the third ends the job, sending nothing."""
    sandbox.add_fault(Fault(stall=30, times=2))  # both uploads hang at the server until their worker dies
    ended = Ended(own_producer.redis)
    (job,) = own_producer.enqueue([str(png)])
    for n in (1, 2):
        taker = start_worker(WSUPLOAD_MAX_DELIVERIES="2")
        wait_until(lambda n=n: len(sandbox.records) == n, 30, what=f"upload {n} to reach the sandbox")
        taker.kill()  # the whole process group, as a crash or the OOM killer would
    last = start_worker(WSUPLOAD_MAX_DELIVERIES="2")

    doc: JobDoc = wait_until(finished(own_producer, job.job_id), 30, interval=0.2, what="the job to end")
    sandbox.release_stalls()
    assert (doc["status"], doc["error"]["kind"]) == ("failed", "too_many_deliveries")
    assert (doc["generation"], doc["worker"]) == (3, last.hostname)
    assert "WSUPLOAD_MAX_DELIVERIES=2" in doc["error"]["message"]
    assert len(sandbox.records) == 2  # the third delivery sent no request
    wait_until(lambda: unacked_messages(own_producer) == [], 10, what="the message to be acknowledged")
    assert waiting_messages(own_producer, own_producer.settings.queue) == 0
    assert ended.of([job.job_id]) == {job.job_id: 1}  # its end published, once
    ended.close()


def test_an_upload_lasting_many_leases_runs_once(
    own_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, png: Path
) -> None:
    start_worker()
    start_worker()  # idle, ready to take anything whose lease ran out
    sandbox.add_fault(Fault(stall=12))  # the answer comes after four leases: the renewer keeps it
    (job,) = own_producer.enqueue([str(png)])
    doc: JobDoc = wait_until(finished(own_producer, job.job_id), 60, interval=0.2, what="the job to finish")
    assert doc["status"] == "succeeded"
    assert (doc["generation"], doc["attempts"]) == (1, 1)
    assert len(sandbox.records) == 1
    wait_until(lambda: unacked_messages(own_producer) == [], 10, what="the message to be acknowledged")
    assert waiting_messages(own_producer, own_producer.settings.queue) == 0


def test_a_worker_paused_past_its_lease_cannot_overwrite_the_outcome_or_count_it_twice(
    own_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, png: Path
) -> None:
    paused = start_worker()
    sandbox.add_fault(Fault(stall=8))  # its upload is answered while it is stopped
    batch = own_producer.enqueue_batch([str(png)], bulk=False, options={"dedup": False})
    (job_id,) = (job.job_id for job in batch.jobs)
    wait_until(held_by(own_producer, job_id, paused), 30, interval=0.1, what="the first worker to hold the job")
    assert paused.process is not None
    os.killpg(paused.process.pid, signal.SIGSTOP)
    taker = start_worker()
    doc: JobDoc = wait_until(finished(own_producer, job_id), 30, interval=0.2, what="the job to finish")
    assert (doc["status"], doc["worker"], doc["generation"]) == ("succeeded", taker.hostname, 2)

    os.killpg(paused.process.pid, signal.SIGCONT)  # it wakes up holding an answer for a job it lost
    wait_until(
        lambda: "this delivery stops" in paused.log_path.read_text(),
        30,
        interval=0.2,
        what="the paused worker to find it may no longer act for the job",
    )
    assert own_producer.status([job_id])[0] == doc  # the outcome stands as the taker wrote it
    counters = own_producer.redis.hgetall(keys.batch(batch.batch_id))
    assert (counters[b"total"], counters[b"done"], counters[b"succeeded"], counters[b"failed"]) == (
        b"1",
        b"1",
        b"1",
        b"0",
    )


def test_on_stop_a_job_still_running_after_the_grace_is_handed_back_at_once(
    own_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, png: Path
) -> None:
    stopping = start_worker(WSUPLOAD_STOP_GRACE="1")
    sandbox.add_fault(Fault(stall=40))  # cannot finish within the grace
    (job,) = own_producer.enqueue([str(png)])
    wait_until(held_by(own_producer, job.job_id, stopping), 30, interval=0.1, what="the worker to hold the job")
    taker = start_worker()
    assert stopping.process is not None
    os.killpg(stopping.process.pid, signal.SIGTERM)

    doc: JobDoc = wait_until(finished(own_producer, job.job_id), 30, interval=0.2, what="the job to finish")
    assert (doc["status"], doc["worker"]) == ("succeeded", taker.hostname)
    log = stopping.log_path.read_text()
    assert f"job {job.job_id}: still running after the stop grace; handed back to its queue" in log
    # Handed back, not recovered from an expired lease: the stopping worker still runs (its
    # thread waits for the stalled answer) and never let its lease lapse.
    assert stopping.process.poll() is None
    assert "lease is gone" not in log
    stopping.kill()  # what docker does after its stop timeout: nothing of the job is left to lose
