"""Fencing with fakeredis (real Lua): each delivery's generation, stale writes refused, batches counted once."""

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from wsupload.config import Settings
from wsupload.errors import LeaseLost, Rejected, Superseded
from wsupload.tasks.job import JobRunner
from wsupload.tasks.recovery import lease
from wsupload.tasks.sources.media import OpenedSource
from wsupload.tasks.store import keys, results
from wsupload.tasks.store.fencing import ClaimAsk, FirstAttempt
from wsupload.tasks.store.results import ResultStore
from wsupload.worker.dev.local_services import start_redis
from wsupload.worker.dev.samples import png_bytes

DATA = {"type": "image", "download_url": "https://cdn/x.png", "filename": "ok.png", "size": 7}
NOW = results.utcnow()


def batch_of_one(store: ResultStore, job_id: str = "j") -> results.JobDoc:
    store.redis.hset(keys.batch("b"), mapping={"total": 1, "done": 0})
    doc = results.new_doc(job_id, "/a.png", NOW, batch_id="b")
    store.create([doc])
    return doc


def test_each_claim_is_a_new_generation_and_carries_the_stored_document(store: ResultStore) -> None:
    doc = batch_of_one(store)
    first, second = store.claim("j"), store.claim("j")
    assert (first.generation, second.generation) == (1, 2)
    assert results.decode_doc(second.stored, "j", NOW) == doc


def test_a_stale_delivery_cannot_overwrite_the_one_that_took_over(store: ResultStore) -> None:
    doc = batch_of_one(store)
    stale = store.claim("j").generation
    store.save(results.started(doc, NOW, stale, "w1"), stale)
    current = store.claim("j").generation  # w1 was paused past its lease; w2 took the job
    store.save(results.started(doc, NOW, current, "w2"), current)
    with pytest.raises(Superseded, match="another delivery of it holds it now"):
        store.save(results.succeeded(doc, DATA, NOW, 60), stale)
    assert store.get("j")["worker"] == "w2"  # type: ignore[index]
    store.save(results.failed(doc, Rejected("HTTP 400: no", 400), NOW), current)
    with pytest.raises(Superseded, match="it has ended"):
        store.save(results.succeeded(doc, DATA, NOW, 60), current)
    final = store.get("j")
    assert final is not None
    assert final["status"] == "failed"
    counters = store.redis.hgetall(keys.batch("b"))
    assert (counters[b"done"], counters[b"failed"], counters.get(b"succeeded")) == (b"1", b"1", None)


def test_a_per_thread_store_claims_and_writes_through_its_threads_own_client(store: ResultStore) -> None:
    per_thread = ResultStore(store.redis, ttl=3600, per_thread=True)  # the worker's (tasks.runtime)
    doc = batch_of_one(per_thread)
    here = per_thread.here()
    assert here is not store.redis
    assert here.connection is not None  # held by this thread, of the shared pool
    assert here.connection_pool is store.redis.connection_pool
    generation = per_thread.claim("j").generation
    per_thread.save(results.succeeded(doc, DATA, NOW, 60), generation)
    assert store.get("j")["status"] == "succeeded"  # type: ignore[index]
    assert store.redis.hget(keys.batch("b"), "succeeded") == b"1"
    assert per_thread.here() is here
    assert per_thread.fencing.here is per_thread.here  # claims and saves go through it


def test_a_job_that_ended_is_never_claimed_nor_written_again(store: ResultStore) -> None:
    doc = batch_of_one(store)
    generation = store.claim("j").generation
    assert store.save(results.succeeded(doc, DATA, NOW, 60), generation)
    assert store.claim("j").ended
    assert not store.save(results.failed(doc, Rejected("late", 400), NOW))  # unfenced: still refused
    counters = store.redis.hgetall(keys.batch("b"))
    assert (counters[b"done"], counters[b"succeeded"], counters[b"bytes_done"]) == (b"1", b"1", b"7")
    assert b"finished_at" in counters


def test_an_unfenced_write_goes_through_while_the_job_runs(store: ResultStore) -> None:
    doc = batch_of_one(store)
    store.claim("j")
    assert store.save(results.failed(doc, Rejected("HTTP 400: no", 400), NOW))


class CountingClient:
    def __init__(self) -> None:
        self.calls = 0

    def upload(self, source: OpenedSource) -> dict[str, Any]:
        self.calls += 1
        return DATA


def test_a_job_delivered_past_the_bound_fails_without_uploading(store: ResultStore, tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    png.write_bytes(png_bytes())
    settings = Settings.from_env({"WAVESPEED_API_KEY": "sk-fencing", "WSUPLOAD_MAX_DELIVERIES": "2"})
    client = CountingClient()
    runner = JobRunner(settings=settings, store=store, client=client)
    store.claim("j")
    store.claim("j")  # two workers took it and died
    doc = runner.run("j", str(png), worker="w3")
    assert (doc["status"], doc["error"]["kind"], doc["generation"]) == ("failed", "too_many_deliveries", 3)
    assert "WSUPLOAD_MAX_DELIVERIES=2" in doc["error"]["message"]
    assert client.calls == 0


def test_the_document_shows_the_delivery_and_its_worker(store: ResultStore, tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    png.write_bytes(png_bytes())
    runner = JobRunner(
        settings=Settings.from_env({"WAVESPEED_API_KEY": "sk-fencing"}), store=store, client=CountingClient()
    )
    doc = runner.run("j", str(png), worker="wsupload-1@host")
    assert (doc["status"], doc["generation"], doc["worker"]) == ("succeeded", 1, "wsupload-1@host")
    assert runner.run("j", str(png), worker="another@host") == doc  # a redelivery of a finished job: nothing runs
    assert store.redis.get(keys.generation("j")) == b"done"


def test_a_generation_that_expired_or_was_lost_does_not_silence_its_delivery(store: ResultStore) -> None:
    doc = batch_of_one(store)
    generation = store.claim("j").generation
    store.redis.delete(keys.generation("j"))  # expired during a long upload, or lost in a failover
    assert store.save(results.started(doc, NOW, generation, "w1"), generation)
    assert store.redis.get(keys.generation("j")) == str(generation).encode()
    assert store.redis.ttl(keys.generation("j")) > 0  # kept alive with the document
    assert store.save(results.succeeded(doc, DATA, NOW, 60), generation)
    final = store.get("j")
    assert final is not None
    assert final["status"] == "succeeded"


# The claim that also writes the first attempt (fencing.FirstAttempt) rewrites the document
# with Redis's cjson: checked on fakeredis's emulation and on a private redis-server, whose
# cjson is the one that runs in production.
@pytest.fixture(scope="module")
def redis_server() -> Iterator[str]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no redis-server binary for the cjson checks (CI=true: a missing service is a failure)")
        pytest.skip("no redis-server binary: the cjson checks ran on fakeredis only")
    server = start_redis()
    yield server.url
    server.stop()


@pytest.fixture(params=["fakeredis", "redis-server"])
def any_store(request: pytest.FixtureRequest, store: ResultStore) -> Iterator[ResultStore]:
    if request.param == "fakeredis":
        yield store
        return
    client = redis.Redis.from_url(request.getfixturevalue("redis_server"))
    yield ResultStore(client, ttl=3600)
    client.flushdb()
    client.close()


FIRST = FirstAttempt(max_deliveries=3, max_attempts=3, started_at=results.isoformat(NOW), worker="w1")


def queued(store: ResultStore, job_id: str, **fields: Any) -> results.JobDoc:
    doc = {**results.new_doc(job_id, "/a/b.png", NOW, batch_id=f"{job_id}-batch", options={"dedup": False}), **fields}
    store.redis.hset(keys.batch(f"{job_id}-batch"), mapping={"total": 1, "done": 0})
    store.create([doc])
    return doc


def test_a_claim_writes_the_first_attempt_as_the_attempt_would(any_store: ResultStore) -> None:
    job_id = "j"
    doc = queued(any_store, job_id, source='/média/ü \\ "q" </a>.png')
    events = any_store.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    events.subscribe(results.EVENTS_CHANNEL)
    claim = any_store.claim(job_id, FIRST)
    expected = results.attempting(results.started(doc, NOW, 1, "w1"))
    assert claim.generation == 1
    assert claim.written is not None
    assert results.stored_as(claim.written, expected)
    assert any_store.get(job_id) == expected
    assert any_store.redis.hget(keys.batch(f"{job_id}-batch"), "started_at") == expected["started_at"].encode()
    deadline, message = time.monotonic() + 5, None
    while message is None and time.monotonic() < deadline:  # pubsub reads on a connection of its own
        message = events.get_message(timeout=0.1)
    events.close()
    assert message is not None
    assert json.loads(message["data"]) == {"job_id": job_id, "status": "running"}


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "running", "attempts": 1},  # a redelivery: the runner writes its own document
        {"attempts": 3},  # no attempts left
        {"options": {"dedup": False, "n": 0.1}},  # a number cjson might write back otherwise
        {"extra": [1]},  # a field the script does not know how to keep
        {"attempts": "0"},
    ],
)
def test_the_claim_leaves_alone_a_document_it_cannot_rewrite_faithfully(
    any_store: ResultStore, fields: dict[str, Any]
) -> None:
    job_id = "j"
    doc = queued(any_store, job_id, **fields)
    claim = any_store.claim(job_id, FIRST)
    assert (claim.generation, claim.written) == (1, None)
    assert json.loads(any_store.redis.get(results.result_key(job_id)) or b"") == doc


def test_the_claim_does_not_start_a_job_delivered_past_the_bound(any_store: ResultStore) -> None:
    job_id = "j"
    doc = queued(any_store, job_id)
    for _ in range(3):
        any_store.claim(job_id)
    claim = any_store.claim(job_id, FIRST)
    assert (claim.generation, claim.written) == (4, None)
    assert any_store.get(job_id) == doc


def count_saves(store: ResultStore) -> list[str]:
    """Each fenced write's status, in order (the claim's own write is not one)."""
    statuses: list[str] = []
    save = store.fencing.save

    def counted(save_keys: list[str], args: list[str | int]) -> int:
        statuses.append(str(args[4]))
        return save(save_keys, args)

    store.fencing.save = counted  # type: ignore[method-assign]
    return statuses


def test_a_local_file_costs_the_claim_and_the_outcome_only(store: ResultStore, tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    png.write_bytes(png_bytes())
    queued(store, "j")
    saves = count_saves(store)
    runner = JobRunner(settings=Settings.from_env({"WAVESPEED_API_KEY": "sk-f"}), store=store, client=CountingClient())
    doc = runner.run("j", str(png), worker="w1")
    assert (doc["status"], doc["attempts"], doc["generation"]) == ("succeeded", 1, 1)
    assert saves == ["succeeded"]


def test_an_odd_document_gets_the_first_attempt_written_by_the_runner(store: ResultStore, tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    png.write_bytes(png_bytes())
    queued(store, "j", extra=[1])  # a producer's field the claim's script leaves alone
    saves = count_saves(store)
    runner = JobRunner(settings=Settings.from_env({"WAVESPEED_API_KEY": "sk-f"}), store=store, client=CountingClient())
    doc = runner.run("j", str(png), worker="w1")
    assert (doc["status"], doc["attempts"], doc["extra"]) == ("succeeded", 1, [1])
    assert saves == ["running", "succeeded"]


def test_a_file_refused_before_any_attempt_ends_with_none_counted(store: ResultStore, tmp_path: Path) -> None:
    queued(store, "j")
    saves = count_saves(store)
    runner = JobRunner(settings=Settings.from_env({"WAVESPEED_API_KEY": "sk-f"}), store=store, client=CountingClient())
    doc = runner.run("j", str(tmp_path / "missing.png"), worker="w1")
    assert (doc["status"], doc["attempts"]) == ("failed", 0)  # the claim's attempt was never made
    assert saves == ["failed"]


def test_a_delivery_whose_lease_is_gone_claims_nothing(store: ResultStore, tmp_path: Path) -> None:
    """Paused past its lease, its message went to another worker: a late claim would take the job from it."""
    png = tmp_path / "a.png"
    png.write_bytes(png_bytes())
    settings = Settings.from_env({"WAVESPEED_API_KEY": "sk-fencing"})
    client = CountingClient()
    runner = JobRunner(settings=settings, store=store, client=client)
    with pytest.raises(LeaseLost, match="lease expired before the job was claimed"):
        runner.run("j", str(png), worker="w1", tag="tag-restored-since")
    assert store.redis.get(keys.generation("j")) is None
    assert client.calls == 0
    store.redis.zadd(keys.UNACKED_INDEX, {"tag-held": 1.0})
    doc = runner.run("j", str(png), worker="w1", tag="tag-held")
    assert (doc["status"], doc["generation"], client.calls) == ("succeeded", 1, 1)


def test_a_bulk_messages_jobs_share_its_lease_and_its_loss(store: ResultStore, tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    png.write_bytes(png_bytes())
    settings = Settings.from_env({"WAVESPEED_API_KEY": "sk-fencing"})
    client = CountingClient()
    runner = JobRunner(settings=settings, store=store, client=client)
    store.redis.zadd(keys.UNACKED_INDEX, {"m": 1.0})
    book = lease.LeaseBook()
    message = lease.JobLease("j1", "m", grace=30)
    with lease.holding(message, book):
        assert runner.run_delivery("j1", str(png), tag="m", held=message).doc["status"] == "succeeded"
        assert book.get("m") is message  # still the message's, between its jobs
        runner.run_delivery("j2", str(png), tag="m", held=message)
        assert message.job_id == "j2"
        message.lost = True  # the renewer found the message's entry gone
        with pytest.raises(LeaseLost):
            runner.run_delivery("j3", str(png), tag="m", held=message)
    assert client.calls == 2
    assert store.redis.get(keys.generation("j3")) is None


def test_with_a_broker_apart_from_the_results_the_claim_cannot_see_the_leases_and_does_not_ask(
    store: ResultStore, tmp_path: Path
) -> None:
    """kombu's lease index is in the broker's Redis: looked for in the results Redis, every job would stop unrun."""
    png = tmp_path / "a.png"
    png.write_bytes(png_bytes())
    env = {"WAVESPEED_API_KEY": "sk-fencing", "WSUPLOAD_BROKER_URL": "redis://broker.internal:6379/0"}
    runner = JobRunner(settings=Settings.from_env(env), store=store, client=CountingClient())
    doc = runner.run("j", str(png), worker="w1", tag="tag-in-the-brokers-index")
    assert (doc["status"], doc["generation"]) == ("succeeded", 1)


def test_an_outcome_and_the_next_jobs_claim_are_one_call_and_a_refused_outcome_claims_nothing(
    any_store: ResultStore,
) -> None:
    """A bulk message's next job is claimed with the outcome before it (``save_then_claim``): on
    fakeredis's Lua and on a redis-server's, which runs the two scripts as functions of one."""
    doc = batch_of_one(any_store, "j1")
    queued(any_store, "j2")
    generation = any_store.claim("j1").generation
    ahead = any_store.save_then_claim(results.succeeded(doc, DATA, NOW, 60), generation, ClaimAsk("j2", FIRST))
    assert ahead is not None
    assert (ahead.generation, ahead.ended, ahead.lease_gone) == (1, False, False)
    assert results.decode_doc(ahead.written, "j2", NOW)["status"] == "running"  # type: ignore[index]
    assert any_store.get("j1")["status"] == "succeeded"  # type: ignore[index]
    assert any_store.redis.hget(keys.batch("b"), "succeeded") == b"1"
    stale = ahead.generation
    any_store.claim("j2")  # j2 went to another delivery meanwhile: this one's outcome is refused
    j2 = results.decode_doc(ahead.written, "j2", NOW)
    assert j2 is not None
    with pytest.raises(Superseded, match="another delivery of it holds it now"):
        any_store.save_then_claim(results.succeeded(j2, DATA, NOW, 60), stale, ClaimAsk("j3"))
    assert any_store.redis.get(keys.generation("j3")) is None


def test_the_claim_made_with_an_outcome_still_needs_the_messages_lease(any_store: ResultStore) -> None:
    doc = batch_of_one(any_store, "j1")
    generation = any_store.claim("j1").generation
    ahead = any_store.save_then_claim(results.succeeded(doc, DATA, NOW, 60), generation, ClaimAsk("j2", None, "gone"))
    assert ahead is not None
    assert ahead.lease_gone
    assert any_store.redis.get(keys.generation("j2")) is None
    assert any_store.get("j1")["status"] == "succeeded"  # type: ignore[index]
