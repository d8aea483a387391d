"""The producer API with fakeredis and a recording broker: enqueue, status, wait."""

import os
import threading
from typing import Any

import fakeredis
import pytest
from celery import Celery

from config import Settings
from tasks import results
from tasks.errors import Rejected
from tasks.results import ResultStore
from worker.producer import EnqueueError, Producer


class RecordingApp(Celery):
    """A Celery app whose send_task records the call and what Redis held then."""

    def __init__(self, redis_client: fakeredis.FakeRedis, fail_after: int | None = None) -> None:
        super().__init__("test", broker="memory://")
        self.redis_client = redis_client
        self.fail_after = fail_after
        self.sent: list[dict[str, Any]] = []

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:  # type: ignore[override]
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise ConnectionError("broker down")
        doc = self.redis_client.get(f"wsupload:result:{args[0]}")
        self.sent.append(
            {"name": name, "args": args, "kwargs": kwargs, "options": options, "doc_existed": doc is not None}
        )


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env({"WSUPLOAD_QUEUE": "q1"})


def test_enqueue_writes_queued_documents_before_sending(redis_client: fakeredis.FakeRedis, settings: Settings) -> None:
    app = RecordingApp(redis_client)
    producer = Producer(settings, client=redis_client, app=app)
    jobs = producer.enqueue(["/media/a.png", "relative/b.png", "file:///media/c.png"])
    assert [j.source for j in jobs] == ["/media/a.png", os.path.abspath("relative/b.png"), "file:///media/c.png"]
    assert [s["args"] for s in app.sent] == [[j.job_id, j.source] for j in jobs]
    assert all(s["name"] == "wsupload.upload" and s["doc_existed"] for s in app.sent)
    assert all(s["options"]["task_id"] == s["args"][0] and s["options"]["queue"] == "q1" for s in app.sent)
    assert all(s["kwargs"] is None for s in app.sent)  # nothing else rides along: no key
    assert [d["status"] for d in producer.status([j.job_id for j in jobs]) if d] == ["queued"] * 3


def test_a_broker_failure_removes_unsent_documents(redis_client: fakeredis.FakeRedis, settings: Settings) -> None:
    producer = Producer(settings, client=redis_client, app=RecordingApp(redis_client, fail_after=1))
    with pytest.raises(EnqueueError, match="sent 1 of 3") as caught:
        producer.enqueue(["/a.png", "/b.png", "/c.png"])
    (sent,) = caught.value.sent
    assert len(redis_client.keys("wsupload:result:*")) == 1
    assert producer.status([sent.job_id])[0] is not None


def test_wait_returns_when_the_last_job_finishes(redis_client: fakeredis.FakeRedis, settings: Settings) -> None:
    producer = Producer(settings, client=redis_client, app=RecordingApp(redis_client))
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


def test_wait_times_out(redis_client: fakeredis.FakeRedis, settings: Settings) -> None:
    producer = Producer(settings, client=redis_client, app=RecordingApp(redis_client))
    jobs = producer.enqueue(["/a.png"])
    outcome = producer.wait([jobs[0].job_id], timeout=0.2)
    assert outcome.timed_out
    assert outcome.docs[0] is not None
    assert outcome.docs[0]["status"] == "queued"


def test_unknown_jobs_do_not_block_wait(redis_client: fakeredis.FakeRedis, settings: Settings) -> None:
    producer = Producer(settings, client=redis_client, app=RecordingApp(redis_client))
    outcome = producer.wait(["never-enqueued"], timeout=30)
    assert (outcome.timed_out, outcome.docs, outcome.all_succeeded) == (False, [None], False)
