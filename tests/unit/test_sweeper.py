"""The worker's sweeper thread: started and stopped by the worker's signals, never stopped by a failing sweep."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest

from wsupload.config import Settings
from wsupload.tasks.recovery.lost_sweep import Sweep
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import ResultStore
from wsupload.worker import background, sweeper
from wsupload.worker.dev.local_services import wait_until
from wsupload.worker.sweeper import Sweeper


def sweep_on(client: fakeredis.FakeRedis, interval: float = 3.0) -> Sweep:
    return Sweep(client, ResultStore(client, 60), ("q", "q.bulk"), grace=6.0, interval=interval, owner="w1")


def test_a_failing_sweep_is_logged_once_per_streak(caplog: pytest.LogCaptureFixture) -> None:
    server = fakeredis.FakeServer()
    runner = Sweeper(sweep_on(fakeredis.FakeRedis(server=server)))
    caplog.set_level(logging.INFO, logger=sweeper.__name__)
    server.connected = False
    assert [runner.run_once() for _ in range(4)] == [False] * 4
    server.connected = True
    assert runner.run_once()
    assert [(r.levelname, r.getMessage().split(" (")[0]) for r in caplog.records] == [
        ("WARNING", "sweep: failed"),
        ("INFO", "sweep: sweeping again"),
    ]
    assert "Traceback" not in caplog.text  # an expected outage: no traceback


def test_a_bug_in_a_sweep_never_stops_the_sweeper(
    caplog: pytest.LogCaptureFixture, redis_client: fakeredis.FakeRedis
) -> None:
    sweep = sweep_on(redis_client)

    def broken() -> None:
        raise KeyError("surprise")

    sweep.sweep = broken  # type: ignore[method-assign]
    runner = Sweeper(sweep)
    assert not runner.run_once()
    assert not runner.run_once()
    assert len(caplog.records) == 1
    assert "Traceback" in caplog.text  # unexpected: logged once, with its traceback


def test_the_thread_sweeps_every_interval_until_stopped(redis_client: fakeredis.FakeRedis) -> None:
    runner = Sweeper(sweep_on(redis_client, interval=0.01))
    runner.start()
    wait_until(lambda: redis_client.exists(keys.sweep_lock("q")), 10, what="a sweep")
    runner.stop()
    thread = runner._thread
    assert thread is not None
    # stop() joins for two intervals (20 ms here); a loaded machine may need longer to end the round.
    wait_until(lambda: not thread.is_alive(), 10, what="the sweeper's thread to end")


def test_grace_and_interval_come_from_the_lease() -> None:
    settings = Settings.from_env({"WSUPLOAD_LEASE": "10"})
    assert (sweeper.grace_of(settings), sweeper.interval_of(settings)) == (10.0, 5.0)


def test_the_sweep_covers_both_queues_and_reads_documents_from_the_results_redis() -> None:
    settings = Settings.from_env({"WSUPLOAD_QUEUE": "fast", "WSUPLOAD_BULK_QUEUE": "slow"})
    sweep = sweeper.sweep_for(settings, "w1")
    assert sweep.queues == ("fast", "slow")
    assert sweep.store.redis is sweep.client  # one Redis unless a separate broker is set
    apart = Settings.from_env({"WSUPLOAD_BROKER_URL": "redis://127.0.0.1:1/1"})
    assert sweeper.sweep_for(apart, "w1").store.redis is not sweeper.sweep_for(apart, "w1").client


def current() -> Sweeper | None:
    return Sweeper.running()


def consumer(app: Any) -> Any:
    return SimpleNamespace(app=app, hostname="wsupload-9@here")


def test_the_signals_start_and_stop_the_sweeper(
    monkeypatch: pytest.MonkeyPatch, redis_client: fakeredis.FakeRedis
) -> None:
    monkeypatch.setattr(sweeper, "connect", lambda url, timeout: redis_client)
    monkeypatch.setattr(sweeper, "interval_of", lambda settings: 0.01)
    monkeypatch.delitem(background.RUNNING, Sweeper, raising=False)
    Sweeper._worker_ready(sender=consumer(SimpleNamespace()))  # not a wsupload app: left alone
    assert current() is None

    Sweeper._worker_ready(sender=consumer(SimpleNamespace(settings=Settings.from_env({}))))
    wait_until(lambda: redis_client.exists(keys.sweep_lock("wsupload")), 10, what="the first sweep")
    started = current()
    assert started is not None
    # Each queue's lock lasts one interval (10 ms here): seen taken by this worker at some sweep.
    owner = f"wsupload-9@here (pid {os.getpid()})".encode()
    wait_until(lambda: redis_client.get(keys.sweep_lock("wsupload.bulk")) == owner, 10, what="the bulk queue swept")
    Sweeper._worker_shutdown(sender=None)
    assert current() is None
    assert started._thread is not None
    assert not started._thread.is_alive()


def test_a_worker_loads_the_sweeper_with_its_modules() -> None:
    # A fresh interpreter: this test module imported the sweeper already.
    check = (
        "import sys\n"
        "from wsupload.config import Settings\n"
        "from wsupload.worker.app import create_app\n"
        "app = create_app(Settings.from_env({'REDIS_URL': 'redis://127.0.0.1:1/0'}))\n"
        "assert 'wsupload.worker.sweeper' not in sys.modules\n"
        "for name in app.conf.include: __import__(name)\n"
        "assert 'wsupload.worker.sweeper' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60)
