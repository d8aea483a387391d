"""Deadlines: ``expires_in`` turned into ``deadline_at`` on Redis's clock, the option checked, and a
job met late (or at the attempt after a retry's wait) ending ``expired`` with no request."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from tests.unit.test_job import DATA, ScriptedClient, make_runner
from wsupload.errors import InvalidInput, ServerError
from wsupload.tasks import enqueue
from wsupload.tasks.store import results
from wsupload.tasks.store.results import ResultStore
from wsupload.tasks.wire.options import JobOptions
from wsupload.worker.dev.samples import png_bytes


def at(seconds_from_now: float) -> str:
    return results.isoformat(datetime.now(UTC) + timedelta(seconds=seconds_from_now))


@pytest.fixture
def png(tmp_path: Path) -> str:
    path = tmp_path / "ok.png"
    path.write_bytes(png_bytes())
    return str(path)


def test_the_deadline_is_redis_time_plus_expires_in() -> None:
    assert enqueue.deadline_at((1_700_000_000, 250_000), 2.5) == "2023-11-14T22:13:22.750Z"


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "2s", 10**10])
def test_expires_in_must_be_a_positive_number_of_seconds(bad: Any) -> None:
    with pytest.raises(InvalidInput, match="expires_in"):
        enqueue.check_expires_in(bad)


def test_the_option_round_trips_and_a_bad_one_is_refused() -> None:
    deadline = at(60)
    options = JobOptions.parse({"deadline_at": deadline})
    assert options.to_message() == {"deadline_at": deadline}
    assert not options.expired(time.time())
    assert options.expired(time.time() + 61)
    assert not JobOptions().expired(time.time())
    for bad in ("soon", 12, "2026-01-01T00:00:00"):
        with pytest.raises(InvalidInput, match="deadline_at"):
            JobOptions.parse({"deadline_at": bad})


def test_the_enqueued_document_carries_the_deadline(redis_client: fakeredis.FakeRedis, tmp_path: Path) -> None:
    source = tmp_path / "a.png"
    source.write_bytes(png_bytes())
    producer = enqueue.Enqueuer(_settings(), redis_client)
    [job] = producer.enqueue([str(source)], expires_in=30)
    doc = producer.store.get(job.job_id)
    assert doc is not None
    moment = datetime.fromisoformat(doc["deadline_at"])
    assert 25 < (moment - datetime.now(UTC)).total_seconds() <= 31
    assert doc["options"] == {"deadline_at": doc["deadline_at"]}
    assert doc["expires_at"] is None


def test_a_job_met_after_its_deadline_ends_expired_without_a_request(store: ResultStore, png: str) -> None:
    client = ScriptedClient(DATA)
    doc = make_runner(store, client, []).run("j", png, JobOptions(deadline_at=at(-1)))
    assert (doc["status"], doc["attempts"], client.calls) == (results.EXPIRED, 0, 0)
    assert doc["error"]["kind"] == "expired"
    assert store.get("j") == doc


def test_a_deadline_passing_during_a_retry_wait_ends_expired_at_the_next_attempt(store: ResultStore, png: str) -> None:
    client = ScriptedClient(ServerError("HTTP 503", 503), DATA)
    sleeps: list[float] = []

    def wait(seconds: float) -> None:  # the retry's wait outlasts the deadline
        sleeps.append(seconds)
        time.sleep(0.4)

    runner = make_runner(store, client, sleeps)
    runner.sleep = wait
    doc = runner.run("j", png, JobOptions(deadline_at=at(0.3)))
    assert (doc["status"], doc["attempts"], client.calls) == (results.EXPIRED, 1, 1)
    assert doc["last_error"]["kind"] == "server_error"
    assert len(sleeps) == 1


def test_a_job_within_its_deadline_runs(store: ResultStore, png: str) -> None:
    doc = make_runner(store, ScriptedClient(DATA), []).run("j", png, JobOptions(deadline_at=at(60)))
    assert doc["status"] == results.SUCCEEDED


def test_an_expired_job_counts_in_its_batch(store: ResultStore) -> None:
    store.redis.hset(results.batch_key("b"), mapping={"total": 1, "done": 0})
    doc = results.new_doc("j", "/x.png", results.utcnow(), batch_id="b")
    assert store.save(results.expired(doc, results.utcnow(), "late"))
    counters = store.redis.hgetall(results.batch_key("b"))
    assert (counters[b"done"], counters[b"expired"]) == (b"1", b"1")
    assert results.is_end(results.EXPIRED)


def _settings() -> Any:
    from wsupload.config import Settings

    return Settings.from_env({})


def test_an_expired_job_has_labels_of_its_own_in_the_metrics() -> None:
    from wsupload.tasks.observe import telemetry

    doc = results.expired(results.new_doc("j", "/x.png", results.utcnow()), results.utcnow(), "late")
    assert telemetry.outcome_of(doc) == ("expired", "expired")
