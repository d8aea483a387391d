"""Pausing and resuming a queue for real: the commands, worker processes, the sandbox over HTTP.

With the bulk queue paused (``wsupload pause bulk``), bulk jobs stay queued while interactive
jobs run, across a restart of the worker (the pause is in Redis, and a worker started later
honours it); ``wsupload resume bulk`` runs them. Paused while a stream of bulk jobs runs one
after another, the job running finishes and no job starts later than ``BOUND`` after the
pause (the issue's bound, plus slack for a loaded machine); ``stats`` and ``workers`` say
which queue is paused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.integration.conftest import StartWorker, png_file, producer_env, waiting_messages
from tests.integration.conftest import run_cli as wsupload
from wsupload.tasks.store import results
from wsupload.worker.dev.local_services import wait_until
from wsupload.worker.dev.sandbox import Fault, SandboxServer
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration, pytest.mark.core]

BOUND = 1.0
"""The issue's bound: no new job of a paused queue starts later than this after the pause."""
SLACK = 1.0
"""Added to the bound: the machine running the tests is shared and loaded."""
QUIET = 2.0
"""How long a paused queue is watched for a job that should not start (past the bound, with slack)."""


def media(root: Path, name: str, size: int = 16) -> str:
    return png_file(root, f"pause-{name}", size)


@pytest.fixture
def env(own_env: dict[str, str], own_producer: Producer) -> Iterator[dict[str, str]]:
    """The producers' environment; both queues are resumed afterwards (the set is shared by the whole Redis)."""
    yield producer_env(own_env)
    for queue in (own_producer.settings.queue, own_producer.settings.bulk_queue):
        own_producer.resume(queue)


def statuses(producer: Producer, job_ids: list[str]) -> list[str | None]:
    return [None if doc is None else str(doc["status"]) for doc in producer.status(job_ids)]


def stays_queued(producer: Producer, job_ids: list[str], seconds: float) -> None:
    """Every job stays queued for ``seconds``, read every 0.1 s."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        assert statuses(producer, job_ids) == [results.QUEUED] * len(job_ids)
        time.sleep(0.1)


def started_at(doc: results.JobDoc) -> float:
    return datetime.fromisoformat(doc["started_at"]).timestamp()


def test_bulk_jobs_wait_across_a_worker_restart_while_interactive_jobs_run_and_resume_runs_them(
    env: dict[str, str], own_producer: Producer, start_worker: StartWorker, media_root: Path
) -> None:
    bulk_queue = own_producer.settings.bulk_queue
    first = start_worker()
    paused = wsupload(env, "pause", "bulk")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip().startswith(f"queue {bulk_queue} paused")
    assert wsupload(env, "pause", "bulk").stdout.strip() == f"queue {bulk_queue} was already paused"

    batch = own_producer.enqueue_batch(
        [media(media_root, f"bulk-{n}", 16 + n) for n in range(4)], options={"dedup": False}
    )
    bulk_ids = [job.job_id for job in batch.jobs]
    interactive = own_producer.enqueue([media(media_root, "interactive-1")])
    done = own_producer.wait([job.job_id for job in interactive], timeout=60)
    assert done.all_succeeded, done.docs
    stays_queued(own_producer, bulk_ids, QUIET)

    first.stop()
    start_worker()  # a new worker, started while the queue is paused
    interactive = own_producer.enqueue([media(media_root, "interactive-2")])
    done = own_producer.wait([job.job_id for job in interactive], timeout=60)
    assert done.all_succeeded, done.docs
    stays_queued(own_producer, bulk_ids, QUIET)
    assert waiting_messages(own_producer, bulk_queue) >= 1

    stats = json.loads(wsupload(env, "stats", "--json").stdout)
    assert {q["name"]: q["paused"] for q in stats["queues"]} == {own_producer.settings.queue: False, bulk_queue: True}
    assert "(paused)" in wsupload(env, "stats").stdout
    assert f"paused   {bulk_queue}" in wsupload(env, "workers").stdout

    resumed = wsupload(env, "resume", bulk_queue)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == f"queue {bulk_queue} resumed: workers take its jobs again"
    done = own_producer.wait(bulk_ids, timeout=60)
    assert done.all_succeeded, done.docs
    assert own_producer.paused() == set()


def test_no_new_job_starts_later_than_a_second_after_a_pause(
    env: dict[str, str], own_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, media_root: Path
) -> None:
    start_worker()
    sandbox.add_fault(Fault(stall=0.3, times=1000))  # each upload takes a while: the jobs run one after another
    batch = own_producer.enqueue_batch(
        [media(media_root, f"stream-{n}", 16 + n) for n in range(12)], options={"dedup": False}
    )
    job_ids = [job.job_id for job in batch.jobs]
    wait_until(lambda: sum(s != results.QUEUED for s in statuses(own_producer, job_ids)) >= 2, 60, what="jobs to run")

    own_producer.pause("bulk")
    paused_at = time.time()
    # The job running then finishes; nothing starts after it.
    wait_until(
        lambda: (
            results.RUNNING not in statuses(own_producer, job_ids)
            and results.RETRYING not in statuses(own_producer, job_ids)
        ),
        30,
        what="the running job to finish",
    )
    later = [s for s in statuses(own_producer, job_ids) if s == results.QUEUED]
    assert later, "no job was left queued after the pause"
    stays_queued(
        own_producer,
        [j for j, s in zip(job_ids, statuses(own_producer, job_ids), strict=True) if s == results.QUEUED],
        QUIET,
    )
    docs = [doc for doc in own_producer.status(job_ids) if doc is not None and doc["started_at"]]
    late = [doc["job_id"] for doc in docs if started_at(doc) > paused_at + BOUND + SLACK]
    assert late == [], f"started more than {BOUND} s after the pause"

    own_producer.resume("bulk")
    done = own_producer.wait(job_ids, timeout=60)
    assert done.all_succeeded, done.docs


def test_pausing_an_unknown_queue_is_one_readable_line(env: dict[str, str]) -> None:
    done = wsupload(env, "pause", "no-such-queue")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "no queue 'no-such-queue'" in done.stderr
