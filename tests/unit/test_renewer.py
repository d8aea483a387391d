"""The worker's lease renewal and stop hand-back, with fakeredis and stand-ins for Celery's requests."""

import logging
import time
import weakref
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
import redis

from wsupload.config import Settings
from wsupload.tasks.recovery.lease import JobLease, LeaseBook
from wsupload.tasks.store import keys
from wsupload.worker import background, redis_transport, renewer
from wsupload.worker.renewer import Held, Renewer, held_messages, to_renew

INDEX = "unacked_index"


@dataclass
class Message:
    delivery_tag: str
    channel: Any = None


@dataclass
class Request:
    message: Message
    acknowledged: bool = False


@dataclass
class FakeQoS:
    restored: list[str] = field(default_factory=list)

    def restore_by_tag(self, tag: str, leftmost: bool = False) -> None:
        assert leftmost is False  # the front of the queue: next in line
        self.restored.append(tag)


@dataclass
class FakeChannel:
    qos: FakeQoS = field(default_factory=FakeQoS)
    unacked_index_key: str = INDEX


def test_held_messages_are_those_delivered_and_not_acknowledged(monkeypatch: pytest.MonkeyPatch) -> None:
    class Books:
        """kombu's QoS books: ``_delivered`` by tag, ``_dirty`` the tags acknowledged since."""

        def __init__(self) -> None:
            self._delivered = {"running": 1, "finished-ack-deferred": 2, "acked": 3}
            self._dirty = {"acked"}
            self.channel = FakeChannel()

    books = Books()
    monkeypatch.setattr(redis_transport, "_open", weakref.WeakSet([books]))
    held = held_messages()
    assert [h.tag for h in held] == ["running", "finished-ack-deferred"]
    assert all(h.channel is books.channel for h in held)


def test_waiting_messages_and_live_jobs_are_renewed_silent_jobs_are_not() -> None:
    book = LeaseBook()
    live, silent = JobLease("j1", "live", grace=10), JobLease("j2", "silent", grace=10)
    silent.alive_until = time.monotonic() - 1
    book.add(live)
    book.add(silent)
    held = [Held(tag, None) for tag in ("waiting", "live", "silent")]
    assert to_renew(held, book, time.monotonic()) == ["waiting", "live"]


def renewer_for(client: fakeredis.FakeRedis, book: LeaseBook, tags: list[str]) -> Renewer:
    channel = FakeChannel()
    return Renewer(client, interval=2.0, book=book, held=lambda: [Held(tag, channel) for tag in tags])


def test_renewal_moves_held_entries_forward_and_never_creates_one(
    redis_client: fakeredis.FakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.zadd(INDEX, {"live": 1.0, "other-worker": 1.0})
    book = LeaseBook()
    gone = JobLease("j-gone", "gone", grace=10)  # kombu restored it to the queue: another worker has it
    book.add(gone)
    book.add(JobLease("j-live", "live", grace=10))
    renewed = renewer_for(redis_client, book, ["live", "gone"]).renew()
    assert renewed == 1
    assert redis_client.zscore(INDEX, "live") > time.time() - 60  # type: ignore[operator]
    assert redis_client.zscore(INDEX, "other-worker") == 1.0
    assert redis_client.zscore(INDEX, "gone") is None
    assert gone.lost
    assert "job j-gone: its lease is gone from Redis" in caplog.text


def test_a_renewal_failure_is_logged_once_and_the_renewer_carries_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    renewer = renewer_for(client, LeaseBook(), ["t"])
    server.connected = False
    assert (renewer.renew(), renewer.renew()) == (0, 0)
    assert caplog.text.count("leases: cannot renew") == 1
    server.connected = True
    client.zadd(INDEX, {"t": 1.0})
    assert renewer.renew() == 1
    assert "leases: renewing again" in caplog.text


def test_on_stop_jobs_still_running_after_the_grace_are_handed_back(redis_client: fakeredis.FakeRedis) -> None:
    book = LeaseBook()
    running = JobLease("j1", "t1", grace=10)
    book.add(running)
    channel = FakeChannel()
    renewer = Renewer(redis_client, interval=2.0, book=book, held=lambda: [Held("t1", channel), Held("t2", channel)])
    assert renewer.hand_back(grace=0.01) == 1
    assert channel.qos.restored == ["t1"]  # the waiting message (t2) goes back with the channel, as kombu does
    assert running.handed_back


def test_on_stop_nothing_is_handed_back_when_the_jobs_end_within_the_grace(redis_client: fakeredis.FakeRedis) -> None:
    renewer = Renewer(redis_client, interval=2.0, book=LeaseBook(), held=lambda: [])
    assert renewer.hand_back(grace=5) == 0


def test_the_upload_slots_of_renewed_jobs_are_renewed_in_the_results_redis(redis_client: fakeredis.FakeRedis) -> None:
    results = fakeredis.FakeRedis()
    results.zadd(keys.RATE_ACTIVE, {"slot-live": 1, "slot-silent": 1, "slot-of-a-dead-worker": 1})
    redis_client.zadd(INDEX, {"live": 1.0, "silent": 1.0})
    book = LeaseBook()
    live, silent = JobLease("j1", "live", grace=10), JobLease("j2", "silent", grace=10)
    live.slot, silent.slot = "slot-live", "slot-silent"
    silent.alive_until = time.monotonic() - 1
    book.add(live)
    book.add(silent)
    channel = FakeChannel()
    renewer = Renewer(
        redis_client, 2.0, book=book, held=lambda: [Held("live", channel), Held("silent", channel)], slots=results
    )
    assert renewer.renew() == 1
    scores = dict(results.zrange(keys.RATE_ACTIVE, 0, -1, withscores=True))  # type: ignore[arg-type]
    assert scores[b"slot-live"] > time.time() * 1000  # expires a slot lease from now
    assert scores[b"slot-silent"] == scores[b"slot-of-a-dead-worker"] == 1  # left to expire


def test_on_stop_a_job_that_cannot_be_handed_back_runs_on(redis_client: fakeredis.FakeRedis) -> None:
    class RefusingQoS:
        def restore_by_tag(self, tag: str, leftmost: bool = False) -> None:
            raise redis.ConnectionError("Redis is away")

    book = LeaseBook()
    running = JobLease("j1", "t1", grace=10)
    book.add(running)
    channel = FakeChannel(qos=RefusingQoS())  # type: ignore[arg-type]
    renewer = Renewer(redis_client, interval=2.0, book=book, held=lambda: [Held("t1", channel)])
    assert renewer.hand_back(grace=0.01) == 0
    assert not running.handed_back  # it was not put back: stopping it would lose it


def test_rounds_come_at_a_fixed_rate_and_a_stall_brings_one_round_not_a_burst(
    monkeypatch: pytest.MonkeyPatch, redis_client: fakeredis.FakeRedis
) -> None:
    now = [100.0]
    monkeypatch.setattr(renewer, "time", SimpleNamespace(monotonic=lambda: now[0]))
    waits = Renewer(redis_client, interval=2.0, book=LeaseBook(), held=lambda: []).waits()
    assert next(waits) == 2.0
    now[0] = 102.5  # that round took half a second: the next one still comes at 104
    assert next(waits) == 1.5
    now[0] = 110.0  # a stall of six seconds: one round at once, then the rate again
    assert next(waits) == 0.0
    now[0] = 110.1
    assert next(waits) == pytest.approx(1.9)


def test_the_signals_start_the_renewer_hand_back_on_a_stop_signal_and_stop_it(
    monkeypatch: pytest.MonkeyPatch, redis_client: fakeredis.FakeRedis
) -> None:
    monkeypatch.setattr(renewer, "connect", lambda url, timeout: redis_client)
    monkeypatch.delitem(background.RUNNING, Renewer, raising=False)
    settings = Settings.from_env({"WSUPLOAD_LEASE": "30", "WSUPLOAD_STOP_GRACE": "7"})
    Renewer._worker_ready(sender=SimpleNamespace(app=SimpleNamespace()))  # not a wsupload app: left alone
    assert Renewer.running() is None

    Renewer._worker_ready(sender=SimpleNamespace(app=SimpleNamespace(settings=settings)))
    started = Renewer.running()
    assert started is not None
    assert (type(started), started.interval, started.stop_grace) == (Renewer, 10.0, 7.0)
    graces: list[float] = []
    monkeypatch.setattr(started, "on_stop_signal", graces.append)
    Renewer._worker_shutting_down(sig="SIGTERM", how="Warm", exitcode=0)
    assert graces == [7.0]
    assert started._thread is not None
    assert started._thread.is_alive()  # renewing through the stop grace, until the shutdown
    Renewer._worker_shutdown(sender=None)
    assert Renewer.running() is None
    assert not started._thread.is_alive()
