"""The bulk task shell (``wsupload.upload_many``): its stop rules; one job's fate apart from the rest."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery.exceptions import Reject

from tests.unit.conftest import install_runner
from wsupload.errors import LeaseLost, Superseded
from wsupload.tasks import upload_many as bulk_module
from wsupload.tasks.job import JobRunner, Outcome
from wsupload.tasks.store import keys, results
from wsupload.tasks.store.results import ResultStore
from wsupload.worker.dev.samples import png_bytes

DATA = {"type": "image", "download_url": "https://cdn.test/a.png", "filename": "a.png", "size": 10}


class CountingClient:
    def __init__(self) -> None:
        self.calls = 0

    def upload(self, source: Any) -> dict[str, Any]:
        self.calls += 1
        return DATA


@pytest.fixture
def png(tmp_path: Path) -> str:
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes())
    return str(path)


def run(*items: list[object], **kwargs: object) -> None:
    bulk_module.upload_many.run([list(item) for item in items], **kwargs)


def test_each_job_ends_on_its_own_and_a_bad_source_fails_only_its_job(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch, png: str
) -> None:
    client = CountingClient()
    install_runner(store, monkeypatch, client)
    run(["j1", png], ["j2", "relative.png"], ["j3", png])
    docs = store.get_many(["j1", "j2", "j3"])
    assert [d and d["status"] for d in docs] == ["succeeded", "failed", "succeeded"]
    assert docs[1] is not None
    assert docs[1]["error"]["kind"] == "invalid_input"
    assert client.calls == 2


def deliveries(runner: JobRunner, monkeypatch: pytest.MonkeyPatch, fates: dict[str, Exception]) -> list[str]:
    """``run_delivery`` replaced: each job succeeds unless ``fates`` names what it raises; returns the jobs run."""
    seen: list[str] = []

    def deliver(job_id: str, *args: Any, **kwargs: Any) -> Outcome:
        seen.append(job_id)
        if job_id in fates:
            raise fates[job_id]
        return Outcome({"job_id": job_id, "status": "succeeded"}, ended_here=True)

    monkeypatch.setattr(runner, "run_delivery", deliver)
    return seen


def test_a_lost_lease_stops_the_message_there(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    runner = install_runner(store, monkeypatch, CountingClient())
    seen = deliveries(runner, monkeypatch, {"j2": LeaseLost("job j2: lost")})
    run(["j1", "/a.png"], ["j2", "/b.png"], ["j3", "/c.png"])  # raises nothing: the message is back on its queue
    assert seen == ["j1", "j2"]
    assert "job j2: lost; this delivery of message" in caplog.text


def test_a_job_another_delivery_claimed_sends_the_message_back_rather_than_leave_it(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = install_runner(store, monkeypatch, CountingClient())
    seen = deliveries(runner, monkeypatch, {"j2": Superseded("job j2: delivery 1 may no longer write")})
    with pytest.raises(Reject) as caught:
        run(["j1", "/a.png"], ["j2", "/b.png"], ["j3", "/c.png"])
    assert caught.value.requeue is True  # type: ignore[attr-defined]  # (missing from celery-types)
    assert seen == ["j1", "j2"]


def test_a_failure_redis_cannot_record_sends_the_message_back_instead_of_stranding_the_rest(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = install_runner(store, monkeypatch, CountingClient())
    seen = deliveries(runner, monkeypatch, {})

    def down(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(runner, "fail", down)
    with pytest.raises(Reject) as caught:
        run(["j1", 42], ["j2", "/b.png"])  # j1's source is refused: its failure cannot be written
    assert caught.value.requeue is True  # type: ignore[attr-defined]  # (missing from celery-types)
    assert seen == []


def test_a_stopping_worker_sends_the_jobs_not_started_back(store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = install_runner(store, monkeypatch, CountingClient())
    seen: list[str] = []

    def deliver(job_id: str, *args: Any, **kwargs: Any) -> Outcome:
        seen.append(job_id)
        return Outcome({"job_id": job_id, "status": "succeeded"}, ended_here=True)

    monkeypatch.setattr(runner, "run_delivery", deliver)
    monkeypatch.setattr(bulk_module, "worker_stopping", lambda: True)
    with pytest.raises(Reject) as caught:
        run(["j1", "/a.png"], ["j2", "/b.png"])
    assert caught.value.requeue is True  # type: ignore[attr-defined]  # (missing from celery-types)
    assert seen == ["j1"]  # the running job is never cut short by the check


def test_on_rabbitmq_each_job_of_a_bulk_message_ends_failed_saying_why(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch, png: str
) -> None:
    client = CountingClient()
    install_runner(store, monkeypatch, client, WSUPLOAD_BROKER_URL="amqp://guest:guest@127.0.0.1:5672//")
    run(["j1", png], ["j2", png])
    for doc in store.get_many(["j1", "j2"]):
        assert doc is not None
        assert (doc["status"], doc["error"]["kind"]) == ("failed", "invalid_message")
        assert "run on the Redis broker only" in doc["error"]["message"]
    assert client.calls == 0


def test_a_message_that_cannot_run_ends_every_job_it_names(store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> None:
    install_runner(store, monkeypatch, CountingClient())
    run(["j1", "/a.png"], ["j1", "/b.png"])  # one job twice: the consumer moves such a message aside first
    doc = store.get("j1")
    assert doc is not None
    assert (doc["status"], doc["error"]["kind"]) == ("failed", "invalid_message")


def test_a_bulk_message_yields_its_thread_when_an_interactive_job_waits(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = install_runner(store, monkeypatch, CountingClient())
    settings = runner.settings
    seen = deliveries(runner, monkeypatch, {})
    monkeypatch.setattr(bulk_module, "_next_look", 0.0)
    store.redis.lpush(settings.queue, "an interactive job's message")
    bulk_module.upload_many.push_request(delivery_info={"routing_key": settings.bulk_queue})
    try:
        with pytest.raises(Reject) as caught:
            run(["j1", "/a.png"], ["j2", "/b.png"], ["j3", "/c.png"])
    finally:
        bulk_module.upload_many.pop_request()
    assert caught.value.requeue is True  # type: ignore[attr-defined]  # (missing from celery-types)
    assert seen == ["j1"]  # the first job always runs: every delivery makes progress


@pytest.mark.parametrize(
    ("routing_key", "waiting", "answer"), [("bulk", 1, True), ("bulk", 0, False), ("interactive", 1, False)]
)
def test_only_a_message_from_the_bulk_queue_looks_and_at_most_once_per_interval(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch, routing_key: str, waiting: int, answer: bool
) -> None:
    settings = install_runner(store, monkeypatch, CountingClient()).settings
    monkeypatch.setattr(bulk_module, "_next_look", 0.0)
    for _ in range(waiting):
        store.redis.lpush(settings.queue, "m")
    queue = settings.bulk_queue if routing_key == "bulk" else settings.queue
    request = SimpleNamespace(delivery_info={"routing_key": queue})
    assert bulk_module.interactive_waiting(settings, request) is answer
    assert bulk_module.interactive_waiting(settings, request) is False  # looked a moment ago


def queued(store: ResultStore, *job_ids: str) -> None:
    """The jobs' ``queued`` documents, as the producer writes them: the claim then writes each one's first attempt."""
    store.create(results.new_doc(job_id, "/a.png", results.utcnow()) for job_id in job_ids)


def fenced_calls(store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The fenced calls the message makes, in order: ``claim j``, ``save j``, ``save j then claim k``."""
    calls: list[str] = []
    fencing = store.fencing
    claim, save, save_then_claim = fencing.claim, fencing.save, fencing.save_then_claim

    def job_of(generation_key: str) -> str:
        return generation_key.removesuffix(":generation").rsplit(":", 1)[-1]

    def claimed(claim_keys: list[str], args: list[str | int]) -> Any:
        calls.append(f"claim {job_of(claim_keys[0])}")
        return claim(claim_keys, args)

    def saved(save_keys: list[str], args: list[str | int]) -> int:
        calls.append(f"save {job_of(save_keys[0])}")
        return save(save_keys, args)

    def both(save_keys: list[str], args: list[str | int], claim_keys: list[str], claim_args: list[str | int]) -> Any:
        calls.append(f"save {job_of(save_keys[0])} then claim {job_of(claim_keys[0])}")
        return save_then_claim(save_keys, args, claim_keys, claim_args)

    monkeypatch.setattr(fencing, "claim", claimed)
    monkeypatch.setattr(fencing, "save", saved)
    monkeypatch.setattr(fencing, "save_then_claim", both)
    return calls


def test_each_jobs_claim_rides_on_the_outcome_before_it(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch, png: str
) -> None:
    install_runner(store, monkeypatch, CountingClient())
    queued(store, "j1", "j2", "j3", "j4")
    calls = fenced_calls(store, monkeypatch)
    run(["j1", png], ["j2", png], ["j3", 42], ["j4", png])
    docs = store.get_many(["j1", "j2", "j3", "j4"])
    assert [d and (d["status"], d.get("generation")) for d in docs] == [
        ("succeeded", 1),
        ("succeeded", 1),
        ("failed", None),  # refused as it was read: its failure is written outside a delivery
        ("succeeded", 1),
    ]
    assert calls == ["claim j1", "save j1 then claim j2", "save j2", "save j3", "claim j4", "save j4"]


@pytest.mark.parametrize("why", ["stopping", "interactive"])
def test_a_message_that_hands_its_jobs_back_has_claimed_none_of_them(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch, png: str, why: str
) -> None:
    """Handing back is decided before the outcome is written, so the next job's claim is not made: no
    delivery of it is spent (a bulk message yielding again and again must not run its jobs out of deliveries)."""
    settings = install_runner(store, monkeypatch, CountingClient()).settings
    monkeypatch.setattr(bulk_module, "_next_look", 0.0)
    if why == "stopping":
        monkeypatch.setattr(bulk_module, "worker_stopping", lambda: True)
    else:
        store.redis.lpush(settings.queue, "an interactive job's message")
    queued(store, "j1", "j2")
    calls = fenced_calls(store, monkeypatch)
    bulk_module.upload_many.push_request(delivery_info={"routing_key": settings.bulk_queue})
    try:
        with pytest.raises(Reject):
            run(["j1", png], ["j2", png])
    finally:
        bulk_module.upload_many.pop_request()
    assert calls == ["claim j1", "save j1"]
    assert store.get("j1")["status"] == "succeeded"  # type: ignore[index]
    assert store.redis.get(keys.generation("j2")) is None
