"""Cancelling, the pure parts and the script with fakeredis (real Lua): the end-state rule,
the cancel script's outcomes, the fenced end it writes, and a job's lease told to stop."""

import json
import threading
import time
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from wsupload.config import Settings
from wsupload.errors import Cancelled, ConnectionFailed, Superseded, UploadError
from wsupload.tasks.job import JobRunner
from wsupload.tasks.recovery import lease
from wsupload.tasks.recovery.lease import JobLease, LeaseBook
from wsupload.tasks.sources.media import OpenedSource
from wsupload.tasks.store import cancels, keys, lua, results
from wsupload.tasks.store.results import ResultStore
from wsupload.tasks.wavespeed.rate_limit import FleetLimiter
from wsupload.worker.cancel_watch import CancelWatch
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.producer import Producer

NOW = results.utcnow()
DATA = {"type": "image", "download_url": "https://cdn/x.png", "filename": "ok.png", "size": 7}


def cancel(client: Any, job_ids: list[str], channel: str = keys.CANCEL_CHANNEL) -> list[cancels.CancelOutcome]:
    """What ``Producer.cancel`` does, on ``client``."""
    ids = cancels.unique(job_ids)
    script_keys, args = cancels.call(ids, 3600, NOW, time.time(), channel)
    reply = lua.script(client, cancels.SCRIPT)(keys=script_keys, args=args)
    return cancels.in_order(job_ids, cancels.outcomes(ids, reply, NOW))


def in_batch(store: ResultStore, *job_ids: str) -> None:
    store.redis.hset(keys.batch("b"), mapping={"total": len(job_ids), "done": 0})
    store.create([results.new_doc(job_id, f"/{job_id}.png", NOW, batch_id="b") for job_id in job_ids])


# The end-state rule


def test_only_queued_running_and_retrying_go_on_every_other_status_is_an_end() -> None:
    assert {"queued", "running", "retrying"} == results.ACTIVE
    assert not any(results.is_end(status) for status in results.ACTIVE)
    assert all(results.is_end(status) for status in ("succeeded", "failed", "cancelled", "expired", "archived"))


def test_a_stored_cancelled_or_expired_document_is_believed_and_an_end_without_its_error_is_not() -> None:
    cancelled = results.cancelled(results.new_doc("j", "/a.png", NOW), NOW)
    assert cancelled["error"] == {"kind": "cancelled", "http_status": None, "message": "cancelled by a producer",
                                  "retryable": False}  # fmt: skip
    assert results.coerce_doc(cancelled, "j", NOW)["status"] == "cancelled"
    expired = {**cancelled, "status": "expired", "error": {"kind": "expired", "message": "too old"}}
    assert results.coerce_doc(expired, "j", NOW)["status"] == "expired"
    assert results.coerce_doc({"status": "cancelled"}, "j", NOW)["status"] == "queued"
    assert results.coerce_doc({"status": "some-new-end"}, "j", NOW)["status"] == "queued"


def test_an_end_this_version_does_not_name_is_written_once_and_counted_under_its_name(store: ResultStore) -> None:
    in_batch(store, "j")
    doc = store.get("j")
    assert doc is not None
    ended = {**doc, "status": "expired", "error": {"kind": "expired", "message": "too old"}, "finished_at": "x"}
    assert store.save(ended)
    assert not store.save(ended), "an end is written once"
    counters = store.redis.hgetall(keys.batch("b"))
    assert (counters[b"done"], counters[b"expired"]) == (b"1", b"1")
    assert store.redis.get(keys.generation("j")) == b"done"


# The cancel script


def test_a_queued_job_ends_cancelled_at_once_with_everything_an_end_carries(store: ResultStore) -> None:
    in_batch(store, "a", "b")
    pubsub = store.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(keys.ENDED_CHANNEL, keys.EVENTS_CHANNEL, keys.CANCEL_CHANNEL)
    [outcome] = cancel(store.redis, ["a"])
    assert (outcome.job_id, outcome.outcome, outcome.status, outcome.cancelled) == ("a", "cancelled", "cancelled", True)
    doc = store.get("a")
    assert doc is not None
    assert outcome.doc == doc
    assert (doc["status"], doc["error"]["kind"], doc["error"]["retryable"], doc["result"]) == (
        "cancelled",
        "cancelled",
        False,
        None,
    )
    assert doc["finished_at"] == results.isoformat(NOW)
    assert (doc["source"], doc["batch_id"]) == ("/a.png", "b")  # the rest of the document is kept
    assert store.redis.get(keys.generation("a")) == b"done"
    assert store.redis.hgetall(keys.cancel("a")) == {b"at": results.isoformat(NOW).encode(), b"callback": b"1"}
    counters = store.redis.hgetall(keys.batch("b"))
    assert (counters[b"done"], counters[b"cancelled"], counters.get(b"finished_at")) == (b"1", b"1", None)
    minute = {
        results.text(field): results.text(n)
        for field, n in store.redis.hgetall(keys.stats(int(time.time()) // 60)).items()
    }
    assert [n for field, n in minute.items() if field.startswith("cancelled:")] == ["1"]
    heard: dict[str, Any] = {}
    deadline = time.monotonic() + 5
    while len(heard) < 3 and time.monotonic() < deadline:  # (a subscription's answer reads as None)
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            heard[message["channel"].decode()] = message["data"]
    assert json.loads(heard[keys.ENDED_CHANNEL]) == doc
    assert json.loads(heard[keys.EVENTS_CHANNEL]) == {"job_id": "a", "status": "cancelled"}
    assert heard[keys.CANCEL_CHANNEL] == b"a"


def test_the_last_member_cancelled_finishes_the_batch(store: ResultStore) -> None:
    in_batch(store, "a", "b")
    assert [o.outcome for o in cancel(store.redis, ["a", "b"])] == ["cancelled", "cancelled"]
    counters = store.redis.hgetall(keys.batch("b"))
    assert (counters[b"done"], counters[b"cancelled"]) == (b"2", b"2")
    assert counters[b"finished_at"] == results.isoformat(NOW).encode()


def test_a_finished_job_is_left_as_it_was_and_an_unknown_one_said_unknown(store: ResultStore) -> None:
    in_batch(store, "done", "failed")
    finished = results.succeeded(store.get("done"), DATA, NOW, 60)  # type: ignore[arg-type]
    store.save(finished)
    before = store.redis.get(keys.result("done"))
    outcomes = cancel(store.redis, ["done", "nobody", "done"])
    assert [(o.outcome, o.status) for o in outcomes] == [
        ("ended", "succeeded"),
        ("unknown", None),
        ("ended", "succeeded"),
    ]
    assert store.redis.get(keys.result("done")) == before
    assert not store.redis.exists(keys.cancel("done"))
    assert store.redis.hget(keys.batch("b"), "cancelled") is None


def test_a_job_cancelled_twice_says_so_the_second_time(store: ResultStore) -> None:
    store.create([results.new_doc("j", "/a.png", NOW)])
    assert cancel(store.redis, ["j"])[0].outcome == "cancelled"
    assert [(o.outcome, o.status) for o in cancel(store.redis, ["j"])] == [("ended", "cancelled")]


def test_a_running_job_cancelled_refuses_its_deliverys_later_writes(store: ResultStore) -> None:
    doc = results.new_doc("j", "/a.png", NOW, options={"callback_url": "https://x/cb"})
    store.create([doc])
    generation = store.claim("j").generation
    store.save(results.retrying(results.attempting(results.started(doc, NOW, generation, "w")),
                                ConnectionFailed("reset"), 30, NOW), generation)  # fmt: skip
    assert cancel(store.redis, ["j"])[0].outcome == "cancelled"
    stored = store.get("j")
    assert stored is not None
    assert "next_attempt_at" not in stored
    assert stored["options"] == {"callback_url": "https://x/cb"}
    with pytest.raises(Superseded, match="it has ended"):
        store.save(results.succeeded(stored, DATA, NOW, 60), generation)
    assert store.claim("j").ended
    assert store.get("j") == stored


def test_a_document_no_one_can_read_is_cancelled_whole(store: ResultStore) -> None:
    store.redis.set(keys.result("j"), "not json")
    assert cancel(store.redis, ["j"])[0].outcome == "cancelled"
    doc = store.get("j")
    assert doc is not None
    assert (doc["job_id"], doc["status"]) == ("j", "cancelled")


# The worker's side: a lease told to stop, the watch that tells it


def test_a_cancel_wakes_the_wait_and_cuts_what_was_registered() -> None:
    held = JobLease("j", "tag", grace=10)
    cut: list[str] = []
    held.abort_with(lambda: cut.append("cut"))
    threading.Timer(0.05, held.cancel).start()
    began = time.monotonic()
    with pytest.raises(Cancelled, match="cancelled by a producer"):
        held.sleep(30)
    assert time.monotonic() - began < 5
    assert cut == ["cut"]
    with pytest.raises(Cancelled):
        held.check()
    with pytest.raises(Cancelled):
        held.abort_with(lambda: None)  # nothing new starts once cancelled
    held.rearm("next", 10, None)  # a bulk message's next job: the cancel was the job's, not the message's
    held.check()
    assert not held.cancel("j"), "a cancel meant for the job before misses this one"
    held.check()
    assert held.cancel("next")


def test_the_watch_tells_running_jobs_whose_request_is_in_redis(redis_client: fakeredis.FakeRedis) -> None:
    book = LeaseBook()
    mine, other = JobLease("mine", "t1", grace=10), JobLease("other", "t2", grace=10)
    book.add(mine)
    book.add(other)
    redis_client.hset(keys.cancel("mine"), "at", "now")
    watch = CancelWatch(redis_client, interval=0.05, book=book)
    assert watch.check() == 1
    assert (mine.cancelled, other.cancelled) == (True, False)
    assert watch.check() == 0, "a job is told once"


def test_the_watch_tells_a_job_as_its_cancel_is_announced(redis_client: fakeredis.FakeRedis) -> None:
    book = LeaseBook()
    mine = JobLease("mine", "t1", grace=10)
    book.add(mine)
    watch = CancelWatch(redis_client, interval=0.05, book=book)
    watch.listen(0.01)  # subscribed
    redis_client.publish(keys.CANCEL_CHANNEL, "mine")
    assert watch.listen(0.2) == 1
    assert mine.cancelled
    watch.on_stop()


class CancelledMidBackoff:
    """Fails once with a transient error; the backoff that follows is cancelled by ``cancel``."""

    def __init__(self) -> None:
        self.calls = 0

    def upload(self, source: OpenedSource) -> dict[str, Any]:
        self.calls += 1
        raise ConnectionFailed("reset")


def test_a_job_cancelled_in_its_backoff_stops_and_writes_nothing_more(store: ResultStore, tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes())
    store.create([results.new_doc("j", str(path), NOW)])
    env = {
        "WAVESPEED_API_KEY": "sk-x",
        "WSUPLOAD_MAX_ATTEMPTS": "5",
        "WSUPLOAD_BACKOFF_BASE": "60",
        "WSUPLOAD_BACKOFF_MAX": "60",
    }
    settings = Settings.from_env(env)

    def backoff(seconds: float) -> None:
        cancel(store.redis, ["j"])  # the producer's write
        running = lease.current()
        assert running is not None
        threading.Timer(0.05, running.cancel).start()  # the watch, from its thread
        lease.sleep(seconds)

    client = CancelledMidBackoff()
    runner = JobRunner(settings=settings, store=store, client=client, sleep=backoff, rand=lambda: 1.0)
    began = time.monotonic()
    with pytest.raises(Cancelled):
        runner.run("j", str(path))
    assert time.monotonic() - began < 30, "the backoff was cut short"
    assert client.calls == 1
    doc = store.get("j")
    assert doc is not None
    assert doc["status"] == "cancelled"


def test_a_request_cut_by_a_cancel_is_the_cancel_not_a_connection_error(store: ResultStore, tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes())
    store.create([results.new_doc("j", str(path), NOW)])
    settings = Settings.from_env({"WAVESPEED_API_KEY": "sk-x"})
    slept: list[float] = []

    class CutMidRequest:
        def upload(self, source: OpenedSource) -> dict[str, Any]:
            running = lease.current()
            assert running is not None
            running.cancel()  # the socket was shut down under the request: it fails as a reset
            raise ConnectionFailed("connection reset by peer")

    runner = JobRunner(settings=settings, store=store, client=CutMidRequest(), sleep=slept.append)
    with pytest.raises(Cancelled):
        runner.run("j", str(path))
    assert slept == [], "no retry is scheduled for a cancelled job"
    doc = store.get("j")
    assert doc is not None
    assert doc["status"] == "running"


def test_cancelled_is_an_upload_error_with_its_own_kind() -> None:
    error = Cancelled("cancelled by a producer")
    assert isinstance(error, UploadError)
    assert not error.retryable
    assert error.to_doc()["kind"] == "cancelled"


class NoSlotFree(FleetLimiter):
    """The fleet is full: every ask is told to wait half a minute."""

    def try_acquire(self, token: str) -> float:
        return 30.0


def test_a_job_cancelled_while_it_waits_for_a_fleet_slot_stops_waiting(redis_client: fakeredis.FakeRedis) -> None:
    limiter = NoSlotFree(redis_client, max_concurrent=1)
    held = JobLease("j", "tag", grace=10)
    threading.Timer(0.05, held.cancel).start()
    began = time.monotonic()
    with lease.holding(held, LeaseBook()), pytest.raises(Cancelled), limiter.slot():
        pass
    assert time.monotonic() - began < 10, "the wait was cut short"


def test_the_producer_cancels_in_chunks_and_answers_per_name_in_order(
    redis_client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer = Producer(Settings.from_env({}), client=redis_client)
    jobs = producer.enqueue(["/srv/a.png", "/srv/b.png", "/srv/c.png"])
    monkeypatch.setattr(cancels, "CHUNK", 2)
    ids = [job.job_id for job in jobs]
    outcomes = producer.cancel([ids[2], "nobody", ids[0], ids[1], ids[2]])
    assert [(o.job_id, o.outcome) for o in outcomes] == [
        (ids[2], "cancelled"),
        ("nobody", "unknown"),
        (ids[0], "cancelled"),
        (ids[1], "cancelled"),
        (ids[2], "cancelled"),
    ]
    assert {doc["status"] for doc in producer.status(ids) if doc} == {"cancelled"}
    assert producer.wait(ids, timeout=1).timed_out is False
    assert producer.cancel([]) == []
