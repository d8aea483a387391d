"""Cancelling jobs for real: a worker process, the sandbox over HTTP, the producer and the command.

A queued job ends ``cancelled`` with no request, even with no worker running, and stays
so once one starts (which acknowledges its message and sends its callback, once); a
running one is cut at the sandbox while its answer is held (the sandbox sees the client
close the connection), through the announcement within ``ANNOUNCED`` and through the
worker's check of its running jobs within ``CHECKED`` when the announcement is missed; a
job in a retry's backoff stops waiting; a finished job is left as it was, and the
command says so; a batch cancelled mid-run counts every member once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Hooks, StartWorker, png_file, producer_env, unacked_messages, waiting_messages
from tests.integration.conftest import run_cli as wsupload
from wsupload.tasks.callbacks import callback_key
from wsupload.tasks.store import cancels, keys, lua, results
from wsupload.worker.dev.local_services import wait_until
from wsupload.worker.dev.samples import mp4_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer, UploadRecord
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration, pytest.mark.core]

ANNOUNCED = 1.0
"""The issue's bound: a running upload is aborted within 1 s of the cancel through its announcement."""
CHECKED = 3.0
"""… and within 3 s through the worker's own check when the announcement was missed."""
SLACK = 1.0
"""Added to each bound: the machine running the tests is shared and loaded."""
SECRET = "whsec-cancel"
BIG = 48 * 1024 * 1024
RATE = 8 * 1024 * 1024
"""A large body read at 8 MiB/s: six seconds of sending, caught in the middle."""


def media(root: Path, name: str, size: int = 16) -> str:
    return png_file(root, f"cancel-{name}", size)


def held_request(sandbox: SandboxServer) -> UploadRecord:
    """The upload request the sandbox holds (a stall), once it has come."""
    found: UploadRecord = wait_until(
        lambda: next((r for r in sandbox.records if r.fault and r.fault["stall"]), None), 30, what="a held request"
    )
    return found


def client_gone(sandbox: SandboxServer, number: int) -> UploadRecord | None:
    record = sandbox.records[number - 1]
    return record if record.client_gone else None


def acknowledged(producer: Producer) -> bool:
    """Nothing waits on the job's queue and nothing is held unacknowledged."""
    return waiting_messages(producer, producer.settings.queue) == 0 and not unacked_messages(producer)


def test_a_queued_job_is_cancelled_with_no_request_and_stays_so_once_a_worker_starts(
    own_producer: Producer, own_env: dict[str, str], start_worker: StartWorker, hooks: Hooks, media_root: Path
) -> None:
    (job,) = own_producer.enqueue([media(media_root, "queued")], options={"callback_url": hooks.url})
    cancelled = wsupload(producer_env(own_env), "cancel", job.job_id)  # no worker runs
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"{job.job_id}  cancelled"
    outcome = own_producer.wait([job.job_id], timeout=5)
    assert not outcome.timed_out, "wait returns at once: the end is written"
    assert not outcome.all_succeeded
    doc = outcome.docs[0]
    assert doc is not None
    assert (doc["status"], doc["error"]["kind"], doc["attempts"]) == ("cancelled", "cancelled", 0)

    start_worker(WSUPLOAD_CALLBACK_SECRET=SECRET)
    wait_until(lambda: acknowledged(own_producer), 30, what="the cancelled job's message acknowledged")
    wait_until(lambda: own_producer.redis.get(callback_key(job.job_id)), 30, what="the callback's outcome")
    assert json.loads(own_producer.redis.get(callback_key(job.job_id)) or b"{}")["status"] == "delivered"
    assert hooks.docs == [doc], "the callback is sent once, with the cancelled document"
    assert own_producer.status([job.job_id]) == [doc], "the worker wrote nothing"


def test_a_running_upload_is_cut_at_the_sandbox_when_its_cancel_is_announced(
    own_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, hooks: Hooks, media_root: Path
) -> None:
    start_worker(WSUPLOAD_CALLBACK_SECRET=SECRET)
    sandbox.add_fault(Fault(stall=60))  # the answer is held: the worker waits for it
    (job,) = own_producer.enqueue([media(media_root, "running")], options={"callback_url": hooks.url})
    held = held_request(sandbox)
    asked = time.monotonic()
    [outcome] = own_producer.cancel([job.job_id])
    assert (outcome.outcome, outcome.status) == ("cancelled", "cancelled")
    wait_until(lambda: client_gone(sandbox, held.number), ANNOUNCED + SLACK, what="the request cut at the sandbox")
    cut = time.monotonic() - asked
    assert cut <= ANNOUNCED + SLACK, f"the request was cut {cut:.2f} s after the cancel"
    assert own_producer.status([job.job_id]) == [outcome.doc], "the producer's end stands"

    wait_until(lambda: acknowledged(own_producer), 30, what="the message acknowledged")
    wait_until(lambda: hooks.received, 30, what="the callback")
    assert hooks.docs == [outcome.doc]
    assert len(sandbox.records) == 1, "no retry after the cancel"
    assert own_producer.status([job.job_id]) == [outcome.doc]


def test_an_upload_cancelled_mid_send_is_cut_at_the_sandbox(
    own_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, media_root: Path
) -> None:
    big = media_root / "cancel-big.mp4"
    with open(big, "wb") as out:  # a real MP4's start, then zeros (sparse): a valid upload of BIG bytes
        out.write(mp4_bytes(4096))
        out.truncate(BIG)
    start_worker(WSUPLOAD_MAX_BYTES=str(2 * BIG))
    sandbox.add_fault(Fault(rate=RATE))  # the body is read slowly: the worker is still sending it
    (job,) = own_producer.enqueue([str(big)])
    wait_until(lambda: (own_producer.status([job.job_id])[0] or {}).get("progress"), 30, what="bytes being sent")
    asked = time.monotonic()
    [outcome] = own_producer.cancel([job.job_id])
    assert outcome.cancelled
    (record,) = wait_until(
        lambda: [r for r in sandbox.records if r.client_gone], ANNOUNCED + SLACK, what="the body cut at the sandbox"
    )
    cut = time.monotonic() - asked
    assert cut <= ANNOUNCED + SLACK, f"the body was cut {cut:.2f} s after the cancel"
    assert record.status is None, "never answered"
    assert own_producer.status([job.job_id]) == [outcome.doc]


def test_a_missed_announcement_is_made_up_by_the_workers_own_check(
    own_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, media_root: Path
) -> None:
    start_worker()
    sandbox.add_fault(Fault(stall=60))
    (job,) = own_producer.enqueue([media(media_root, "unheard")])
    held = held_request(sandbox)
    # The producer's script, announcing on a channel no worker listens to: the request is in Redis only.
    now = results.utcnow()
    script_keys, args = cancels.call([job.job_id], own_producer.settings.result_ttl, now, time.time(), "nobody")
    asked = time.monotonic()
    reply = lua.script(own_producer.redis, cancels.SCRIPT)(keys=script_keys, args=args)
    assert cancels.outcomes([job.job_id], reply, now)[0].cancelled
    wait_until(lambda: client_gone(sandbox, held.number), CHECKED + SLACK, what="the request cut at the sandbox")
    cut = time.monotonic() - asked
    assert cut <= CHECKED + SLACK, f"the request was cut {cut:.2f} s after the cancel"
    assert own_producer.status([job.job_id])[0]["status"] == "cancelled"  # type: ignore[index]


def test_a_job_in_its_retrys_backoff_stops_waiting(
    own_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, media_root: Path
) -> None:
    # A minute's backoff on one thread: the next job could run only once that wait is cut.
    start_worker(WSUPLOAD_BACKOFF_BASE="60", WSUPLOAD_BACKOFF_MAX="60")
    sandbox.add_fault(Fault(status=503))
    (job,) = own_producer.enqueue([media(media_root, "backoff")])
    wait_until(lambda: (own_producer.status([job.job_id])[0] or {}).get("status") == "retrying", 30, what="the backoff")
    [outcome] = own_producer.cancel([job.job_id])
    assert outcome.cancelled
    (after,) = own_producer.enqueue([media(media_root, "after-backoff", 17)])
    done = own_producer.wait([after.job_id], timeout=20)
    assert done.all_succeeded, "the thread was freed long before the backoff's minute"
    assert [r.status for r in sandbox.records] == [503, 200], "the cancelled job sent nothing more"
    assert own_producer.status([job.job_id]) == [outcome.doc]


def test_a_finished_job_is_left_as_it_was_and_the_command_says_so(
    own_producer: Producer, own_env: dict[str, str], start_worker: StartWorker, media_root: Path
) -> None:
    start_worker()
    (job,) = own_producer.enqueue([media(media_root, "finished")])
    assert own_producer.wait([job.job_id], timeout=30).all_succeeded
    before = own_producer.redis.get(keys.result(job.job_id))
    env = producer_env(own_env)
    said = wsupload(env, "cancel", job.job_id)
    assert said.returncode == 1, said.stderr
    assert said.stdout.strip() == f"{job.job_id}  not cancelled: it had already ended succeeded; left as it was"
    assert own_producer.redis.get(keys.result(job.job_id)) == before
    unknown = wsupload(env, "cancel", "no-such-job")
    assert unknown.returncode == 2
    assert "unknown" in unknown.stdout
    assert "Traceback" not in unknown.stderr + said.stderr
    as_json = wsupload(env, "cancel", "--json", job.job_id)
    assert json.loads(as_json.stdout) == [{"job_id": job.job_id, "outcome": "ended", "status": "succeeded"}]


def test_a_batch_cancelled_mid_run_counts_every_member_once(
    own_producer: Producer, own_env: dict[str, str], start_worker: StartWorker, sandbox: SandboxServer, media_root: Path
) -> None:
    start_worker()
    sources = [media(media_root, f"batch-{n}", 20 + n) for n in range(12)]
    sandbox.latency = 0.2  # a few jobs end before the cancel, the rest are queued or running
    try:
        batch = own_producer.enqueue_batch(sources)
        wait_until(lambda: (own_producer.batches.get(batch.batch_id) or {}).get("succeeded", 0) >= 2, 30)
        sandbox.add_fault(Fault(stall=60))  # the next request is held: one member is running at the cancel
        held_request(sandbox)
        env = producer_env(own_env)
        cancelled = wsupload(env, "batch", "cancel", batch.batch_id)
    finally:
        sandbox.latency = 0.0
    assert cancelled.returncode == 0, cancelled.stderr
    info = own_producer.batches.get(batch.batch_id)
    assert info is not None
    assert info["done"] == info["total"] == len(sources)
    assert info["succeeded"] + info["cancelled"] == info["total"]
    assert info["succeeded"] >= 2
    assert info["cancelled"] >= 1
    assert info["failed"] == 0
    assert f"{info['cancelled']} cancelled of {len(sources)}" in cancelled.stdout
    assert f"{info['succeeded']} succeeded" in cancelled.stdout
    assert len(sandbox.records) == info["succeeded"] + 1, "one request each for those that ended, one cut, no more"
    statuses = [doc["status"] for doc in own_producer.status([job.job_id for job in batch.jobs]) if doc]
    assert sorted(set(statuses)) == ["cancelled", "succeeded"]
    assert statuses.count("cancelled") == info["cancelled"]
    waited = wsupload(env, "batch", "wait", "--timeout", "10", batch.batch_id)
    assert waited.returncode == 1, "not all succeeded"
    assert f"{info['cancelled']} cancelled of {len(sources)}" in waited.stdout
    again = wsupload(env, "batch", "cancel", batch.batch_id)
    assert again.returncode == 1, "nothing left to cancel"
    wait_until(lambda: acknowledged(own_producer), 30, what="every message acknowledged")
    assert own_producer.batches.get(batch.batch_id) == info, "counted once: the worker added nothing"
    assert len(sandbox.records) == info["succeeded"] + 1, "the cancelled members sent nothing"
