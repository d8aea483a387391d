"""The producer API with fakeredis: documents and messages, batches, wait."""

import base64
import json
import os
import threading
from typing import Any

import fakeredis
import pytest

from config import Settings
from tasks import results
from tasks.discovery import Found
from tasks.errors import Rejected
from tasks.results import ResultStore
from worker.producer import Producer


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
    real_status = producer.status

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

    monkeypatch.setattr(producer, "status", counted_status)
    outcome = producer.wait([j.job_id for j in jobs], timeout=30)
    assert [d["error"]["message"] for d in outcome.docs if d] == ["no", "no"]
    assert len(reads) == 1  # the documents came with the events: no second read


def test_wait_times_out(producer: Producer) -> None:
    jobs = producer.enqueue(["/a.png"])
    outcome = producer.wait([jobs[0].job_id], timeout=0.2)
    assert outcome.timed_out
    assert outcome.docs[0] is not None
    assert outcome.docs[0]["status"] == "queued"


def test_unknown_jobs_do_not_block_wait(producer: Producer) -> None:
    outcome = producer.wait(["never-enqueued"], timeout=30)
    assert (outcome.timed_out, outcome.docs, outcome.all_succeeded) == (False, [None], False)
