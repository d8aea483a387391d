"""The Celery task shell: argument checks, Redis loss, deliveries that must stop, Celery's view (called directly)."""

import logging
import pickle
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.exceptions import Reject

from tests.unit.conftest import install_runner
from wsupload.config import Settings
from wsupload.errors import JobFailed, LeaseLost, Rejected, Superseded, Unauthorized
from wsupload.tasks import runtime
from wsupload.tasks import upload as upload_module
from wsupload.tasks.job import JobRunner, Outcome
from wsupload.tasks.store.results import ResultStore
from wsupload.worker.dev.samples import png_bytes


class NoClient:
    def upload(self, source: Any) -> dict[str, Any]:
        raise AssertionError("no request may be sent")


@pytest.fixture
def runner(store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> JobRunner:
    return install_runner(store, monkeypatch, NoClient())


def failing(*args: Any, **kwargs: Any) -> JobFailed:
    """Run the task body; the ``JobFailed`` it raises for a job it ended ``failed``."""
    with pytest.raises(JobFailed) as caught:
        upload_module.upload.run(*args, **kwargs)
    return caught.value


def test_a_relative_source_fails_cleanly(runner: JobRunner, store: ResultStore) -> None:
    failing("j1", "relative.png")
    doc = store.get("j1")
    assert doc is not None
    assert (doc["status"], doc["error"]["kind"]) == ("failed", "invalid_input")


def test_a_non_string_source_fails_cleanly(runner: JobRunner, store: ResultStore) -> None:
    failing("j1", {"path": "/a.png"})
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
    failing(*args, **kwargs)
    doc = store.get("j1")
    assert doc is not None
    assert (doc["status"], doc["error"]["kind"]) == ("failed", "invalid_message")
    assert needle in doc["error"]["message"]


def test_keyword_arguments_are_read_like_positional_ones(runner: JobRunner, store: ResultStore) -> None:
    failing(job_id="j1", source="relative.png")
    doc = store.get("j1")
    assert doc is not None
    assert (doc["status"], doc["error"]["kind"]) == ("failed", "invalid_input")
    assert "not an absolute path" in doc["error"]["message"]


def test_a_partial_queued_document_still_ends(runner: JobRunner, store: ResultStore) -> None:
    # A producer in another language wrote only the status.
    store.redis.set("wsupload:result:j1", '{"status": "queued"}')
    failing("j1", "relative.png")
    doc = store.get("j1")
    assert doc is not None
    assert (doc["job_id"], doc["status"], doc["error"]["kind"]) == ("j1", "failed", "invalid_input")


def test_an_over_long_source_is_refused_and_not_stored_whole(runner: JobRunner, store: ResultStore) -> None:
    failing("j1", "/" + "a" * 10_000_000 + ".png")
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
        redis.ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist"),
        redis.ResponseError("NOREPLICAS Not enough good replicas to write."),
        redis.exceptions.BusyLoadingError("LOADING Redis is loading the dataset in memory"),
    ],
)
def test_losing_redis_hands_the_message_back(
    runner: JobRunner, monkeypatch: pytest.MonkeyPatch, error: redis.RedisError
) -> None:
    def down(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(runner, "run_delivery", down)
    with pytest.raises(Reject) as caught:
        upload_module.upload.run("j1", "/a.png")
    assert caught.value.requeue is True  # type: ignore[attr-defined]  # (missing from celery-types)


def test_a_refused_job_whose_failure_redis_cannot_record_is_handed_back_not_left_queued(
    runner: JobRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(runner, "fail", down)
    with pytest.raises(Reject) as caught:
        upload_module.upload.run("j1", 42)  # a source that is no string: the job ends failed, if Redis lets it
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

    monkeypatch.setattr(runner, "run_delivery", stopped)
    upload_module.upload.run("j1", "/a.png", {"callback_url": "https://hooks.test/done"})  # raises nothing
    assert store.get("j1") is None
    assert f"{stop}; this delivery stops" in caplog.text


def test_the_delivery_tag_and_worker_reach_the_runner(runner: JobRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def record(*args: Any, **kwargs: Any) -> Outcome:
        seen.update(kwargs)
        return Outcome({"job_id": "j1", "status": "succeeded"}, ended_here=True)

    monkeypatch.setattr(runner, "run_delivery", record)
    upload_module.upload.push_request(properties={"delivery_tag": "tag-1"}, hostname="w1@host")
    try:
        upload_module.upload.run("j1", "/a.png")
    finally:
        upload_module.upload.pop_request()
    assert (seen["tag"], seen["worker"]) == ("tag-1", "w1@host")


def test_an_internal_error_is_recorded(runner: JobRunner, store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(*args: Any, **kwargs: Any) -> None:
        raise KeyError("oops")

    monkeypatch.setattr(runner, "run_delivery", bug)
    raised = failing("j1", "/a.png")
    doc = store.get("j1")
    assert doc is not None
    assert (doc["error"]["kind"], doc["error"]["message"]) == ("internal_error", "internal error: KeyError: 'oops'")
    assert str(raised) == "internal_error: internal error: KeyError: 'oops'"


class Answering:
    """Answers every upload with one outcome: an error to raise, or the API's data."""

    def __init__(self, outcome: Exception | dict[str, Any]) -> None:
        self.outcome = outcome

    def upload(self, source: Any) -> dict[str, Any]:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


@pytest.fixture
def png(tmp_path: Path) -> str:
    path = tmp_path / "cat.png"
    path.write_bytes(png_bytes())
    return str(path)


def test_a_job_that_ends_failed_raises_job_failed_after_its_outcome_and_callback(
    runner: JobRunner, store: ResultStore, monkeypatch: pytest.MonkeyPatch, png: str
) -> None:
    runner.client = Answering(Unauthorized("HTTP 401: invalid API key", 401))
    statuses_at_callback: list[str] = []

    def queued(job_id: str, url: str, queue: str) -> None:
        doc = store.get(job_id)
        assert doc is not None
        statuses_at_callback.append(doc["status"])

    monkeypatch.setattr(upload_module, "send_callback", queued)
    raised = failing("j1", png, {"callback_url": "https://hooks.test/done"})
    assert statuses_at_callback == ["failed"]  # recorded, then the callback queued, then raised
    doc = store.get("j1")
    assert doc is not None
    assert str(raised) == f"unauthorized: {doc['error']['message']}" == "unauthorized: HTTP 401: invalid API key"
    assert (raised.job_id, raised.kind) == ("j1", "unauthorized")


def test_a_job_that_succeeds_raises_nothing(runner: JobRunner, store: ResultStore, png: str) -> None:
    runner.client = Answering({"type": "image", "download_url": "https://cdn.test/c.png", "filename": "c.png"})
    upload_module.upload.run("j1", png)
    doc = store.get("j1")
    assert doc is not None
    assert doc["status"] == "succeeded"


@pytest.mark.parametrize("refused_before_running", [True, False])
def test_a_delivery_of_a_job_that_had_already_failed_raises_nothing(
    runner: JobRunner, store: ResultStore, png: str, refused_before_running: bool
) -> None:
    runner.client = Answering(Rejected("HTTP 400: unsupported", 400))
    source = "relative.png" if refused_before_running else png
    failing("j1", source)  # the delivery that ended it
    ended = store.get("j1")
    upload_module.upload.run("j1", source)  # its message again (an ack lost): nothing new, nothing raised
    assert store.get("j1") == ended


def test_the_job_failed_text_never_holds_the_api_key(runner: JobRunner, png: str) -> None:
    key = runner.settings.api_key
    assert key is not None
    runner.client = Answering(Rejected(f"HTTP 400: you sent Bearer {key}", 400))
    raised = failing("j1", png)
    assert key not in str(raised)
    assert key not in repr(raised)
    assert str(raised) == "rejected: HTTP 400: you sent Bearer [redacted]"


def test_job_failed_survives_pickling_and_reads_as_the_error() -> None:
    error = JobFailed("j1", "too_large", "/m/a.mp4 is 400 bytes, over the limit of 300 bytes")
    again = pickle.loads(pickle.dumps(error))  # noqa: S301  (Celery pickles exceptions)
    assert (again.job_id, again.kind, str(again)) == ("j1", "too_large", str(error))
    assert repr(error) == "JobFailed('too_large: /m/a.mp4 is 400 bytes, over the limit of 300 bytes')"


def test_celery_records_a_failed_job_as_failure_logged_as_expected_without_traceback(
    runner: JobRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="celery.app.trace")
    result = upload_module.upload.apply(args=("j1", "relative.png"))  # Celery's own tracer, in this thread
    assert result.state == "FAILURE"
    assert isinstance(result.result, JobFailed)
    assert str(result.result).startswith("invalid_input: ")
    (record,) = [r for r in caplog.records if r.name == "celery.app.trace"]
    assert (record.levelno, record.exc_info) == (logging.INFO, None)
    assert "raised expected" in record.getMessage()


def test_celery_records_a_delivery_that_stops_as_success(runner: JobRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    def stopped(*args: Any, **kwargs: Any) -> None:
        raise LeaseLost("job j1: handed back")

    monkeypatch.setattr(runner, "run_delivery", stopped)
    assert upload_module.upload.apply(args=("j1", "/a.png")).state == "SUCCESS"


def test_celery_never_retries_the_upload_task_itself() -> None:
    task = upload_module.upload
    assert task.throws == (JobFailed,)
    assert task.acks_late is True
    assert not getattr(task, "autoretry_for", ())


@pytest.fixture
def amqp_runner(store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> JobRunner:
    """This process's runner, with RabbitMQ as the broker (no connection is made)."""
    settings = Settings.from_env({"WAVESPEED_API_KEY": "sk-task-shell-key", "WSUPLOAD_BROKER_URL": "amqp://g:p@h/v"})
    job = JobRunner(settings=settings, store=store, client=NoClient())
    here = runtime.Runtime(settings)
    here.store, here.runner = store, job
    monkeypatch.setattr(runtime, "current", lambda: here)
    return job


def test_a_delivery_handed_back_while_waiting_for_a_thread_returns_without_touching_redis(
    store: ResultStore, amqp_runner: JobRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsupload.tasks.recovery import early_acks

    starts = early_acks.Starts()
    monkeypatch.setattr(early_acks, "STARTS", starts)
    tag = early_acks.amqp_tag("j1", "task-1")
    assert starts.hand_back_if_waiting(tag)  # the worker rejected its message with requeue

    upload_module.upload.push_request(id="task-1", hostname="w1@host")
    try:
        upload_module.upload.run("j1", "relative.png")  # would fail the job if it ran
    finally:
        upload_module.upload.pop_request()
    assert store.redis.keys("*") == []
    assert starts.begin(tag)  # the skip used up the hand-back: the next delivery runs


def test_on_rabbitmq_losing_redis_waits_for_it_within_a_bound_then_hands_the_message_back_logging_once(
    store: ResultStore, amqp_runner: JobRunner, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from wsupload.tasks.recovery import early_acks, redis_wait

    job = amqp_runner
    settings = job.settings

    def down(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("connection refused")

    waits: list[dict[str, Any]] = []

    def wait(probe: Any, **kwargs: Any) -> bool:
        waits.append(kwargs)
        return False

    monkeypatch.setattr(job, "run_delivery", down)
    monkeypatch.setattr(redis_wait, "wait_for_writes", wait)
    with pytest.raises(Reject) as caught:
        upload_module.upload.run("j1", "/a.png")
    assert caught.value.requeue is True  # type: ignore[attr-defined]  # (missing from celery-types)
    # RabbitMQ would deliver it again at once: every worker looping on it, and a quorum queue's
    # delivery-limit dropping it. Held first, for at most 30 s (or half the early-ack point).
    (waited,) = waits
    assert waited["budget"] == redis_wait.wait_budget(early_acks.early_ack_after(settings.amqp_consumer_timeout)) == 30
    assert not waited["stopping"]()
    assert [r.levelname for r in caplog.records if "j1" in r.getMessage()] == ["ERROR"]
