"""Result documents: shape, transitions, storage with TTL, and change events."""

import json
from datetime import UTC, datetime, timedelta

import fakeredis

from wsupload.errors import RateLimited, Rejected
from wsupload.tasks.store import results
from wsupload.tasks.store.results import ResultStore

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
FIELDS = {
    "job_id",
    "status",
    "source",
    "attempts",
    "result",
    "error",
    "created_at",
    "started_at",
    "finished_at",
    "expires_at",
}


def test_a_new_document_is_queued_with_every_field() -> None:
    doc = results.new_doc("j1", "/m/a.png", NOW)
    assert set(doc) == FIELDS
    assert (doc["status"], doc["attempts"], doc["created_at"]) == ("queued", 0, "2026-11-24T12:00:00.000Z")


def test_a_new_document_keeps_the_jobs_options_when_it_has_some() -> None:
    # The sweep (tasks.recovery.lost_sweep) builds a lost job's message again from its document.
    assert results.new_doc("j1", "/m/a.png", NOW, options={"dedup": True})["options"] == {"dedup": True}
    assert "options" not in results.new_doc("j1", "/m/a.png", NOW, options={})


def test_stored_options_are_kept_only_as_an_object() -> None:
    kept = results.coerce_doc({"options": {"callback_url": "https://x/y"}}, "j1", NOW)
    assert kept["options"] == {"callback_url": "https://x/y"}
    assert "options" not in results.coerce_doc({"options": "dedup"}, "j1", NOW)


def test_transitions_to_success() -> None:
    doc = results.started(results.new_doc("j1", "/m/a.png", NOW), NOW)
    doc = results.attempting(doc)
    doc = results.retrying(doc, RateLimited("slow", 429, 2.0), 2.0, NOW)
    assert (doc["status"], doc["last_error"]["kind"], doc["next_attempt_at"]) == (
        "retrying",
        "rate_limited",
        "2026-11-24T12:00:02.000Z",
    )
    doc = results.attempting(doc)
    assert "next_attempt_at" not in doc
    later = NOW + timedelta(seconds=5)
    done = results.succeeded(doc, {"download_url": "u"}, later, retention=7 * 86400)
    assert (done["status"], done["attempts"], done["error"]) == ("succeeded", 2, None)
    assert done["started_at"] == "2026-11-24T12:00:00.000Z"
    assert done["finished_at"] == "2026-11-24T12:00:05.000Z"
    assert done["expires_at"] == "2026-12-01T12:00:05.000Z"


def test_failure_carries_the_error() -> None:
    doc = results.failed(results.new_doc("j1", "s", NOW), Rejected("HTTP 400: bad", 400), NOW)
    assert doc["error"] == {"kind": "rejected", "http_status": 400, "message": "HTTP 400: bad", "retryable": False}
    assert doc["status"] == "failed"
    assert doc["expires_at"] is None


def test_store_writes_with_ttl_and_publishes_changes(redis_client: fakeredis.FakeRedis, store: ResultStore) -> None:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(results.EVENTS_CHANNEL)
    store.create([results.new_doc("a", "s", NOW), results.new_doc("b", "s", NOW)])
    assert 0 < redis_client.ttl("wsupload:result:a") <= 3600
    store.save(results.started(results.new_doc("a", "s", NOW), NOW))
    message = None
    for _ in range(10):  # the first read may be the (ignored) subscribe confirmation
        message = message or pubsub.get_message(timeout=0.1)
    assert message is not None
    assert json.loads(message["data"]) == {"job_id": "a", "status": "running"}
    assert [d["status"] if d else None for d in store.get_many(["a", "b", "zz"])] == ["running", "queued", None]


def test_only_a_final_document_goes_to_the_ended_channel(redis_client: fakeredis.FakeRedis, store: ResultStore) -> None:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(results.ENDED_CHANNEL)
    running = results.started(results.new_doc("a", "s", NOW), NOW)
    store.save(running)
    final = results.failed(running, Rejected("HTTP 400: bad", 400), NOW)
    store.save(final)
    received = [m for _ in range(10) if (m := pubsub.get_message(timeout=0.05))]
    assert [json.loads(m["data"]) for m in received] == [final]
