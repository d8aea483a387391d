"""``AsyncProducer`` writes what the sync ``Enqueuer`` writes and fails as it fails: one flow, two drivers.

fakeredis's asyncio client runs the commit script with real Lua; each scenario runs in
``asyncio.run``. tests/integration/test_async_producer.py runs it against a real worker.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import fakeredis
import pytest
import redis

from wsupload.config import Settings
from wsupload.errors import EnqueueError, PublishError
from wsupload.tasks import enqueue as enqueue_module
from wsupload.tasks.enqueue import STAGING_TTL, Enqueuer
from wsupload.tasks.store import keys, results
from wsupload.worker import async_producer
from wsupload.worker.async_producer import AsyncProducer

QUEUE, BULK = "q1", "q1.bulk"
OOM = "command not allowed when used memory > 'maxmemory'. script: " + "ab" * 20 + ", on @user_script:12."
T = TypeVar("T")


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(enqueue_module, "CHUNK", 2)  # 5 jobs: two staged chunks and a last one


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env({"WSUPLOAD_QUEUE": QUEUE, "WSUPLOAD_BULK_QUEUE": BULK, "WSUPLOAD_RESULT_TTL": "1h"})


def run(
    settings: Settings,
    scenario: Callable[[AsyncProducer], Awaitable[T]],
    server: fakeredis.FakeServer | None = None,
) -> T:
    async def main() -> T:
        client = fakeredis.FakeAsyncRedis(server=server or fakeredis.FakeServer())
        async with AsyncProducer(settings, client=client) as producer:
            try:
                return await scenario(producer)
            finally:
                await client.aclose()

    return asyncio.run(main())


def fail_commit(producer: AsyncProducer, error: Exception, *, run_first: bool = False) -> None:
    real = producer._commit

    async def commit(**kwargs: Any) -> Any:
        if run_first:
            await real(**kwargs)
        raise error

    producer._commit = commit  # type: ignore[assignment]


def shapes(client: redis.Redis) -> list[tuple[str, str, int]]:
    """Every key as (kind of key, type, length), job and batch ids left out: what a call wrote, whoever made it."""
    found = []
    for raw in client.keys("*"):
        key = results.text(raw)
        kind = key.split(":")[1] if key.startswith("wsupload:") else key
        kind_type = results.text(client.type(key))
        size = {"list": client.llen, "hash": client.hlen, "zset": client.zcard}.get(kind_type, lambda k: 1)(key)
        found.append((kind, kind_type, int(size)))
    return sorted(found)


@pytest.mark.parametrize("bulk", [False, True], ids=["interactive", "bulk"])
def test_an_enqueue_writes_what_the_sync_enqueuer_writes(settings: Settings, bulk: bool) -> None:
    server = fakeredis.FakeServer()
    sources = [f"/m/{n}.png" for n in range(5)]
    jobs = run(settings, lambda producer: producer.enqueue(sources, bulk=bulk), server)
    by_async = fakeredis.FakeRedis(server=server)
    by_sync = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    Enqueuer(settings, by_sync).enqueue(sources, bulk=bulk)
    assert shapes(by_async) == shapes(by_sync)
    assert by_async.keys("wsupload:staging:*") == []
    docs = [results.decode_doc(by_async.get(results.result_key(j.job_id)), j.job_id, results.utcnow()) for j in jobs]
    assert [doc["status"] if doc else None for doc in docs] == ["queued"] * 5
    assert all(3500 < by_async.ttl(results.result_key(job.job_id)) <= 3600 for job in jobs)


def test_a_batch_is_written_with_its_records(settings: Settings) -> None:
    async def scenario(producer: AsyncProducer) -> Any:
        batch = await producer.enqueue_batch([f"/m/{n}.png" for n in range(5)], name="nightly")
        return batch, await producer.batch(batch.batch_id), await producer.status([j.job_id for j in batch.jobs])

    batch, info, docs = run(settings, scenario)
    assert (info["total"], info["done"], info["name"]) == (5, 0, "nightly")
    assert {doc["batch_id"] for doc in docs} == {batch.batch_id}
    assert {doc["options"]["dedup"] for doc in docs} == {True}


def test_a_refused_commit_leaves_nothing_and_says_what_the_sync_one_says(settings: Settings) -> None:
    server = fakeredis.FakeServer()

    async def scenario(producer: AsyncProducer) -> None:
        fail_commit(producer, redis.exceptions.OutOfMemoryError(OOM))
        await producer.enqueue_batch([f"/m/{n}.png" for n in range(5)], name="nightly")

    with pytest.raises(EnqueueError) as caught:
        run(settings, scenario, server)
    assert str(caught.value) == (
        "batch not enqueued: Redis refused writes while committing 5 jobs "
        "(OOM command not allowed when used memory > 'maxmemory'); nothing was queued"
    )
    assert fakeredis.FakeRedis(server=server).keys("*") == []


def test_a_commit_whose_reply_was_lost_is_found_done(settings: Settings) -> None:
    async def scenario(producer: AsyncProducer) -> Any:
        fail_commit(producer, redis.ConnectionError("Connection reset by peer"), run_first=True)
        jobs = await producer.enqueue([f"/m/{n}.png" for n in range(5)])
        return jobs, await producer.redis.llen(QUEUE)

    jobs, queued = run(settings, scenario)
    assert (len(jobs), queued) == (5, 5)


def test_a_commit_lost_with_redis_gone_is_in_doubt_and_staging_expires(settings: Settings) -> None:
    server = fakeredis.FakeServer()
    gone = redis.ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")

    async def scenario(producer: AsyncProducer) -> None:
        fail_commit(producer, gone)

        async def exists(*names: str) -> int:
            raise gone

        producer.redis.exists = exists  # type: ignore[method-assign,assignment]
        await producer.enqueue([f"/m/{n}.png" for n in range(5)])

    with pytest.raises(EnqueueError) as caught:
        run(settings, scenario, server)
    assert caught.value.in_doubt
    assert str(caught.value).startswith("jobs in doubt: the connection to Redis failed while committing 5 jobs")
    left = fakeredis.FakeRedis(server=server)
    staged = left.keys("*")
    assert len(staged) == 2 + 4  # two staging lists, four staged documents
    assert all(0 < left.ttl(key) <= STAGING_TTL for key in staged)


def test_a_large_call_is_built_in_a_thread_not_on_the_loop(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(async_producer, "OFFLOAD_ABOVE", 3)
    where: list[bool] = []
    real = async_producer._advance

    def advance(*args: Any) -> Any:
        where.append(threading.current_thread() is threading.main_thread())
        return real(*args)

    monkeypatch.setattr(async_producer, "_advance", advance)

    async def scenario(producer: AsyncProducer) -> Any:
        small = await producer.enqueue(["/m/a.png"])
        large = await producer.enqueue([f"/m/{n}.png" for n in range(5)])
        return len(small), len(large), await producer.redis.llen(QUEUE)

    assert run(settings, scenario) == (1, 5, 6)
    # The small call's two steps (its commit, then its end) on the loop; the large one's four in a thread.
    assert where == [True, True, False, False, False, False]


def test_wait_and_updates_read_the_documents(settings: Settings) -> None:
    async def scenario(producer: AsyncProducer) -> Any:
        (job,) = await producer.enqueue(["/m/a.png"])
        doc = (await producer.status([job.job_id]))[0]
        assert doc is not None
        done = results.succeeded(doc, {"download_url": "https://x/y", "size": 1}, results.utcnow(), 60)
        await producer.redis.set(results.result_key(job.job_id), json.dumps(done))
        outcome = await producer.wait([job.job_id, "unknown"], timeout=5)
        return outcome, [d async for d in producer.updates([job.job_id, "unknown"])]

    outcome, seen = run(settings, scenario)
    assert not outcome.timed_out
    assert [doc["status"] if doc else None for doc in outcome.docs] == ["succeeded", None]
    assert [doc["status"] for doc in seen] == ["succeeded"]


def test_importing_the_async_producer_leaves_celery_unloaded() -> None:
    probe = (
        "import sys, wsupload; wsupload.AsyncProducer;"
        " print(sorted(m for m in sys.modules if m.split('.')[0] == 'celery'))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_wait_rides_out_a_lost_subscription_and_sees_what_ended_meanwhile(settings: Settings) -> None:
    """The shared subscription's connection drops: the wait reconnects, re-reads, and returns the end."""

    async def scenario(producer: AsyncProducer) -> Any:
        (job,) = await producer.enqueue(["/m/a.png"])
        real = producer.redis.pubsub
        made: list[Any] = []

        def pubsub(**kwargs: Any) -> Any:
            made.append(subscription := real(**kwargs))
            if len(made) == 1:  # the first connection is lost once the wait is waiting on it

                async def lost(**kwargs: Any) -> Any:
                    doc = (await producer.status([job.job_id]))[0]
                    assert doc is not None
                    # The job ends while the connection is gone: no event reaches this wait.
                    ended = results.succeeded(doc, {"download_url": "https://x/y", "size": 1}, results.utcnow(), 60)
                    await producer.redis.set(results.result_key(job.job_id), json.dumps(ended))
                    raise redis.ConnectionError("Connection reset by peer")

                subscription.get_message = lost  # type: ignore[method-assign,assignment]
            return subscription

        producer.redis.pubsub = pubsub  # type: ignore[method-assign]
        outcome = await producer.wait([job.job_id], timeout=10)
        return outcome, len(made)

    outcome, connections = run(settings, scenario)
    assert not outcome.timed_out
    assert outcome.docs[0]["status"] == "succeeded"
    assert connections == 2


def test_a_wait_that_never_reached_redis_fails_at_once(settings: Settings) -> None:
    async def scenario(producer: AsyncProducer) -> Any:
        def pubsub(**kwargs: Any) -> Any:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")

        producer.redis.pubsub = pubsub  # type: ignore[method-assign]
        return await producer.wait(["a-job"], timeout=10)

    with pytest.raises(redis.ConnectionError, match="Connection refused"):
        run(settings, scenario)


# RabbitMQ as the broker: the same commit (owe mode), the publish in a thread, the debt cleared.

AMQP = Settings.from_env({"REDIS_URL": "redis://r:6379/0", "WSUPLOAD_BROKER_URL": "amqp://guest:guest@rabbit:5672//"})


class ThreadPublisher:
    """Records each publish and whether it ran on the event loop's thread (it must not: it blocks)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.on_loop: list[bool] = []
        self.sent: list[Any] = []

    def publish(self, sent: list[Any]) -> None:
        self.on_loop.append(threading.current_thread() is threading.main_thread())
        if self.fail:
            raise PublishError("RabbitMQ: ConnectionRefusedError: [Errno 111] Connection refused")
        self.sent += sent


def on_rabbitmq(publisher: ThreadPublisher, server: fakeredis.FakeServer) -> Callable[[AsyncProducer], Any]:
    async def scenario(producer: AsyncProducer) -> list[Any]:
        producer.publisher = lambda: publisher  # type: ignore[assignment,method-assign,return-value]
        return await producer.enqueue(["/m/a.png", "/m/b.png"])

    return scenario


def test_on_rabbitmq_the_publish_runs_in_a_thread_and_the_debt_is_cleared() -> None:
    server, publisher = fakeredis.FakeServer(), ThreadPublisher()
    jobs = run(AMQP, on_rabbitmq(publisher, server), server)
    assert publisher.on_loop == [False]
    assert [message.headers["id"] for message in publisher.sent] == [job.job_id for job in jobs]
    left = fakeredis.FakeRedis(server=server)
    assert left.zcard(keys.owed(AMQP.queue)) == 0
    assert all(left.exists(results.result_key(job.job_id)) for job in jobs)


def test_on_rabbitmq_a_failed_publish_says_what_the_sync_one_says() -> None:
    server = fakeredis.FakeServer()
    with pytest.raises(EnqueueError) as caught:
        run(AMQP, on_rabbitmq(ThreadPublisher(fail=True), server), server)
    assert caught.value.queued
    assert str(caught.value) == (
        "jobs queued but not published: RabbitMQ: ConnectionRefusedError: [Errno 111] Connection refused; the"
        " workers' sweep publishes 2 jobs within WSUPLOAD_AMQP_PUBLISH_GRACE (60 s) of now"
    )
    assert fakeredis.FakeRedis(server=server).zcard(keys.owed(AMQP.queue)) == 2


def test_the_asyncio_producer_pauses_and_resumes_and_gives_deadlines(settings: Settings) -> None:
    async def scenario(producer: AsyncProducer) -> tuple[list[bool], set[str], set[str], dict[str, Any] | None]:
        changed = [await producer.pause("bulk"), await producer.pause(BULK)]
        paused = await producer.paused()
        changed.append(await producer.resume("bulk"))
        [job] = await producer.enqueue(["/srv/a.png"], expires_in=30)
        [doc] = await producer.status([job.job_id])
        return changed, paused, await producer.paused(), doc

    changed, paused, after, doc = run(settings, scenario)
    assert changed == [True, False, True]
    assert (paused, after) == ({BULK}, set())
    assert doc is not None
    assert doc["options"]["deadline_at"] == doc["deadline_at"]
