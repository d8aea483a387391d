"""The bulk task shell (``wsupload.upload_many``): its stop rules; one job's fate apart from the rest."""

from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import Reject

from tests.unit.conftest import install_runner
from wsupload.tasks import upload_many as bulk_module
from wsupload.tasks.fencing import Superseded
from wsupload.tasks.job import Outcome
from wsupload.tasks.lease import LeaseLost
from wsupload.tasks.results import ResultStore
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


def test_a_lost_lease_stops_the_message_and_a_job_held_elsewhere_is_skipped(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    runner = install_runner(store, monkeypatch, CountingClient())
    seen: list[str] = []
    fates: dict[str, Exception] = {"j2": Superseded("job j2: delivery 1 may no longer write"), "j3": LeaseLost("lost")}

    def deliver(job_id: str, *args: Any, **kwargs: Any) -> Outcome:
        seen.append(job_id)
        if job_id in fates:
            raise fates[job_id]
        return Outcome({"job_id": job_id, "status": "succeeded"}, ended_here=True)

    monkeypatch.setattr(runner, "run_delivery", deliver)
    run(["j1", "/a.png"], ["j2", "/b.png"], ["j3", "/c.png"], ["j4", "/d.png"])
    assert seen == ["j1", "j2", "j3"]  # j2 is another delivery's; after j3's lost lease nothing more is claimed
    assert "this message goes on with its next job" in caplog.text
    assert "lost; this delivery of message" in caplog.text


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
