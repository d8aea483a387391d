"""Waiting across a Redis restart (issue 9, case 8): every waiter reconnects and returns normally.

A private redis-server with AOF is stopped and started again on the same port and
directory while a batch runs on a real worker and six waiters listen: ``wsupload
ingest --wait`` (which enqueued the batch), ``wsupload batch wait``, ``wsupload
wait``, ``Producer.wait_batch`` / ``Producer.wait`` in threads, and in a thread of its
own an event loop where ``AsyncProducer.wait_batch``, ``wait`` and ``updates`` share
the asyncio producer's one subscription, and a plain Celery app's ``AsyncResult.get``
through the ``wsupload+redis://`` result backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from celery import Celery, states
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.integration.conftest import producer_env
from wsupload.config import Settings
from wsupload.errors import InternalError
from wsupload.tasks.store import results
from wsupload.tasks.store.results import ResultStore
from wsupload.worker.async_producer import AsyncProducer
from wsupload.worker.dev.local_services import LocalRedis, WorkerProcess, free_port, start_redis, wait_until
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOWN_SECONDS = 1.5
"""How long Redis stays away: the fault itself (a restart of a few seconds), not a wait for anything."""
SETTLE_SECONDS = 5.0
"""How long the worker gets, after the restart, to end the batch before the test ends what is left."""
STALL_SECONDS = 30.0
"""The first uploads are held by the sandbox until Redis is back (``release_stalls``), so they are in flight
when Redis goes, however long the waiters took to start (the worker's read timeout is longer)."""


class RestartableRedis:
    """A persistent private Redis that can be restarted on its own port and directory."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port, self.directory = free_port(), directory
        self.server: LocalRedis = start_redis(persistent=True, port=self.port, directory=directory)

    @property
    def url(self) -> str:
        return self.server.url

    def restart(self) -> None:
        self.server.stop()  # SIGTERM: the AOF (appendfsync always) already holds every write
        time.sleep(DOWN_SECONDS)  # the fault: Redis is away, not a wait for a condition
        self.server = start_redis(persistent=True, port=self.port, directory=self.directory)  # polls until it answers

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path / "redis")
    yield server
    server.stop()


class Waiter(threading.Thread):
    """A Python-API wait in a thread; keeps its result or its exception."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as exc:  # reported by the test
            self.error = exc


def cli(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "wsupload.worker.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def completed(result: Any) -> bool:
    """What ``wait`` (a ``WaitOutcome``) or ``wait_batch`` (``(info, timed_out)``) returned, not timed out;
    for the asyncio waiters (a list: ``wait_batch``'s, ``wait``'s, ``updates``' documents), both waits';
    for ``AsyncResult.get`` (the state it left), a state of a job that ended."""
    if isinstance(result, str):
        return result in states.READY_STATES
    if isinstance(result, list):
        return completed(result[0]) and completed(result[1])
    timed_out = result[-1] if isinstance(result, tuple) else getattr(result, "timed_out", None)
    return timed_out is False


def async_waits(url: str, settings: Settings, batch_id: str, job_ids: list[str]) -> list[Any]:
    """``AsyncProducer``'s batch wait, wait and updates side by side in one event loop (one subscription)."""

    async def waits() -> list[Any]:
        # No retries in redis-py: every blip reaches the waiters' own reconnect logic.
        client = redis.asyncio.Redis.from_url(url, retry=AsyncRetry(NoBackoff(), 0))
        async with AsyncProducer(settings, client=client) as aio:
            try:

                async def follow() -> list[Any]:
                    return [doc async for doc in aio.updates(job_ids)]

                return list(
                    await asyncio.gather(aio.wait_batch(batch_id, timeout=90), aio.wait(job_ids, timeout=90), follow())
                )
            finally:
                await client.aclose()

    return asyncio.run(waits())


def celery_get(url: str, job_id: str) -> str:
    """A web app's Celery client waiting on a job: ``AsyncResult.get`` through wsupload's result backend."""
    app = Celery("client", broker=url, backend=f"wsupload+{url}")
    try:
        result = app.AsyncResult(job_id)
        result.get(timeout=90, propagate=False)  # a job the test ends failed is still an end
        return str(result.state)
    finally:
        app.close()


def finish_leftovers(client: redis.Redis, job_ids: list[str]) -> list[str]:
    """End, as a worker would (document, counters, announcement), every job not yet ended."""
    store = ResultStore(client, ttl=3600)
    left = []
    for job_id, doc in zip(job_ids, store.get_many(job_ids), strict=True):
        assert doc is not None, f"job {job_id} lost its document across the restart"
        if doc["status"] not in results.TERMINAL:
            store.save(results.failed(doc, InternalError("ended by the test: the worker did not"), results.utcnow()))
            left.append(job_id)
    return left


def test_every_waiter_rides_out_a_redis_restart(
    aof_redis: RestartableRedis, worker_env: dict[str, str], sandbox: SandboxServer, media_root: Path, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    env = {
        **worker_env,
        "REDIS_URL": aof_redis.url,
        "WSUPLOAD_QUEUE": f"restart-{suffix}",
        "WSUPLOAD_BULK_QUEUE": f"restart-{suffix}.bulk",
        "WSUPLOAD_READ_TIMEOUT": "60",
    }
    penv = producer_env(env)
    producer = Producer(Settings.from_env(penv))
    files = []
    for n in range(4):  # different bytes each: no job is answered by deduplication
        files.append(media_root / f"restart-{suffix}-{n}.png")
        files[-1].write_bytes(png_bytes(width=64 + n))
    sandbox.add_fault(Fault(stall=STALL_SECONDS, times=2))
    worker = WorkerProcess(env=env, log_path=tmp_path / "worker.log", concurrency=2).start()
    clis: list[subprocess.Popen[str]] = []
    try:
        worker.wait_ready(producer.app)
        name = f"restart-{suffix}"
        ingest = cli(penv, "ingest", *map(str, files), "--batch", name, "--wait", "--timeout", "90")
        clis.append(ingest)
        batch_id = wait_until(lambda: producer.batches.resolve(name), 30, what="ingest to enqueue its batch")
        job_ids = producer.batches.job_ids(batch_id)
        batch_wait = cli(penv, "batch", "wait", name, "--timeout", "90")
        jobs_wait = cli(penv, "wait", "--timeout", "90", *job_ids)
        clis += [batch_wait, jobs_wait]
        # No retries in redis-py: every blip reaches the waiters' own reconnect logic.
        no_retry = Producer(
            Settings.from_env(penv), client=redis.Redis.from_url(aof_redis.url, retry=Retry(NoBackoff(), 0))
        )
        threads = [
            Waiter(lambda: no_retry.wait_batch(batch_id, timeout=90)),
            Waiter(lambda: no_retry.wait(job_ids, timeout=90)),
            Waiter(lambda: async_waits(aof_redis.url, Settings.from_env(penv), batch_id, job_ids)),
            Waiter(lambda: celery_get(aof_redis.url, job_ids[0])),
        ]
        for thread in threads:
            thread.start()

        def listeners() -> int:
            return int(producer.redis.pubsub_numsub(results.ENDED_CHANNEL)[0][1])

        wait_until(lambda: listeners() >= 7, 30, what="the seven waiters to subscribe")
        wait_until(lambda: sandbox.records, 30, what="the first upload to reach the sandbox")
        done_before = producer.batches.get(batch_id)["done"]  # type: ignore[index]
        assert done_before < len(job_ids), "the batch ended before Redis went away: the test proves nothing"

        aof_redis.restart()
        sandbox.release_stalls()

        def riding_it_out() -> bool:
            # Each waiter is listening again, or has already returned what it waited for
            # (the batch may end soon after Redis is back); none gave up or failed.
            waiting = 0
            for label, process in (("ingest --wait", ingest), ("batch wait", batch_wait), ("wait", jobs_wait)):
                if process.poll() is None:
                    waiting += 1
                elif process.returncode != 0:
                    pytest.fail(f"{label} exited {process.returncode} over the restart: {process.communicate()[1]}")
            for thread in threads:
                if thread.is_alive():
                    waiting += 1
                elif thread.error is not None or not completed(thread.result):
                    pytest.fail(f"a Python-API waiter returned over the restart: {thread.error!r} {thread.result!r}")
            return listeners() >= waiting

        wait_until(riding_it_out, 30, what="the waiters to subscribe again or return what they waited for")

        # The worker outliving a Redis restart is not what this test is about (issue 9,
        # item 4): if it has stopped making progress, the test ends what is left.
        def settled() -> bool:
            info = producer.batches.get(batch_id)
            return bool(info and info["done"] >= info["total"]) or worker.process.poll() is not None  # type: ignore[union-attr]

        with contextlib.suppress(TimeoutError):
            wait_until(settled, SETTLE_SECONDS, what="the worker to end the batch")
        worker.stop()
        ended_by_test = finish_leftovers(producer.redis, job_ids)

        outputs = {}
        for label, process in (("ingest --wait", ingest), ("batch wait", batch_wait), ("wait", jobs_wait)):
            out, err = process.communicate(timeout=60)
            outputs[label] = (process.returncode, out, err)
        for thread in threads:
            thread.join(timeout=60)
    finally:
        worker.stop()
        for process in clis:
            if process.poll() is None:
                process.kill()
                process.communicate()

    expected = 0 if not ended_by_test else 1  # 1: a job ended failed (by the test)
    for label, (code, out, err) in outputs.items():
        assert code == expected, f"{label} exited {code}: {err}"
        assert "cannot reach Redis" not in err
        if label == "wait":
            assert all(job_id in out for job_id in job_ids), out
        else:
            assert f"{len(ended_by_test)} failed of {len(job_ids)}" in out, out
    batch_result, jobs_result, async_result, celery_result = threads
    assert celery_result.error is None, repr(celery_result.error)
    assert celery_result.result in states.READY_STATES
    assert batch_result.error is None, repr(batch_result.error)
    info, timed_out = batch_result.result
    assert (timed_out, info["done"], info["total"]) == (False, len(job_ids), len(job_ids))
    assert jobs_result.error is None, repr(jobs_result.error)
    assert not jobs_result.result.timed_out
    assert all(doc and doc["status"] in results.TERMINAL for doc in jobs_result.result.docs)
    assert async_result.error is None, repr(async_result.error)
    (info, timed_out), outcome, updates = async_result.result
    assert (timed_out, info["done"], info["total"]) == (False, len(job_ids), len(job_ids))
    assert not outcome.timed_out
    assert all(doc and doc["status"] in results.TERMINAL for doc in outcome.docs)
    last = {doc["job_id"]: doc for doc in updates}  # each job's last document yielded: its end
    assert sorted(last) == sorted(job_ids)
    assert all(doc["status"] in results.TERMINAL for doc in last.values())
