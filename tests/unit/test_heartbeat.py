"""Writing a worker's heartbeat: the record's content, its TTL, Redis failures, the signal hookup."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.concurrency.solo import TaskPool as SoloPool
from celery.concurrency.thread import TaskPool as ThreadPool
from celery.worker import state as celery_state

from wsupload.config import Settings
from wsupload.tasks.store import keys
from wsupload.worker import background, heartbeat
from wsupload.worker.dev.local_services import wait_until
from wsupload.worker.heartbeat import Heartbeat, Running, pool_name, running
from wsupload.worker.worker_records import INDEX_HORIZON, RECORD_TTL, WorkerRecord, read_records

NOW = datetime(2026, 11, 24, 15, 0, 0, tzinfo=UTC)
IDENTITY = WorkerRecord(
    name="wsupload-7@web1",
    host="web1",
    pid=7,
    pool="threads",
    concurrency=32,
    version="0.1.0",
    queues=("wsupload", "wsupload.bulk"),
    started_at="2026-11-24T14:00:00.000Z",
)


@dataclass(eq=False)
class FakeRequest:
    """What the heartbeat reads of a Celery request."""

    id: str
    args: Any = field(default_factory=list)
    kwargs: Any = field(default_factory=dict)
    name: str = "wsupload.upload"


def test_running_names_each_upload_by_its_job_and_other_tasks_by_name() -> None:
    a = FakeRequest("task-a", ["job-a", "/m/a.png"])
    b = FakeRequest("task-b", [], {"job_id": "job-b", "source": "/m/b.png"})
    c = FakeRequest("job-c", [{"not": "an id"}])  # unreadable arguments: the task id, as the consumer does
    bad = FakeRequest("has space", [])  # no valid job id anywhere: not listed
    scan = FakeRequest("scan-1", [{}], name="wsupload.scan")
    queued = FakeRequest("task-d", ["job-d", "/m/d.png"])
    # Celery keeps reserved ⊇ active: a request is waiting only while it is not also active.
    found = running(active=[a, b, c, bad, scan], reserved=[a, b, c, bad, scan, queued])
    assert found == Running(jobs=("job-a", "job-b", "job-c"), waiting=("job-d",), other_tasks=("wsupload.scan",))
    assert running([], []) == Running()


def test_a_bulk_message_shows_the_job_its_lease_names_running_and_all_its_jobs_while_it_waits() -> None:
    running_bulk = FakeRequest("m1", [[["job-1", "/a"], ["job-2", "/b"]]], name="wsupload.upload_many")
    waiting_bulk = FakeRequest("m2", [[["job-3", "/c"], ["job-4", "/d"]]], name="wsupload.upload_many")
    single = FakeRequest("job-5", ["job-5", "/e"])
    found = running([running_bulk, single], [running_bulk, waiting_bulk, single], leased=["job-2", "job-5"])
    assert found == Running(jobs=("job-5", "job-2"), waiting=("job-3", "job-4"))


def test_celerys_state_is_read_from_the_worker_state_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    import weakref

    active: weakref.WeakSet[FakeRequest] = weakref.WeakSet()
    reserved: weakref.WeakSet[FakeRequest] = weakref.WeakSet()
    one, two = FakeRequest("t1", ["job-1"]), FakeRequest("t2", ["job-2"])
    active.add(one)
    reserved.update([one, two])
    monkeypatch.setattr(celery_state, "active_requests", active)
    monkeypatch.setattr(celery_state, "reserved_requests", reserved)
    assert heartbeat.worker_requests() == Running(jobs=("job-1",), waiting=("job-2",))


class Shifting:
    """A set another thread keeps changing: iterating it fails ``failures`` times."""

    def __init__(self, items: list[Any], failures: int) -> None:
        self.items, self.failures = items, failures

    def __iter__(self) -> Iterator[Any]:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("Set changed size during iteration")
        return iter(self.items)


def test_a_set_changing_under_the_reader_is_read_again_or_skipped_for_a_beat() -> None:
    assert heartbeat._copy(Shifting([1, 2], failures=2)) == [1, 2]
    assert heartbeat._copy(Shifting([1, 2], failures=99)) is None


def test_a_beat_keeps_the_last_known_jobs_when_celerys_state_cannot_be_read(redis_client: fakeredis.FakeRedis) -> None:
    answers: list[Running | None] = [Running(jobs=("job-a",)), None]
    beat = Heartbeat(redis_client, IDENTITY, read_running=lambda: answers.pop(0), clock=lambda: NOW)
    assert beat.record(NOW).jobs == ("job-a",)
    assert beat.record(NOW).jobs == ("job-a",)


def test_pool_name_is_celerys_alias() -> None:
    assert pool_name(PreforkPool) == "prefork"
    assert pool_name(ThreadPool) == "threads"
    assert pool_name(SoloPool) == "solo"
    assert pool_name("gevent") == "gevent"
    assert pool_name(FakeRequest) == "tests.unit.test_heartbeat:FakeRequest"


def test_a_beat_writes_the_whole_record_with_a_ttl_and_indexes_the_name(redis_client: fakeredis.FakeRedis) -> None:
    jobs = Running(jobs=("job-a",), waiting=("job-b",))
    beat = Heartbeat(redis_client, IDENTITY, read_running=lambda: jobs, clock=lambda: NOW)
    redis_client.zadd(keys.WORKERS, {"long-dead@h": NOW.timestamp() - INDEX_HORIZON - 1, "recent@h": NOW.timestamp()})
    assert beat.run_once()
    stored = json.loads(redis_client.get(keys.worker(IDENTITY.name)) or b"")
    assert stored == {
        "name": "wsupload-7@web1",
        "host": "web1",
        "pid": 7,
        "pool": "threads",
        "concurrency": 32,
        "version": "0.1.0",
        "queues": ["wsupload", "wsupload.bulk"],
        "state": "running",
        "jobs": ["job-a"],
        "waiting": ["job-b"],
        "other_tasks": [],
        "started_at": "2026-11-24T14:00:00.000Z",
        "last_beat": "2026-11-24T15:00:00.000Z",
        "beat_interval": 2.0,
    }
    assert list(stored) == [  # in the order earlier versions wrote them: the stored bytes do not change
        *("name", "host", "pid", "pool", "concurrency", "version", "queues", "state"),
        *("jobs", "waiting", "other_tasks", "started_at", "last_beat", "beat_interval"),
    ]
    assert 0 < redis_client.pttl(keys.worker(IDENTITY.name)) <= RECORD_TTL * 1000
    assert redis_client.zscore(keys.WORKERS, IDENTITY.name) == NOW.timestamp()
    # Names silent for longer than the horizon are pruned; recent ones (maybe live) are not.
    assert sorted(redis_client.zrange(keys.WORKERS, 0, -1)) == [b"recent@h", b"wsupload-7@web1"]
    assert [r.name for r in read_records(redis_client)] == [IDENTITY.name]


def test_the_record_says_stopping_once_shutdown_began(redis_client: fakeredis.FakeRedis) -> None:
    beat = Heartbeat(redis_client, IDENTITY, read_running=Running, clock=lambda: NOW)
    beat.stopping = True
    beat.run_once()
    (record,) = read_records(redis_client)
    assert record.state == "stopping"


def test_the_version_is_the_installed_packages() -> None:
    from importlib.metadata import version

    assert heartbeat.package_version() == version("wsupload")


def test_a_redis_outage_is_logged_once_and_the_next_beat_writes_again(caplog: pytest.LogCaptureFixture) -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    beat = Heartbeat(client, IDENTITY, read_running=Running, clock=lambda: NOW)
    caplog.set_level(logging.INFO, logger=heartbeat.__name__)
    server.connected = False
    assert [beat.run_once() for _ in range(5)] == [False] * 5
    server.connected = True
    assert beat.run_once()
    assert [(r.levelname, r.getMessage().split(" (")[0]) for r in caplog.records] == [
        ("WARNING", "heartbeat: cannot write this worker's record"),
        ("INFO", "heartbeat: writing this worker's record again"),
    ]
    assert "ConnectionError" in caplog.records[0].getMessage()
    assert "Traceback" not in caplog.text  # an expected outage: no traceback
    assert client.exists(keys.worker(IDENTITY.name))


def test_a_bug_while_reading_state_never_stops_the_beats(
    redis_client: fakeredis.FakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> Running:
        raise KeyError("surprise")

    beat = Heartbeat(redis_client, IDENTITY, read_running=broken, clock=lambda: NOW)
    assert not beat.run_once()
    assert not beat.run_once()
    assert len(caplog.records) == 1
    assert "KeyError: 'surprise'" in caplog.text
    assert "Traceback" in caplog.text  # unexpected: logged once, with its traceback


def test_the_thread_beats_until_stopped_then_the_record_is_deleted(redis_client: fakeredis.FakeRedis) -> None:
    beats: list[datetime] = []

    def clock() -> datetime:
        beats.append(NOW + timedelta(seconds=len(beats)))
        return beats[-1]

    beat = Heartbeat(redis_client, IDENTITY, read_running=Running, clock=clock, interval=0.01)
    beat.start()
    wait_until(lambda: len(beats) >= 3, 10, what="three beats")
    assert redis_client.exists(keys.worker(IDENTITY.name))
    beat.stop()
    assert beat._thread is not None
    assert not beat._thread.is_alive()
    assert not redis_client.exists(keys.worker(IDENTITY.name))
    assert redis_client.zscore(keys.WORKERS, IDENTITY.name) is None


def test_the_first_beat_comes_at_once_then_one_every_interval(redis_client: fakeredis.FakeRedis) -> None:
    waits = Heartbeat(redis_client, IDENTITY, read_running=Running, clock=lambda: NOW, interval=2.0).waits()
    assert [next(waits) for _ in range(3)] == [0.0, 2.0, 2.0]


def test_stop_with_redis_down_logs_and_leaves_the_record_to_expire(caplog: pytest.LogCaptureFixture) -> None:
    server = fakeredis.FakeServer()
    beat = Heartbeat(fakeredis.FakeRedis(server=server), IDENTITY, read_running=Running, clock=lambda: NOW)
    server.connected = False
    beat.stop()
    (logged,) = caplog.records
    assert logged.getMessage().startswith("heartbeat: could not delete this worker's record (ConnectionError")


# The hookup to Celery's worker signals.


def consumer(app: Any) -> Any:
    controller = SimpleNamespace(pool_cls=PreforkPool, concurrency=4)
    queues = SimpleNamespace(consume_from={"fast": 1, "bulk": 2})
    app.amqp = SimpleNamespace(queues=queues)
    return SimpleNamespace(app=app, controller=controller, hostname="wsupload-9@here")


def test_identity_comes_from_the_ready_worker() -> None:
    found = heartbeat.identity_of(consumer(SimpleNamespace()), NOW)
    assert (found.name, found.pool, found.concurrency, found.queues) == (
        "wsupload-9@here",
        "prefork",
        4,
        ("fast", "bulk"),
    )
    assert found.started_at == "2026-11-24T15:00:00.000Z"


def current() -> Heartbeat | None:
    return Heartbeat.running()


def test_the_signals_start_mark_and_stop_the_heartbeat(
    monkeypatch: pytest.MonkeyPatch, redis_client: fakeredis.FakeRedis
) -> None:
    monkeypatch.setattr(heartbeat, "connect", lambda url, timeout: redis_client)
    monkeypatch.delitem(background.RUNNING, Heartbeat, raising=False)
    Heartbeat._worker_ready(sender=consumer(SimpleNamespace()))  # not a wsupload app: left alone
    assert current() is None

    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"})
    Heartbeat._worker_ready(sender=consumer(SimpleNamespace(settings=settings)))
    key = keys.worker("wsupload-9@here")
    wait_until(lambda: redis_client.exists(key), 10, what="the first beat")
    started = current()
    assert started is not None
    Heartbeat._worker_shutting_down(sender="wsupload-9@here", sig="SIGTERM", how="Warm", exitcode=0)
    assert started.stopping
    Heartbeat._worker_shutdown(sender=None)
    assert current() is None
    assert not redis_client.exists(key)


def test_the_worker_app_loads_the_heartbeat() -> None:
    # worker/app.py names this module in create_app's include=, so every worker imports it.
    from wsupload.worker.app import create_app

    app = create_app(Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}))
    assert "wsupload.worker.heartbeat" in app.conf.include


def test_the_record_key_and_index_are_under_the_prefix() -> None:
    assert keys.worker("w@h") == "wsupload:worker:w@h"
    assert keys.WORKERS == "wsupload:workers"
