"""``AsyncProducer`` against a real Redis, a real worker and the sandbox: enqueue, status, wait, updates, batch.

Each test runs its scenario with ``asyncio.run`` (no asyncio plugin for pytest): the
producer is made inside the loop that uses it, as a web backend makes it at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.integration.conftest import producer_env
from wsupload import AsyncProducer, InvalidInput, Settings
from wsupload.tasks.store.results import JobDoc
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer

pytestmark = [pytest.mark.integration, pytest.mark.core, pytest.mark.usefixtures("worker")]

T = TypeVar("T")


@pytest.fixture
def settings(worker_env: dict[str, str]) -> Settings:
    return Settings.from_env(producer_env(worker_env))


@pytest.fixture
def png(media_root: Path) -> Path:
    path = media_root / f"aio-{uuid.uuid4().hex[:8]}.png"
    path.write_bytes(png_bytes())
    return path


def run(settings: Settings, scenario: Callable[[AsyncProducer], Awaitable[T]]) -> T:
    async def main() -> T:
        async with AsyncProducer(settings) as producer:
            return await asyncio.wait_for(scenario(producer), timeout=60)

    return asyncio.run(main())


async def statuses(producer: AsyncProducer, job_id: str) -> list[JobDoc]:
    """Every document ``updates`` yields for one job, to its end."""
    return [doc async for doc in producer.updates([job_id])]


def test_enqueue_status_and_wait(settings: Settings, png: Path) -> None:
    async def scenario(producer: AsyncProducer) -> tuple[list[Any], Any]:
        jobs = await producer.enqueue([str(png)])
        first = await producer.status([job.job_id for job in jobs])
        return first, await producer.wait([job.job_id for job in jobs], timeout=30)

    first, outcome = run(settings, scenario)
    assert first[0] is not None
    assert first[0]["status"] in {"queued", "running", "succeeded"}
    assert outcome.all_succeeded, outcome
    (doc,) = outcome.docs
    assert doc is not None
    assert (doc["source"], doc["result"]["download_url"].startswith("http")) == (str(png), True)


def test_wait_times_out_with_the_documents_last_read(settings: Settings, sandbox: SandboxServer, png: Path) -> None:
    sandbox.add_fault(Fault(stall=1.0))  # the upload is held at the server for longer than the wait

    async def scenario(producer: AsyncProducer) -> Any:
        (job,) = await producer.enqueue([str(png)])
        short = await producer.wait([job.job_id], timeout=0.2)
        return short, await producer.wait([job.job_id], timeout=30)

    short, outcome = run(settings, scenario)
    assert short.timed_out
    assert short.docs[0]["status"] in {"queued", "running"}
    assert outcome.all_succeeded


def test_an_unknown_job_is_done_at_once(settings: Settings) -> None:
    async def scenario(producer: AsyncProducer) -> Any:
        return await producer.wait(["no-such-job"], timeout=5), [d async for d in producer.updates(["no-such-job"])]

    outcome, seen = run(settings, scenario)
    assert (outcome.timed_out, outcome.docs, seen) == (False, [None], [])


def test_updates_sees_running_then_succeeded(settings: Settings, sandbox: SandboxServer, png: Path) -> None:
    sandbox.add_fault(Fault(stall=1.0))  # the job stays running for a second

    async def scenario(producer: AsyncProducer) -> list[JobDoc]:
        (job,) = await producer.enqueue([str(png)])
        return await statuses(producer, job.job_id)

    seen = [doc["status"] for doc in run(settings, scenario)]
    assert seen[-1] == "succeeded"
    assert "running" in seen, seen
    assert seen.index("running") < seen.index("succeeded"), seen
    assert len(seen) == len(set(seen)), f"an unchanged document was yielded twice: {seen}"


def test_updates_sees_a_retried_job_retrying(settings: Settings, sandbox: SandboxServer, png: Path) -> None:
    sandbox.add_fault(Fault(status=503, retry_after="1"))  # the first attempt fails; the retry waits 1 s

    async def scenario(producer: AsyncProducer) -> list[JobDoc]:
        (job,) = await producer.enqueue([str(png)])
        return await statuses(producer, job.job_id)

    docs = run(settings, scenario)
    seen = [doc["status"] for doc in docs]
    assert "retrying" in seen, seen
    assert seen.index("retrying") < seen.index("succeeded"), seen
    retrying = docs[seen.index("retrying")]
    assert retrying["last_error"]["kind"] == "server_error"
    assert retrying["next_attempt_at"]
    assert docs[-1]["attempts"] == 2


def test_a_batch_is_enqueued_and_awaited(settings: Settings, media_root: Path) -> None:
    sources = []
    for n in range(5):
        path = media_root / f"aio-batch-{uuid.uuid4().hex[:6]}-{n}.png"
        path.write_bytes(png_bytes(8 + n, 8))
        sources.append(str(path))

    async def scenario(producer: AsyncProducer) -> Any:
        batch = await producer.enqueue_batch(sources, name="aio-" + uuid.uuid4().hex[:6])
        info, timed_out = await producer.wait_batch(batch.batch_id, timeout=30)
        return batch, info, timed_out, await producer.status([job.job_id for job in batch.jobs])

    batch, info, timed_out, docs = run(settings, scenario)
    assert not timed_out
    assert (info["total"], info["done"], info["succeeded"], info["name"]) == (5, 5, 5, batch.name)
    assert [doc["status"] for doc in docs] == ["succeeded"] * 5
    assert {doc["batch_id"] for doc in docs} == {batch.batch_id}


def test_bad_input_is_refused_before_anything_is_sent(settings: Settings) -> None:
    async def scenario(producer: AsyncProducer) -> None:
        await producer.enqueue(["/srv/" + "x" * 5000])

    with pytest.raises(InvalidInput, match="source 1 of 1 is"):
        run(settings, scenario)


def test_leaving_updates_early_closes_its_subscription(settings: Settings, sandbox: SandboxServer, png: Path) -> None:
    sandbox.add_fault(Fault(stall=1.0))

    async def subscribers(producer: AsyncProducer) -> int:
        return int((await producer.redis.pubsub_numsub("wsupload:events"))[0][1])

    async def scenario(producer: AsyncProducer) -> tuple[int, int]:
        before = await subscribers(producer)
        (job,) = await producer.enqueue([str(png)])
        async with contextlib.aclosing(producer.updates([job.job_id])) as stream:
            async for _ in stream:
                during = await subscribers(producer)
                break
        # Redis drops a closed connection's subscriptions when it reads the close: polled, with a deadline.
        deadline = asyncio.get_running_loop().time() + 10
        while await subscribers(producer) != before and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        return during - before, await subscribers(producer) - before

    added, left = run(settings, scenario)
    assert (added, left) == (1, 0)


def test_concurrent_waits_share_one_subscription(settings: Settings, sandbox: SandboxServer, media_root: Path) -> None:
    sources = []
    for n in range(20):
        path = media_root / f"aio-many-{uuid.uuid4().hex[:6]}-{n}.png"
        path.write_bytes(png_bytes(8, 8 + n))
        sources.append(str(path))
    sandbox.add_fault(Fault(stall=1.0))  # the first upload is held: every wait is still waiting when counted

    async def ended_subscribers(producer: AsyncProducer) -> int:
        return int((await producer.redis.pubsub_numsub("wsupload:ended"))[0][1])

    async def scenario(producer: AsyncProducer) -> tuple[int, list[Any]]:
        before = await ended_subscribers(producer)
        jobs = await producer.enqueue(sources)
        waits = [asyncio.create_task(producer.wait([job.job_id], timeout=30)) for job in jobs]
        deadline = asyncio.get_running_loop().time() + 10
        while len(producer._hub.watches) < len(jobs) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # polled, with a deadline: every wait has registered
        assert len(producer._hub.watches) == len(jobs)
        during = await ended_subscribers(producer) - before
        return during, await asyncio.gather(*waits)

    during, outcomes = run(settings, scenario)
    assert during == 1
    assert all(outcome.all_succeeded for outcome in outcomes)
