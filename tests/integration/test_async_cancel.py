"""``AsyncProducer.cancel`` for real: the same script as ``Producer.cancel``, through ``redis.asyncio``.

A queued job (no worker running) ends ``cancelled`` at once, and ``wait`` and ``updates``
see that end; a running upload is cut at the sandbox; a finished job is left as it was; a
batch cancelled mid-run counts every member once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.integration.conftest import StartWorker, producer_env
from tests.integration.test_cancel import ANNOUNCED, SLACK, client_gone, held_request
from wsupload import AsyncProducer, CancelOutcome, Job, Settings, WaitOutcome
from wsupload.tasks.store.results import JobDoc
from wsupload.worker.dev.local_services import wait_until
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer

pytestmark = [pytest.mark.integration, pytest.mark.core]
T = TypeVar("T")


def media(root: Path, name: str) -> str:
    path = root / f"aio-cancel-{name}-{uuid.uuid4().hex[:8]}.png"
    path.write_bytes(png_bytes(8, 8 + len(name)))
    return str(path)


def run(env: dict[str, str], scenario: Callable[[AsyncProducer], Awaitable[T]]) -> T:
    async def main() -> T:
        async with AsyncProducer(Settings.from_env(producer_env(env))) as producer:
            return await asyncio.wait_for(scenario(producer), timeout=60)

    return asyncio.run(main())


def test_a_queued_job_is_cancelled_and_wait_and_updates_see_it(own_env: dict[str, str], media_root: Path) -> None:
    async def scenario(producer: AsyncProducer) -> tuple[CancelOutcome, WaitOutcome, list[JobDoc], list[CancelOutcome]]:
        (job,) = await producer.enqueue([media(media_root, "queued")])  # no worker runs
        [outcome] = await producer.cancel([job.job_id])
        waited = await producer.wait([job.job_id], timeout=5)
        seen = [doc async for doc in producer.updates([job.job_id])]
        again = await producer.cancel([job.job_id, job.job_id, "no-such-job"])
        return outcome, waited, seen, again

    outcome, waited, seen, again = run(own_env, scenario)
    assert (outcome.outcome, outcome.status) == ("cancelled", "cancelled")
    assert not waited.timed_out
    assert waited.docs == [outcome.doc]
    assert [doc["status"] for doc in seen] == ["cancelled"]
    assert [(o.outcome, o.status) for o in again] == [("ended", "cancelled")] * 2 + [("unknown", None)]


def test_a_running_upload_is_cut_and_a_finished_job_left_as_it_was(
    own_env: dict[str, str], start_worker: StartWorker, sandbox: SandboxServer, media_root: Path
) -> None:
    start_worker()
    finished = media(media_root, "finished")

    async def first(producer: AsyncProducer) -> tuple[CancelOutcome, Job]:
        (done,) = await producer.enqueue([finished])
        assert (await producer.wait([done.job_id], timeout=30)).all_succeeded
        [left] = await producer.cancel([done.job_id])
        sandbox.add_fault(Fault(stall=60))  # the next answer is held: the worker waits for it
        (job,) = await producer.enqueue([media(media_root, "running")])
        return left, job

    left, job = run(own_env, first)
    assert (left.outcome, left.status) == ("ended", "succeeded")
    held = held_request(sandbox)
    asked = time.monotonic()
    [outcome] = run(own_env, lambda producer: producer.cancel([job.job_id]))
    assert (outcome.outcome, outcome.status) == ("cancelled", "cancelled")
    wait_until(lambda: client_gone(sandbox, held.number), ANNOUNCED + SLACK, what="the request cut at the sandbox")
    assert time.monotonic() - asked <= ANNOUNCED + SLACK


def test_a_batch_cancelled_counts_every_member_once(own_env: dict[str, str], media_root: Path) -> None:
    async def scenario(producer: AsyncProducer) -> tuple[list[CancelOutcome], dict[str, Any], bool]:
        batch = await producer.enqueue_batch([media(media_root, f"b{n}") for n in range(5)])  # no worker runs
        outcomes = await producer.cancel_batch(batch.batch_id)
        info, timed_out = await producer.wait_batch(batch.batch_id, timeout=5)
        return outcomes, info, timed_out

    outcomes, info, timed_out = run(own_env, scenario)
    assert [o.outcome for o in outcomes] == ["cancelled"] * 5
    assert not timed_out
    assert (info["total"], info["done"], info["cancelled"], info["succeeded"]) == (5, 5, 5, 0)
