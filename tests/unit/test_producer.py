"""The producer API with fakeredis: documents and messages, batches, wait."""

import base64
import json
import os
import threading
import time
from types import SimpleNamespace
from typing import Any, cast

import fakeredis
import pytest
import redis

from wsupload.config import Settings
from wsupload.errors import Rejected
from wsupload.tasks.recovery.outage import Outage, reconnect_delay
from wsupload.tasks.sources.discovery import Found
from wsupload.tasks.store import results
from wsupload.tasks.store.results import ResultStore
from wsupload.worker import producer as producer_module
from wsupload.worker.producer import Producer


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env({"WSUPLOAD_QUEUE": "q1", "WSUPLOAD_BULK_QUEUE": "q1.bulk"})


@pytest.fixture
def producer(redis_client: fakeredis.FakeRedis, settings: Settings) -> Producer:
    return Producer(settings, client=redis_client)


def messages(client: fakeredis.FakeRedis, queue: str) -> list[dict[str, Any]]:
    """Decoded task messages in the order a worker will take them."""
    out = []
    for raw in reversed(client.lrange(queue, 0, -1)):
        envelope = json.loads(raw)
        args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
        out.append(
            {"task": envelope["headers"]["task"], "id": envelope["headers"]["id"], "args": args, "kwargs": kwargs}
        )
    return out


def test_enqueue_writes_documents_and_messages(producer: Producer, redis_client: fakeredis.FakeRedis) -> None:
    jobs = producer.enqueue(["/media/a.png", "relative/b.png", "s3://bucket/c.png"])
    assert [j.source for j in jobs] == ["/media/a.png", os.path.abspath("relative/b.png"), "s3://bucket/c.png"]
    sent = messages(redis_client, "q1")
    assert [m["args"] for m in sent] == [[j.job_id, j.source] for j in jobs]
    assert all(m["task"] == "wsupload.upload" and m["id"] == m["args"][0] and m["kwargs"] == {} for m in sent)
    assert [d["status"] for d in producer.status([j.job_id for j in jobs]) if d] == ["queued"] * 3


def test_bulk_and_options_ride_in_the_message(producer: Producer, redis_client: fakeredis.FakeRedis) -> None:
    producer.enqueue(["/a.png"], bulk=True, options={"dedup": True})
    assert redis_client.llen("q1") == 0
    (message,) = messages(redis_client, "q1.bulk")
    assert message["kwargs"] == {"options": {"dedup": True}}


def test_a_batch_records_its_members_and_totals(producer: Producer, redis_client: fakeredis.FakeRedis) -> None:
    batch = producer.enqueue_batch([Found("/m/a.png", 100), Found("/m/b.png", 50), "/m/c.png"], name="nightly")
    assert producer.batches.resolve("nightly") == batch.batch_id
    info = producer.batches.get(batch.batch_id)
    assert info is not None
    assert (info["name"], info["total"], info["bytes_total"], info["done"]) == ("nightly", 3, 150, 0)
    assert producer.batches.job_ids(batch.batch_id) == [j.job_id for j in batch.jobs]
    docs = producer.status([j.job_id for j in batch.jobs])
    assert all(d is not None and d["batch_id"] == batch.batch_id for d in docs)
    assert all(m["kwargs"] == {"options": {"dedup": True}} for m in messages(redis_client, "q1.bulk"))


def test_wait_returns_when_the_last_job_finishes(producer: Producer, redis_client: fakeredis.FakeRedis) -> None:
    jobs = producer.enqueue(["/a.png", "/b.png"])
    store = ResultStore(redis_client, ttl=60)
    updates: list[list[str | None]] = []

    def finish() -> None:
        for job in jobs:
            doc = store.get(job.job_id)
            assert doc is not None
            store.save(results.failed(doc, Rejected("no", 400), results.utcnow()))

    def on_update(docs: list[Any]) -> None:
        updates.append([d["status"] if d else None for d in docs])
        if len(updates) == 1:
            threading.Thread(target=finish).start()

    outcome = producer.wait([j.job_id for j in jobs], timeout=30, on_update=on_update)
    assert not outcome.timed_out
    assert not outcome.all_succeeded
    assert [d["status"] for d in outcome.docs if d] == ["failed", "failed"]
    assert updates[0] == ["queued", "queued"]


def test_wait_takes_final_documents_from_the_ended_channel_without_reading(
    producer: Producer, redis_client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = producer.enqueue(["/a.png", "/b.png"])
    store = ResultStore(redis_client, ttl=60)
    reads: list[list[str]] = []
    real_status = producer._read  # what wait reads with

    def counted_status(job_ids: Any) -> Any:
        reads.append(list(job_ids))
        docs = real_status(job_ids)
        if len(reads) == 1:  # after the first read, the jobs end
            threading.Thread(target=finish).start()
        return docs

    def finish() -> None:
        for job in jobs:
            doc = store.get(job.job_id)
            assert doc is not None
            store.save(results.failed(doc, Rejected("no", 400), results.utcnow()))

    monkeypatch.setattr(producer, "_read", counted_status)
    outcome = producer.wait([j.job_id for j in jobs], timeout=30)
    assert [d["error"]["message"] for d in outcome.docs if d] == ["no", "no"]
    assert len(reads) == 1  # the documents came with the events: no second read


def test_wait_reads_the_jobs_that_end_between_two_wake_ups_in_one(
    producer: Producer, redis_client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a wake-up the waiter pauses up to ``WAKE_EVERY`` before reading again: the two jobs that end
    during that pause are read in one wake-up, not one each."""
    first, *rest = producer.enqueue(["/a.png", "/b.png", "/c.png"])
    store = ResultStore(redis_client, ttl=60)

    def end(job_id: str) -> None:
        doc = store.get(job_id)
        assert doc is not None
        store.save(results.failed(doc, Rejected("no", 400), results.utcnow()))

    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 1:
            for job in rest:
                end(job.job_id)

    wakes: list[set[str]] = []
    next_ended = Producer._next_ended

    def counted(pubsub: Any, wanted: set[str], timeout: float) -> Any:
        ended = next_ended(pubsub, wanted, timeout)
        wakes.append(set(ended))
        return ended

    monkeypatch.setattr(producer_module, "time", SimpleNamespace(monotonic=time.monotonic, sleep=pause))
    monkeypatch.setattr(Producer, "_next_ended", staticmethod(counted))

    def on_update(docs: list[Any]) -> None:
        if not wakes:  # called once the waiter has subscribed, before its first wake-up
            end(first.job_id)

    outcome = producer.wait([first.job_id, *(job.job_id for job in rest)], timeout=10, on_update=on_update)
    assert [d and d["status"] for d in outcome.docs] == ["failed"] * 3
    together = {job.job_id for job in rest}
    assert any(together <= ended for ended in wakes)  # read in one wake-up, not one each
    assert pauses
    assert all(0 < seconds <= producer_module.WAKE_EVERY for seconds in pauses)


def test_a_lone_jobs_end_is_read_without_a_pause(
    producer: Producer, redis_client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a wake-up that brought ends is followed by a pause: the subscription's own answer
    is not, so one job's end reaches its caller as soon as it is published."""
    (job,) = producer.enqueue(["/a.png"])
    store = ResultStore(redis_client, ttl=60)
    pauses: list[float] = []
    monkeypatch.setattr(producer_module, "time", SimpleNamespace(monotonic=time.monotonic, sleep=pauses.append))

    def on_update(docs: list[Any]) -> None:
        doc = store.get(job.job_id)
        assert doc is not None
        if doc["status"] == "queued":  # once, after the waiter subscribed
            store.save(results.failed(doc, Rejected("no", 400), results.utcnow()))

    outcome = producer.wait([job.job_id], timeout=10, on_update=on_update)
    assert [d and d["status"] for d in outcome.docs] == ["failed"]
    assert pauses == []


def test_wait_re_reads_unfinished_documents_a_chunk_at_a_time_in_turn(
    producer: Producer, redis_client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ends written without an event (as if it were lost) are still found, by re-reads of at most
    ``RECHECK_CHUNK`` documents each, taking every unfinished job in turn: never all of them each time."""
    jobs = producer.enqueue([f"/m/{n}.png" for n in range(5)])
    store = ResultStore(redis_client, ttl=60)

    def end_unheard() -> None:  # SET, not the fenced save that announces the end
        for job in jobs:
            doc = store.get(job.job_id)
            assert doc is not None
            ended = results.failed(doc, Rejected("no", 400), results.utcnow())
            redis_client.set(results.result_key(job.job_id), json.dumps(ended))

    monkeypatch.setattr(producer_module, "RECHECK_SECONDS", 0.0)
    monkeypatch.setattr(producer_module, "RECHECK_CHUNK", 2)
    reads: list[list[str]] = []
    real_status = producer._read  # what wait reads with

    def counted_status(job_ids: Any) -> Any:
        reads.append(list(job_ids))
        docs = real_status(job_ids)
        if len(reads) == 1:  # the jobs end once the waiter has read them queued
            end_unheard()
        return docs

    monkeypatch.setattr(producer, "_read", counted_status)
    outcome = producer.wait([job.job_id for job in jobs], timeout=10)
    assert [d and d["status"] for d in outcome.docs] == ["failed"] * 5
    initial, *rechecks = reads
    assert len(initial) == 5
    assert [len(chunk) for chunk in rechecks] == [2, 2, 1]
    assert sorted(job_id for chunk in rechecks for job_id in chunk) == sorted(job.job_id for job in jobs)


def test_wait_times_out(producer: Producer) -> None:
    jobs = producer.enqueue(["/a.png"])
    outcome = producer.wait([jobs[0].job_id], timeout=0.2)
    assert outcome.timed_out
    assert outcome.docs[0] is not None
    assert outcome.docs[0]["status"] == "queued"


def test_unknown_jobs_do_not_block_wait(producer: Producer) -> None:
    outcome = producer.wait(["never-enqueued"], timeout=30)
    assert (outcome.timed_out, outcome.docs, outcome.all_succeeded) == (False, [None], False)


class Flaky:
    """A client whose Redis can go away: while ``down`` is above zero, each command
    (subscribing and reading the subscription too) fails with ``error`` and counts
    ``down`` one lower, so Redis is back after that many failed calls."""

    def __init__(self, real: fakeredis.FakeRedis) -> None:
        self.real = real
        self.down = 0
        self.failures = 0
        self.error: Exception = redis.ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")

    def check(self) -> None:
        if self.down > 0:
            self.down -= 1
            self.failures += 1
            raise self.error

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if name == "pubsub":
            return lambda *a, **k: FlakyPubSub(attr(*a, **k), self)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.check()
            return attr(*args, **kwargs)

        return call


class FlakyPubSub:
    def __init__(self, real: Any, client: Flaky) -> None:
        self.real, self.client = real, client

    def subscribe(self, *channels: str) -> None:
        self.client.check()
        self.real.subscribe(*channels)

    def get_message(self, timeout: float = 0.0) -> Any:
        self.client.check()
        return self.real.get_message(timeout=timeout)

    def close(self) -> None:
        self.real.close()  # the messages it held are lost with it, as with a dropped connection


@pytest.fixture
def flaky(redis_client: fakeredis.FakeRedis) -> Flaky:
    return Flaky(redis_client)


@pytest.fixture
def waiter(flaky: Flaky, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Producer:
    """A producer on the flaky client whose only way to learn of an end it missed is the
    read after reconnecting: the once-a-second safety read is pushed out of the way."""
    monkeypatch.setattr(producer_module, "RECHECK_SECONDS", 60.0)
    return Producer(settings, client=cast(redis.Redis, flaky))


def fail_all(client: fakeredis.FakeRedis, job_ids: list[str]) -> None:
    """The worker's part: each job ends, its document written and announced."""
    store = ResultStore(client, ttl=60)
    for job_id in job_ids:
        doc = store.get(job_id)
        assert doc is not None
        store.save(results.failed(doc, Rejected("no", 400), results.utcnow()))


def test_reconnect_delay_doubles_up_to_a_second() -> None:
    assert [reconnect_delay(n) for n in range(1, 8)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


def test_an_outage_gives_up_only_after_its_limit_without_a_deadline() -> None:
    outage = Outage(deadline=None, limit=60)
    assert outage.failed(now=0) is None  # never reached Redis: a wrong address, not a blip
    outage.recovered()
    assert [outage.failed(now=t) for t in (100, 100.1, 130, 159.9)] == [0.1, 0.2, 0.4, 0.8]
    assert outage.failed(now=160) is None
    outage.recovered()  # Redis answered: the next outage counts from its own start
    assert outage.failed(now=500) == 0.1


def test_a_connection_made_counts_as_reaching_redis_without_ending_an_outage_under_way() -> None:
    outage = Outage(deadline=None, limit=60)
    outage.connected()  # subscribed, then Redis went away before the first read: waited out
    assert outage.failed(now=0) == 0.1
    outage.connected()  # reconnected and subscribed, but reads still fail: the count goes on
    assert outage.failed(now=59) == 0.2
    assert outage.failed(now=60) is None


def test_an_outage_with_a_deadline_pauses_no_later_than_the_deadline() -> None:
    outage = Outage(deadline=1000.5, limit=60)
    outage.recovered()
    assert [outage.failed(now=t) for t in (900, 1000, 1000.4, 1001)] == [0.1, 0.2, pytest.approx(0.1), 0.0]


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("Connection closed by server."),
        redis.TimeoutError("Timeout reading from socket"),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
    ],
    ids=["connection", "timeout", "loading"],
)
def test_wait_rides_out_an_outage_and_misses_no_end(
    producer: Producer, waiter: Producer, flaky: Flaky, redis_client: fakeredis.FakeRedis, error: Exception
) -> None:
    jobs = [j.job_id for j in producer.enqueue(["/a.png", "/b.png"])]

    def on_update(docs: list[Any]) -> None:
        if flaky.failures == 0 and flaky.down == 0:
            flaky.error, flaky.down = error, 3
            fail_all(redis_client, jobs)  # announced while the waiter cannot hear it

    outcome = waiter.wait(jobs, timeout=30, on_update=on_update)
    assert (outcome.timed_out, [d["status"] for d in outcome.docs if d]) == (False, ["failed", "failed"])
    assert flaky.failures == 3


def test_wait_with_a_timeout_returns_what_it_last_read_when_redis_stays_down(waiter: Producer, flaky: Flaky) -> None:
    jobs = [j.job_id for j in waiter.enqueue(["/a.png"])]
    updates: list[list[Any]] = []

    def on_update(docs: list[Any]) -> None:
        updates.append(docs)
        flaky.down = 10**6

    outcome = waiter.wait(jobs, timeout=0.5, on_update=on_update)
    assert outcome.timed_out
    assert [d["status"] for d in outcome.docs if d] == ["queued"]
    assert flaky.failures > 1  # it kept trying until its own timeout
    assert updates[-1] == outcome.docs


def test_wait_without_a_timeout_gives_up_after_the_outage_limit(waiter: Producer, flaky: Flaky) -> None:
    jobs = [j.job_id for j in waiter.enqueue(["/a.png"])]
    waiter.outage_limit = 0.5

    def on_update(docs: list[Any]) -> None:
        flaky.down = 10**6

    with pytest.raises(redis.ConnectionError, match="Connection refused"):
        waiter.wait(jobs, on_update=on_update)
    assert flaky.failures > 1


def test_wait_fails_at_once_when_redis_never_answered(waiter: Producer, flaky: Flaky) -> None:
    flaky.down = 10**6
    with pytest.raises(redis.ConnectionError):
        waiter.wait(["j1"])
    assert flaky.failures == 1


def test_wait_batch_rides_out_an_outage_and_reads_the_counters_again(
    producer: Producer, waiter: Producer, flaky: Flaky, redis_client: fakeredis.FakeRedis
) -> None:
    batch = producer.enqueue_batch(["/a.png", "/b.png", "/c.png"])

    def on_update(info: dict[str, Any]) -> None:
        if flaky.failures == 0 and flaky.down == 0:
            flaky.error, flaky.down = redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"), 2
            fail_all(redis_client, [j.job_id for j in batch.jobs])

    info, timed_out = waiter.wait_batch(batch.batch_id, timeout=30, on_update=on_update)
    assert (timed_out, info["done"], info["failed"], info["total"]) == (False, 3, 3, 3)
    assert flaky.failures == 2


def test_wait_batch_times_out_with_the_counters_last_read(waiter: Producer, flaky: Flaky) -> None:
    batch = waiter.enqueue_batch(["/a.png"])

    def on_update(info: dict[str, Any]) -> None:
        flaky.down = 10**6

    info, timed_out = waiter.wait_batch(batch.batch_id, timeout=0.5, on_update=on_update)
    assert (timed_out, info["done"], info["total"]) == (True, 0, 1)
    assert flaky.failures > 1


def test_importing_the_producer_leaves_celery_unloaded() -> None:
    """A web backend imports ``Producer`` at start-up: Celery's app is built only for ``ping``."""
    import subprocess
    import sys

    probe = (
        "import sys, wsupload; wsupload.Producer; print(sorted(m for m in sys.modules if m.split('.')[0] == 'celery'))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
