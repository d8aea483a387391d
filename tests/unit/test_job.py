"""The job runner with fakeredis and a scripted client: retries, budgets, outcomes."""

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from wsupload.config import Settings
from wsupload.errors import ConnectionFailed, RateLimited, Rejected, ServerError, UploadError
from wsupload.tasks.job import JobRunner, Uploader
from wsupload.tasks.sources.media import OpenedSource
from wsupload.tasks.store import results
from wsupload.tasks.store.dedup import dedup_key
from wsupload.tasks.store.results import ResultStore
from wsupload.tasks.wavespeed.multipart import MultipartBody
from wsupload.tasks.wavespeed.rate_limit import FleetLimiter
from wsupload.tasks.wire.options import JobOptions
from wsupload.worker.dev.samples import png_bytes

SECRET = "sk-job-secret"
DATA = {"type": "image", "download_url": "https://cdn/x.png", "filename": "ok.png", "size": 1}


class ScriptedClient:
    """Answers each upload with the next scripted outcome; records what it read."""

    def __init__(self, *outcomes: UploadError | dict[str, Any]) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0
        self.bytes_seen: list[bytes] = []

    def upload(self, source: OpenedSource) -> dict[str, Any]:
        self.calls += 1
        self.bytes_seen.append(source.open_stream().read())
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, UploadError):
            raise outcome
        return outcome


@pytest.fixture
def png(tmp_path: Path) -> str:
    path = tmp_path / "ok.png"
    path.write_bytes(png_bytes())
    return str(path)


class OpenLimiter(FleetLimiter):
    """Never makes anyone wait (time does not pass under a fake sleep); records pauses."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.pauses: list[float] = []

    def try_acquire(self, token: str) -> float:
        return 0.0

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)


def make_runner(store: ResultStore, client: Uploader, sleeps: list[float], **env: str) -> JobRunner:
    settings = Settings.from_env({"WAVESPEED_API_KEY": SECRET, "WSUPLOAD_MAX_ATTEMPTS": "3", **env})
    sleep: Callable[[float], None] = sleeps.append
    limiter = OpenLimiter(store.redis)
    return JobRunner(settings=settings, store=store, client=client, sleep=sleep, rand=lambda: 1.0, limiter=limiter)


def test_success_on_the_first_attempt(store: ResultStore, png: str) -> None:
    sleeps: list[float] = []
    client = ScriptedClient(DATA)
    doc = make_runner(store, client, sleeps).run("j", png)
    assert (doc["status"], doc["attempts"], doc["result"]) == ("succeeded", 1, {**DATA, "method": "upload"})
    assert store.get("j") == doc
    assert client.bytes_seen == [Path(png).read_bytes()]
    assert sleeps == []


def test_transient_errors_are_retried_with_backoff(store: ResultStore, png: str) -> None:
    sleeps: list[float] = []
    client = ScriptedClient(ServerError("HTTP 503", 503), ConnectionFailed("reset"), DATA)
    doc = make_runner(store, client, sleeps, WSUPLOAD_BACKOFF_BASE="1", WSUPLOAD_BACKOFF_MAX="30").run("j", png)
    assert (doc["status"], doc["attempts"], client.calls) == ("succeeded", 3, 3)
    assert sleeps == [1.0, 2.0]  # full jitter with rand=1: the exponential ceiling
    # Every attempt sent the whole file again from its first byte.
    assert len(set(client.bytes_seen)) == 1


def test_permanent_errors_are_sent_exactly_once(store: ResultStore, png: str) -> None:
    sleeps: list[float] = []
    client = ScriptedClient(Rejected("HTTP 400: bad format", 400))
    doc = make_runner(store, client, sleeps).run("j", png)
    assert client.calls == 1
    assert doc["error"] == {
        "kind": "rejected",
        "http_status": 400,
        "message": "HTTP 400: bad format",
        "retryable": False,
    }


def test_retries_exhausted_reports_the_last_status(store: ResultStore, png: str) -> None:
    sleeps: list[float] = []
    client = ScriptedClient(*[ServerError("HTTP 502: bad gateway", 502)] * 3)
    doc = make_runner(store, client, sleeps).run("j", png)
    assert client.calls == 3
    assert doc["error"]["kind"] == "retries_exhausted"
    assert doc["error"]["http_status"] == 502
    assert doc["error"]["retryable"] is True
    assert "gave up after 3 attempts" in doc["error"]["message"]
    assert "bad gateway" in doc["error"]["message"]


def test_retry_after_sets_the_wait_for_the_job_and_the_fleet(store: ResultStore, png: str) -> None:
    sleeps: list[float] = []
    client = ScriptedClient(RateLimited("HTTP 429", 429, 7.0), DATA)
    runner = make_runner(store, client, sleeps, WSUPLOAD_BACKOFF_MAX="1")
    runner.run("j", png)
    assert sleeps == [7.0]
    assert isinstance(runner.limiter, OpenLimiter)
    assert runner.limiter.pauses == [7.0]


def test_retrying_is_visible_while_backing_off(store: ResultStore, png: str) -> None:
    seen: list[dict[str, Any]] = []
    client = ScriptedClient(ServerError("HTTP 503", 503), DATA)
    runner = make_runner(store, client, [])
    runner.sleep = lambda _: seen.append(store.get("j") or {})
    runner.run("j", png)
    assert seen[0]["status"] == "retrying"
    assert seen[0]["last_error"]["kind"] == "server_error"


def test_a_wait_past_the_time_budget_stops_retrying(store: ResultStore, png: str) -> None:
    sleeps: list[float] = []
    client = ScriptedClient(RateLimited("HTTP 429", 429, 30.0), DATA)
    doc = make_runner(store, client, sleeps).run("j", png, time_budget=10)
    assert client.calls == 1
    assert sleeps == []
    assert doc["error"]["kind"] == "retries_exhausted"
    assert "time limit" in doc["error"]["message"]


def test_invalid_input_sends_nothing(store: ResultStore, tmp_path: Path) -> None:
    client = ScriptedClient()
    doc = make_runner(store, client, []).run("j", str(tmp_path / "missing.png"))
    assert client.calls == 0
    assert (doc["status"], doc["attempts"], doc["error"]["kind"]) == ("failed", 0, "invalid_input")


def test_a_finished_job_is_not_run_again(store: ResultStore, png: str) -> None:
    make_runner(store, ScriptedClient(DATA), []).run("j", png)
    again = ScriptedClient(DATA)
    doc = make_runner(store, again, []).run("j", png)
    assert again.calls == 0
    assert doc["status"] == "succeeded"


def test_attempts_carry_over_a_lost_worker(store: ResultStore, png: str) -> None:
    # Three attempts were already made by workers that died mid-upload.
    store.save({**results.new_doc("j", png, results.utcnow()), "status": "running", "attempts": 3})
    client = ScriptedClient(DATA)
    doc = make_runner(store, client, []).run("j", png)
    assert client.calls == 0
    assert doc["error"]["kind"] == "retries_exhausted"
    assert "no attempts left: 3 of 3" in doc["error"]["message"]


def test_remaining_attempts_after_a_lost_worker(store: ResultStore, png: str) -> None:
    store.save({**results.new_doc("j", png, results.utcnow()), "status": "running", "attempts": 2})
    client = ScriptedClient(ServerError("HTTP 503", 503), DATA)
    doc = make_runner(store, client, []).run("j", png)
    assert client.calls == 1
    assert doc["error"]["kind"] == "retries_exhausted"


def test_the_api_key_is_redacted_from_errors(store: ResultStore, png: str) -> None:
    client = ScriptedClient(Rejected(f"HTTP 400: header was Bearer {SECRET}", 400))
    doc = make_runner(store, client, []).run("j", png)
    assert SECRET not in doc["error"]["message"]
    assert "[redacted]" in doc["error"]["message"]


def test_fail_records_an_outside_failure_once(store: ResultStore, png: str) -> None:
    runner = make_runner(store, ScriptedClient(DATA), [])
    runner.run("j", png)
    runner.fail("j", png, Rejected("late", 400))
    assert store.get("j")["status"] == "succeeded"  # type: ignore[index]
    doc = runner.fail("k", png, Rejected("early", 400)).doc
    assert (doc["status"], doc["error"]["message"]) == ("failed", "early")


Change = Callable[[Path], None] | UploadError | None


def append(data: bytes) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        with path.open("ab") as out:
            out.write(data)

    return change


class ChangingClient:
    """Drains each attempt's real multipart body, as the HTTP client does; the scripted
    change for that attempt edits the file once part of the body is out."""

    def __init__(self, path: str, *changes: Change) -> None:
        self.path = Path(path)
        self.changes = list(changes)
        self.opened: list[OpenedSource] = []
        self.sent: list[bytes] = []

    def upload(self, source: OpenedSource) -> dict[str, Any]:
        self.opened.append(source)
        change = self.changes.pop(0) if self.changes else None
        if isinstance(change, UploadError):
            raise change
        body = MultipartBody.for_source(source, field="file")
        sent = [body.read(len(body) // 2)]
        if change is not None:
            change(self.path)
        while chunk := body.read(65536):
            sent.append(chunk)
        self.sent.append(b"".join(sent))
        return {**DATA, "size": source.size}


def test_a_file_changed_mid_upload_is_opened_again_and_sent_at_its_new_size(store: ResultStore, png: str) -> None:
    before = Path(png).read_bytes()
    client = ChangingClient(png, append(b"more bytes"))
    sleeps: list[float] = []
    doc = make_runner(store, client, sleeps).run("j", png)
    after = Path(png).read_bytes()
    assert (doc["status"], doc["attempts"]) == ("succeeded", 2)
    assert doc["result"]["size"] == len(after) == len(before) + 10
    assert doc["last_error"]["kind"] == "source_changed"
    assert [o.size for o in client.opened] == [len(before), len(after)]
    (completed,) = client.sent  # only the second attempt completed its body
    assert after in completed
    assert len(sleeps) == 1  # backed off once, under the usual policy
    with pytest.raises(ValueError, match="closed file"):
        client.opened[0].open_stream()  # the first opening was closed when the file was opened again


def test_a_file_that_keeps_changing_runs_out_of_attempts(store: ResultStore, png: str) -> None:
    client = ChangingClient(png, *[append(b"x")] * 3)
    doc = make_runner(store, client, []).run("j", png)
    assert (doc["status"], doc["attempts"], len(client.opened)) == ("failed", 3, 3)
    assert client.sent == []
    assert doc["error"]["kind"] == "retries_exhausted"
    assert doc["error"]["retryable"] is True
    assert "gave up after 3 attempts: the file kept changing while it was uploaded" in doc["error"]["message"]


def test_changes_and_other_transient_errors_share_one_budget(store: ResultStore, png: str) -> None:
    client = ChangingClient(png, ServerError("HTTP 503", 503), append(b"x"), ServerError("HTTP 502", 502))
    doc = make_runner(store, client, []).run("j", png)
    assert (doc["attempts"], len(client.opened), doc["error"]["kind"]) == (3, 3, "retries_exhausted")
    assert "gave up after 3 attempts; last error: HTTP 502" in doc["error"]["message"]
    # A change that is followed by a success within the budget succeeds.
    client = ChangingClient(png, ServerError("HTTP 503", 503), append(b"y"))
    doc = make_runner(store, client, []).run("k", png)
    assert (doc["status"], doc["attempts"], doc["result"]["size"]) == ("succeeded", 3, Path(png).stat().st_size)


def test_the_new_content_is_validated_again(store: ResultStore, png: str) -> None:
    limit = Path(png).stat().st_size + 100
    client = ChangingClient(png, append(b"z" * 1000))
    doc = make_runner(store, client, [], WSUPLOAD_MAX_BYTES=str(limit)).run("j", png)
    assert (doc["status"], doc["attempts"], len(client.opened)) == ("failed", 1, 1)
    assert doc["error"]["kind"] == "too_large"


def test_a_change_during_the_next_attempts_wait_is_caught_too(store: ResultStore, png: str) -> None:
    client = ChangingClient(png, ServerError("HTTP 503", 503))
    runner = make_runner(store, client, [])
    writes = [append(b"written while backing off")]

    def sleep(seconds: float) -> None:
        if writes:
            writes.pop()(Path(png))

    runner.sleep = sleep
    doc = runner.run("j", png)
    # Attempt 2 (same opening) finds the change at its end; attempt 3 sends the file as it is now.
    assert (doc["status"], doc["attempts"], doc["result"]["size"]) == ("succeeded", 3, Path(png).stat().st_size)
    assert [o.size for o in client.opened][-1] == Path(png).stat().st_size


def test_dedup_remembers_the_content_that_was_sent(store: ResultStore, png: str) -> None:
    old_digest = hashlib.sha256(Path(png).read_bytes()).hexdigest()
    client = ChangingClient(png, append(b"new"))
    doc = make_runner(store, client, []).run("j", png, JobOptions(dedup=True))
    assert doc["status"] == "succeeded"
    new_digest = hashlib.sha256(Path(png).read_bytes()).hexdigest()
    assert store.redis.exists(dedup_key(new_digest))
    assert not store.redis.exists(dedup_key(old_digest))
