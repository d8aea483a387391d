"""Job deadlines for real: ``--expires-in`` / ``expires_in=``, a worker process, the sandbox over HTTP.

A job enqueued with a deadline while no worker runs stays ``queued`` past its deadline, and
ends ``expired`` once a worker meets it, with no request at the sandbox; ``wait`` exits 1, and
a batch counts each such job once in ``expired``. A job whose deadline passes while it waits
to retry (the sandbox answers 503 with a ``Retry-After`` longer than the deadline) ends
``expired`` at its next attempt, having sent one request; an upload already sending when its
deadline passes is not cut.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from tests.integration.conftest import StartWorker, png_file, producer_env
from tests.integration.conftest import run_cli as wsupload
from wsupload.tasks.store import results
from wsupload.worker.dev.local_services import wait_until
from wsupload.worker.dev.sandbox import Fault, SandboxServer
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration, pytest.mark.core]


def media(root: Path, name: str, size: int = 16) -> str:
    return png_file(root, f"deadline-{name}", size)


def requests_for(sandbox: SandboxServer, source: str) -> int:
    return sum(1 for record in sandbox.records if record.filename == Path(source).name)


def redis_now(producer: Producer) -> datetime:
    seconds, micros = producer.redis.time()
    return datetime.fromtimestamp(seconds + micros / 1e6).astimezone()


def past(producer: Producer, deadline_at: str) -> bool:
    return redis_now(producer) > datetime.fromisoformat(deadline_at)


def test_a_job_met_after_its_deadline_ends_expired_with_nothing_sent(
    own_env: dict[str, str],
    own_producer: Producer,
    start_worker: StartWorker,
    sandbox: SandboxServer,
    media_root: Path,
) -> None:
    env = producer_env(own_env)
    one = media(media_root, "one")
    enqueued = wsupload(env, "enqueue", "--json", "--expires-in", "2s", one)
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = json.loads(enqueued.stdout)[0]["job_id"]
    batch_files = [media(media_root, f"batch-{n}", 16 + n) for n in range(3)]
    ingested = wsupload(env, "ingest", "--expires-in", "2", "--batch", "deadline-batch", *batch_files)
    assert ingested.returncode == 0, ingested.stderr
    batch_id = ingested.stdout.split()[1]
    members = own_producer.batches.job_ids(batch_id)

    doc = own_producer.status([job_id])[0]
    assert doc is not None
    assert doc["status"] == results.QUEUED
    assert doc["deadline_at"] == doc["options"]["deadline_at"]
    assert doc["expires_at"] is None  # the media's retention, not the deadline
    # No worker runs: past their deadlines (on Redis's clock; the batch's came later), the jobs are still queued.
    docs = own_producer.status([job_id, *members])
    last = max((d["deadline_at"] for d in docs if d is not None), key=datetime.fromisoformat)
    wait_until(lambda: past(own_producer, last), 15, what="the deadlines to pass")
    assert [d and d["status"] for d in own_producer.status([job_id, *members])] == [results.QUEUED] * 4

    start_worker()
    waited = wsupload(env, "wait", "--json", "--timeout", "60", job_id, *members)
    assert waited.returncode == 1, waited.stderr  # an end, but not a success
    for ended in json.loads(waited.stdout):
        assert ended["status"] == results.EXPIRED
        assert ended["error"]["kind"] == "expired"
        assert ended["attempts"] == 0
        assert ended["result"] is None
    assert sum(requests_for(sandbox, source) for source in [one, *batch_files]) == 0

    info = own_producer.batches.get(batch_id)
    assert info is not None
    assert (info["total"], info["done"], info["expired"], info["succeeded"], info["failed"]) == (3, 3, 3, 0, 0)
    status = wsupload(env, "batch", "status", "--json", batch_id)
    assert json.loads(status.stdout)["expired"] == 3


def test_a_deadline_passing_during_retries_ends_expired_at_the_next_attempt(
    own_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, media_root: Path
) -> None:
    start_worker()
    source = media(media_root, "retried")
    # The first attempt comes well within the deadline (3 s, for a loaded machine); the wait the
    # server asks for (5 s, WSUPLOAD_RETRY_AFTER_MAX) ends past it.
    sandbox.add_fault(Fault(status=503, retry_after="5", times=5))
    [job] = own_producer.enqueue([source], expires_in=3)
    outcome = own_producer.wait([job.job_id], timeout=60)
    assert not outcome.timed_out
    doc = outcome.docs[0]
    assert doc is not None
    assert doc["status"] == results.EXPIRED, doc
    assert doc["error"]["kind"] == "expired"
    assert doc["attempts"] == 1  # the one before the wait; none after it
    assert doc["last_error"]["kind"] == "server_error"
    assert requests_for(sandbox, source) == 1


def test_an_upload_already_sending_when_its_deadline_passes_is_not_cut(
    own_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, media_root: Path
) -> None:
    start_worker()
    source = media(media_root, "sending")
    sandbox.add_fault(Fault(stall=60))  # held until released, once the deadline has passed
    [job] = own_producer.enqueue([source], expires_in=3)
    wait_until(lambda: requests_for(sandbox, source) == 1, 30, what="the upload to reach the sandbox")
    [sending] = own_producer.status([job.job_id])
    assert sending is not None
    wait_until(lambda: past(own_producer, sending["deadline_at"]), 10, what="the deadline to pass")
    sandbox.release_stalls()
    outcome = own_producer.wait([job.job_id], timeout=60)
    doc = outcome.docs[0]
    assert doc is not None
    assert doc["status"] == results.SUCCEEDED, doc
    assert requests_for(sandbox, source) == 1
    assert past(own_producer, doc["deadline_at"])


def test_a_bad_expires_in_is_one_readable_line(own_env: dict[str, str], media_root: Path) -> None:
    done = wsupload(producer_env(own_env), "enqueue", "--expires-in", "soon", media(media_root, "bad"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "--expires-in" in done.stderr
