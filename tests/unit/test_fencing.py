"""Fencing with fakeredis (real Lua): each delivery's generation, stale writes refused, batches counted once."""

from pathlib import Path
from typing import Any

import pytest

from wsupload.config import Settings
from wsupload.tasks import keys, results
from wsupload.tasks.errors import Rejected
from wsupload.tasks.fencing import Superseded
from wsupload.tasks.job import JobRunner
from wsupload.tasks.media_source import OpenedSource
from wsupload.tasks.results import ResultStore
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
