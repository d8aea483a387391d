"""wsupload's Celery result backend (states, meta, read-only), and ``link``/``link_error`` on the upload tasks."""

from __future__ import annotations

import json
import logging
import pickle
import threading
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
from celery import Celery, signature
from celery.app import backends
from celery.canvas import Signature
from celery.exceptions import ImproperlyConfigured
from kombu.exceptions import OperationalError

from tests.unit.conftest import install_runner
from wsupload import JobError, celery_backend
from wsupload.celery_backend import WsuploadBackend, celery_state, checked_url, task_meta
from wsupload.config import Settings
from wsupload.errors import LeaseLost, Superseded
from wsupload.tasks import upload as upload_module
from wsupload.tasks import upload_many as upload_many_module
from wsupload.tasks.job import JobRunner
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import ResultStore
from wsupload.worker.app import FOREIGN_QUEUE, create_app
from wsupload.worker.dev.local_services import free_port
from wsupload.worker.dev.samples import png_bytes

# The state mapping (pure)


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("queued", "PENDING"),
        ("running", "STARTED"),
        ("retrying", "RETRY"),
        ("succeeded", "SUCCESS"),
        ("failed", "FAILURE"),
        ("cancelled", "REVOKED"),
        ("expired", "REVOKED"),
        ("paused-for-good", "FAILURE"),  # an end this version does not know
    ],
)
def test_each_status_is_a_celery_state(status: str, state: str) -> None:
    assert celery_state(status) == state


def test_no_document_is_pending_as_celery_says_of_an_unknown_id() -> None:
    assert task_meta("j1", None) == {
        "task_id": "j1",
        "status": "PENDING",
        "result": None,
        "traceback": None,
        "children": [],
    }


def test_a_success_carries_the_result_dict() -> None:
    result = {"type": "image", "download_url": "https://cdn.test/a.png", "filename": "a.png", "size": 3}
    meta = task_meta("j1", {"job_id": "j1", "status": "succeeded", "result": result, "finished_at": "T"})
    assert (meta["status"], meta["result"], meta["date_done"]) == ("SUCCESS", result, "T")


@pytest.mark.parametrize(("status", "state"), [("failed", "FAILURE"), ("cancelled", "REVOKED")])
def test_an_end_without_success_carries_the_named_error(status: str, state: str) -> None:
    error = {"kind": status if status != "failed" else "invalid_input", "message": "no", "http_status": None}
    doc = {"job_id": "j1", "status": status, "error": error}
    meta = task_meta("j1", doc)
    assert meta["status"] == state
    raised = meta["result"]
    assert isinstance(raised, JobError)
    assert (raised.job_id, raised.status, raised.error, raised.doc) == ("j1", status, error, doc)
    assert str(raised) == f"job j1 {status} ({error['kind']}): no"


def test_an_end_without_an_error_object_is_named_by_its_status() -> None:
    raised = task_meta("j1", {"job_id": "j1", "status": "expired", "error": None})["result"]
    assert (raised.kind, raised.error) == ("expired", {"kind": "expired"})


def test_job_error_survives_pickling() -> None:
    error = JobError("j1", "failed", {"kind": "too_large", "message": "big"}, {"job_id": "j1"})
    again = pickle.loads(pickle.dumps(error))  # noqa: S301  (Celery pickles exceptions)
    assert (again.job_id, again.status, again.error, again.doc, str(again)) == (
        "j1",
        "failed",
        {"kind": "too_large", "message": "big"},
        {"job_id": "j1"},
        str(error),
    )


# The backend


def test_celery_finds_the_backend_by_its_entry_point_name_and_passes_the_redis_url() -> None:
    for url in ("redis://h:6379/0", "rediss://:pw@h:6380/2", "redis+sentinel://s1:26379/mymaster"):
        found: Any = backends.by_url(f"wsupload+{url}")  # (celery-types has it return the class alone)
        assert found == (WsuploadBackend, url)


@pytest.mark.parametrize("url", [None, "", "http://h/", "amqp://g:p@h//"])
def test_a_url_that_is_not_redis_is_refused_saying_how_to_spell_it(url: str | None) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"wsupload\+redis://host:6379/0"):
        checked_url(url)


@pytest.fixture
def app(redis_client: fakeredis.FakeRedis) -> Celery:
    made = Celery("client", broker="memory://", backend="wsupload+redis://:secret@h:6379/0", set_as_current=False)
    backend: Any = made.backend
    backend.client = redis_client
    return made


def test_the_backend_shows_its_url_without_the_password(app: Celery) -> None:
    assert app.backend.as_uri() == "wsupload+redis://:***@h:6379/0"


def doc_of(job_id: str, status: str, **fields: Any) -> dict[str, Any]:
    return {"job_id": job_id, "status": status, "result": None, "error": None, **fields}


def test_async_result_reads_the_document(app: Celery, redis_client: fakeredis.FakeRedis) -> None:
    redis_client.set(keys.result("j1"), json.dumps(doc_of("j1", "succeeded", result={"size": 3})))
    redis_client.set(keys.result("j2"), json.dumps(doc_of("j2", "failed", error={"kind": "rejected"})))
    redis_client.set(keys.result("j3"), json.dumps(doc_of("j3", "running")))
    assert app.AsyncResult("j1").get(timeout=1) == {"size": 3}
    with pytest.raises(JobError) as caught:
        app.AsyncResult("j2").get(timeout=1)
    assert caught.value.kind == "rejected"
    assert app.AsyncResult("j3").state == "STARTED"
    assert app.AsyncResult("nobody").state == "PENDING"


def test_a_document_that_cannot_be_read_is_pending_and_logged(
    app: Celery, redis_client: fakeredis.FakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.set(keys.result("j1"), b"{not json")
    assert app.AsyncResult("j1").state == "PENDING"
    assert "not a wsupload job document" in caplog.text


def test_get_is_woken_by_the_end_announced(
    app: Celery, redis_client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(celery_backend, "RECHECK_SECONDS", 3600.0)  # no re-read: only the announcement wakes it
    redis_client.set(keys.result("j1"), json.dumps(doc_of("j1", "running")))
    ended = doc_of("j1", "succeeded", result={"size": 3})
    subscribed = threading.Event()

    def end_it() -> None:
        subscribed.wait(10)
        redis_client.set(keys.result("j1"), json.dumps(ended))
        redis_client.publish(keys.ENDED_CHANNEL, json.dumps(doc_of("other", "failed")))
        redis_client.publish(keys.ENDED_CHANNEL, json.dumps(ended))

    thread = threading.Thread(target=end_it)
    thread.start()
    assert app.AsyncResult("j1").get(timeout=30, on_interval=subscribed.set) == {"size": 3}
    thread.join()


def test_celerys_writes_never_touch_a_job_document(app: Celery, redis_client: fakeredis.FakeRedis) -> None:
    stored = json.dumps(doc_of("j1", "running"))
    redis_client.set(keys.result("j1"), stored)
    backend = app.backend
    backend.store_result("j1", {"pid": 1}, "STARTED")
    backend.mark_as_done("j1", {"x": 1})
    backend.mark_as_failure("j1", ValueError("boom"))
    backend.mark_as_revoked("j1", "revoked")
    app.AsyncResult("j1").forget()
    assert redis_client.keys("*") == [keys.result("j1").encode()]
    assert redis_client.get(keys.result("j1")) == stored.encode()


def test_get_on_a_redis_never_reached_raises_at_once_instead_of_waiting_its_timeout() -> None:
    # Nothing tells a wrong URL from an outage before Redis has answered once: say so now.
    client = Celery("client", backend=f"wsupload+redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(redis.ConnectionError):
        client.AsyncResult("job-1").get(timeout=600)
    client.close()


def test_chords_are_refused(app: Celery) -> None:
    with pytest.raises(ImproperlyConfigured, match="chords"):
        app.backend.ensure_chords_allowed()


# Links on the worker's tasks


@pytest.fixture
def runner(store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> JobRunner:
    job = install_runner(store, monkeypatch, None)
    job.client = Answering({"type": "image", "download_url": "https://cdn.test/c.png", "filename": "c.png"})
    return job


class Answering:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def upload(self, source: Any) -> dict[str, Any]:
        return self.data


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    """Every signature Celery applies (a link), as (task name, arguments): nothing reaches a broker."""
    calls: list[tuple[str, tuple[Any, ...]]] = []

    def apply_async(self: Signature[Any], args: tuple[Any, ...] = (), *_: Any, **__: Any) -> None:
        calls.append((str(self.task), tuple(args)))

    monkeypatch.setattr(Signature, "apply_async", apply_async)
    return calls


@pytest.fixture
def png(tmp_path: Path) -> str:
    path = tmp_path / "cat.png"
    path.write_bytes(png_bytes())
    return str(path)


LINK = signature("client.on_done")


def test_the_delivery_that_writes_the_success_runs_the_link_with_the_result_dict(
    runner: JobRunner, store: ResultStore, png: str, sent: list[tuple[str, tuple[Any, ...]]]
) -> None:
    outcome = upload_module.upload.apply(args=("j1", png), task_id="j1", link=LINK)
    doc = store.get("j1")
    assert doc is not None
    assert outcome.state == "SUCCESS"
    assert sent == [("client.on_done", (doc["result"],))]


def test_a_second_delivery_of_an_ended_job_runs_no_link_and_is_ignored(
    runner: JobRunner, store: ResultStore, png: str, sent: list[tuple[str, tuple[Any, ...]]]
) -> None:
    upload_module.upload.apply(args=("j1", png), task_id="j1", link=LINK)
    again = upload_module.upload.apply(args=("j1", png), task_id="j1", link=LINK)
    assert str(again.state) == "IGNORED"
    assert len(sent) == 1


@pytest.mark.parametrize("stop", [LeaseLost("job j1: handed back"), Superseded("job j1: delivery 1 may no longer")])
def test_a_delivery_that_stops_runs_no_link(
    runner: JobRunner, monkeypatch: pytest.MonkeyPatch, sent: list[tuple[str, tuple[Any, ...]]], stop: Exception
) -> None:
    def stopped(*args: Any, **kwargs: Any) -> None:
        raise stop

    monkeypatch.setattr(runner, "run_delivery", stopped)
    assert str(upload_module.upload.apply(args=("j1", "/a.png"), task_id="j1", link=LINK).state) == "IGNORED"
    assert sent == []


def test_without_a_link_a_success_returns_nothing_as_before(runner: JobRunner, png: str) -> None:
    outcome = upload_module.upload.apply(args=("j1", png), task_id="j1")
    assert (outcome.state, outcome.result) == ("SUCCESS", None)


def test_a_failure_runs_no_link(runner: JobRunner, sent: list[tuple[str, tuple[Any, ...]]]) -> None:
    assert upload_module.upload.apply(args=("j1", "relative.png"), task_id="j1", link=LINK).state == "FAILURE"
    assert sent == []


def test_a_bulk_message_with_a_link_runs_it_never_and_says_so(
    runner: JobRunner,
    monkeypatch: pytest.MonkeyPatch,
    sent: list[tuple[str, tuple[Any, ...]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[Any] = []
    monkeypatch.setattr(upload_many_module, "run_message", lambda *args: ran.append(args))
    caplog.set_level(logging.WARNING)
    outcome = upload_many_module.upload_many.apply(args=([["j1", "/a.png"]],), link=LINK, link_error=LINK)
    assert (str(outcome.state), len(ran), sent) == ("IGNORED", 1, [])
    assert "links are per job and not run for bulk messages" in caplog.text


# Where the worker sends a client's links


def test_a_clients_signature_without_a_queue_goes_to_celerys_default_queue_never_wsuploads() -> None:
    settings = Settings.from_env({"WSUPLOAD_QUEUE": "uploads"})
    router = create_app(settings).amqp.router
    assert router.route({}, "client.on_done")["queue"].name == FOREIGN_QUEUE == "celery"
    assert router.route({"queue": "mine"}, "client.on_done")["queue"].name == "mine"
    assert router.route({}, "wsupload.callback")["queue"].name == "uploads"
    assert router.route({"queue": "uploads.bulk"}, "wsupload.scan")["queue"].name == "uploads.bulk"


def test_a_link_that_cannot_be_sent_is_logged_and_the_success_stays_a_success_without_errbacks(
    runner: JobRunner,
    store: ResultStore,
    png: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tried: list[str] = []

    def broker_away(self: Signature[Any], *_: Any, **__: Any) -> None:
        tried.append(str(self.task))
        if str(self.task) == "client.on_done":
            raise OperationalError("Error 111 connecting to the broker")

    monkeypatch.setattr(Signature, "apply_async", broker_away)
    caplog.set_level(logging.ERROR)
    outcome = upload_module.upload.apply(
        args=("j1", png), task_id="j1", link=[LINK, signature("client.also")], link_error=signature("client.on_error")
    )
    doc = store.get("j1")
    assert doc is not None
    assert (outcome.state, doc["status"]) == ("SUCCESS", "succeeded")
    assert tried == ["client.on_done", "client.also"]  # the other link still sent; no errback
    assert "job j1 succeeded, but its link client.on_done could not be sent (OperationalError: " in caplog.text
