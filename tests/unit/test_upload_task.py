"""The Celery task shell: argument checks, Redis loss, deliveries that must stop (called directly)."""

from typing import Any

import pytest
import redis
from celery.exceptions import Reject

from wsupload.config import Settings
from wsupload.tasks import runtime
from wsupload.tasks import upload as upload_module
from wsupload.tasks.fencing import Superseded
from wsupload.tasks.job import JobRunner
from wsupload.tasks.lease import LeaseLost
from wsupload.tasks.results import ResultStore


class NoClient:
    def upload(self, source: Any) -> dict[str, Any]:
        raise AssertionError("no request may be sent")


@pytest.fixture
def runner(store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> JobRunner:
    settings = Settings.from_env({"WAVESPEED_API_KEY": "sk-task-shell-key"})
    job = JobRunner(settings=settings, store=store, client=NoClient())
    here = runtime.Runtime(settings)
    here.store, here.runner = store, job  # what the cached properties would build, made here
    monkeypatch.setattr(runtime, "current", lambda: here)
    return job


def test_a_relative_source_fails_cleanly(runner: JobRunner, store: ResultStore) -> None:
    upload_module.upload.run("j1", "relative.png")
    doc = store.get("j1")
    assert doc is not None
    assert (doc["status"], doc["error"]["kind"]) == ("failed", "invalid_input")


def test_a_non_string_source_fails_cleanly(runner: JobRunner, store: ResultStore) -> None:
    upload_module.upload.run("j1", {"path": "/a.png"})
    doc = store.get("j1")
    assert doc is not None
    assert "must be a string, got dict" in doc["error"]["message"]


def test_a_message_without_job_id_is_logged_not_stored(
    runner: JobRunner, store: ResultStore, caplog: pytest.LogCaptureFixture
) -> None:
    upload_module.upload.run(None, "/a.png")
    assert store.redis.keys("*") == []
    assert "names no job" in caplog.text


@pytest.mark.parametrize(
    ("args", "kwargs", "needle"),
    [
        (["j1"], {}, "no source"),
        (["j1", "/a.png"], {"option": {"dedup": True}}, "unknown keyword arguments"),
        (["j1", "/a.png", None, "extra"], {}, "too many args"),
        (["j1"], {"source": "/a.png", "job_id": "j1"}, "given both in args and kwargs"),
    ],
)
def test_arguments_that_do_not_fit_end_the_job_invalid_message(
    runner: JobRunner, store: ResultStore, args: list[Any], kwargs: dict[str, Any], needle: str
) -> None:
    # Python would raise TypeError before the body ran, leaving the job queued for good.
    upload_module.upload.run(*args, **kwargs)
    doc = store.get("j1")
    assert doc is not None
    assert (doc["status"], doc["error"]["kind"]) == ("failed", "invalid_message")
    assert needle in doc["error"]["message"]


def test_keyword_arguments_are_read_like_positional_ones(runner: JobRunner, store: ResultStore) -> None:
    upload_module.upload.run(job_id="j1", source="relative.png")
    doc = store.get("j1")
    assert doc is not None
    assert (doc["status"], doc["error"]["kind"]) == ("failed", "invalid_input")
    assert "not an absolute path" in doc["error"]["message"]


def test_a_partial_queued_document_still_ends(runner: JobRunner, store: ResultStore) -> None:
    # A producer in another language wrote only the status.
    store.redis.set("wsupload:result:j1", '{"status": "queued"}')
    upload_module.upload.run("j1", "relative.png")
    doc = store.get("j1")
    assert doc is not None
    assert (doc["job_id"], doc["status"], doc["error"]["kind"]) == ("j1", "failed", "invalid_input")


def test_an_over_long_source_is_refused_and_not_stored_whole(runner: JobRunner, store: ResultStore) -> None:
    upload_module.upload.run("j1", "/" + "a" * 10_000_000 + ".png")
    raw = store.redis.get("wsupload:result:j1")
    assert raw is not None
    assert len(raw) < 2_000
    doc = store.get("j1")
    assert doc is not None
    assert doc["error"]["kind"] == "invalid_input"
    assert "10000005 characters long, over the limit of 4096" in doc["error"]["message"]


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("connection refused"),
        redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
    ],
)
def test_losing_redis_hands_the_message_back(
    runner: JobRunner, monkeypatch: pytest.MonkeyPatch, error: redis.RedisError
) -> None:
    def down(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(runner, "run", down)
    with pytest.raises(Reject) as caught:
        upload_module.upload.run("j1", "/a.png")
    assert caught.value.requeue is True  # type: ignore[attr-defined]  # (missing from celery-types)


STOPS = [LeaseLost("job j1: handed back"), Superseded("job j1: delivery 1 may no longer write")]


@pytest.mark.parametrize("stop", STOPS)
def test_a_delivery_that_may_no_longer_act_writes_nothing(
    runner: JobRunner,
    store: ResultStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    stop: Exception,
) -> None:
    def stopped(*args: Any, **kwargs: Any) -> None:
        raise stop

    monkeypatch.setattr(runner, "run", stopped)
    upload_module.upload.run("j1", "/a.png", {"callback_url": "https://hooks.test/done"})
    assert store.get("j1") is None
    assert f"{stop}; this delivery stops" in caplog.text


def test_the_delivery_tag_and_worker_reach_the_runner(runner: JobRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(runner, "run", lambda *args, **kwargs: seen.update(kwargs))
    upload_module.upload.push_request(properties={"delivery_tag": "tag-1"}, hostname="w1@host")
    try:
        upload_module.upload.run("j1", "/a.png")
    finally:
        upload_module.upload.pop_request()
    assert (seen["tag"], seen["worker"]) == ("tag-1", "w1@host")


def test_an_internal_error_is_recorded(runner: JobRunner, store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(*args: Any, **kwargs: Any) -> None:
        raise KeyError("oops")

    monkeypatch.setattr(runner, "run", bug)
    upload_module.upload.run("j1", "/a.png")
    doc = store.get("j1")
    assert doc is not None
    assert (doc["error"]["kind"], doc["error"]["message"]) == ("internal_error", "internal error: KeyError: 'oops'")
