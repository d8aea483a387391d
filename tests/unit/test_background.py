"""The worker's background loop: it ticks until stopped, logs a failing streak twice, follows the worker's signals."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from wsupload.config import Settings
from wsupload.worker import background
from wsupload.worker.background import BackgroundLoop
from wsupload.worker.dev.local_services import wait_until

log = logging.getLogger(__name__)


class Loop(BackgroundLoop):
    """Counts its rounds and hooks; each round runs ``step`` (raising makes it a failed round)."""

    name = "test-loop"
    logger = log
    failing = "test-loop: failed (%s: %s); trying again every %g s"
    recovered = "test-loop: working again"
    not_started = "test-loop: not started; the worker runs without it"

    def __init__(self, interval: float | None = 0.01, step: Callable[[], object] = lambda: None) -> None:
        super().__init__(interval)
        self.step = step
        self.ticks = 0
        self.events: list[str] = []

    def tick(self) -> object:
        self.ticks += 1
        return self.step()

    def on_start(self) -> None:
        self.events.append("start")

    def on_stopping(self) -> None:
        self.events.append("stopping")

    def on_stop(self) -> None:
        self.events.append("stop")

    @classmethod
    def for_worker(cls, consumer: Any, settings: Settings) -> Loop | None:
        return cls()


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage().split(" (")[0]) for r in caplog.records if r.name == log.name]


def test_the_thread_ticks_every_interval_until_stopped() -> None:
    loop = Loop()
    loop.start()
    wait_until(lambda: loop.ticks >= 3, 10, what="three rounds")
    loop.stop()
    assert loop._thread is not None
    assert loop._thread.name == "wsupload-test-loop"
    assert loop._thread.daemon
    assert not loop._thread.is_alive()
    assert loop.events == ["start", "stop"]


def test_a_failing_streak_is_logged_when_it_starts_and_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    failures = [redis.ConnectionError("Redis is away")] * 4

    def step() -> None:
        if failures:
            raise failures.pop()

    loop = Loop(interval=2.5, step=step)
    assert [loop.run_once() for _ in range(4)] == [False] * 4
    assert loop.run_once()
    assert loop.run_once()
    assert lines(caplog) == [("WARNING", "test-loop: failed"), ("INFO", "test-loop: working again")]
    expected = "test-loop: failed (ConnectionError: Redis is away); trying again every 2.5 s"
    assert caplog.records[0].getMessage() == expected
    assert "Traceback" not in caplog.text  # an expected outage: no traceback


def test_an_unexpected_error_is_logged_once_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    def step() -> None:
        raise KeyError("surprise")

    loop = Loop(step=step)
    assert not loop.run_once()
    assert not loop.run_once()
    assert lines(caplog) == [("WARNING", "test-loop: failed")]
    assert "KeyError: 'surprise'" in caplog.text
    assert "Traceback" in caplog.text


def test_the_thread_outlives_failing_rounds_and_says_when_they_recover(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    broken = threading.Event()
    broken.set()

    def step() -> None:
        if broken.is_set():
            raise OSError("no route to host")

    loop = Loop(step=step)
    loop.start()
    try:
        wait_until(lambda: loop.ticks >= 3, 10, what="three failed rounds")
        broken.clear()
        wait_until(lambda: ("INFO", "test-loop: working again") in lines(caplog), 10, what="the recovery line")
    finally:
        loop.stop()
    assert lines(caplog) == [("WARNING", "test-loop: failed"), ("INFO", "test-loop: working again")]


def test_attempt_gives_the_steps_result_or_the_fallback() -> None:
    loop = Loop()
    assert loop.attempt(lambda: 7, 0) == 7

    def broken() -> int:
        raise redis.TimeoutError("slow")

    assert loop.attempt(broken, 0) == 0


def test_stop_gives_a_round_in_flight_two_intervals_then_returns() -> None:
    entered, release = threading.Event(), threading.Event()

    def stuck() -> None:
        entered.set()
        release.wait(60)

    loop = Loop(interval=0.05, step=stuck)
    loop.start()
    try:
        wait_until(entered.is_set, 10, what="a round in flight")
        loop.stop()  # returns: it does not wait for the round past its bound
        assert loop._thread is not None
        assert loop._thread.is_alive()  # still in its round
        assert loop.events == ["start", "stop"]
    finally:
        release.set()
    wait_until(lambda: loop._thread is not None and not loop._thread.is_alive(), 10, what="the thread to end")
    assert loop.ticks == 1  # stopped: no round after the one in flight


def test_the_default_schedule_waits_an_interval_before_each_round() -> None:
    waits = Loop(interval=3.0).waits()
    assert [next(waits) for _ in range(3)] == [3.0, 3.0, 3.0]


def test_without_an_interval_there_is_no_thread_only_the_hooks() -> None:
    loop = Loop(interval=None)
    assert list(loop.waits()) == []
    loop.start()
    assert loop._thread is None
    loop.stop()
    assert loop.events == ["start", "stop"]
    assert loop.ticks == 0


# Following a worker's signals.


@pytest.fixture
def following() -> Iterator[None]:
    yield
    stopped = Loop.running()
    Loop._worker_shutdown()
    assert stopped is None or stopped._thread is None or not stopped._thread.is_alive()


def ready_worker(app: Any) -> Any:
    return SimpleNamespace(app=app, hostname="wsupload-9@here")


@pytest.mark.usefixtures("following")
def test_the_signals_start_tell_and_stop_one_loop_per_process() -> None:
    Loop._worker_ready(sender=ready_worker(SimpleNamespace()))  # not a wsupload app: left alone
    assert Loop.running() is None

    settings = Settings.from_env({})
    Loop._worker_ready(sender=ready_worker(SimpleNamespace(settings=settings)))
    started = Loop.running()
    assert started is not None
    wait_until(lambda: started.ticks >= 1, 10, what="the first round")
    Loop._worker_ready(sender=ready_worker(SimpleNamespace(settings=settings)))  # already running: kept
    assert Loop.running() is started

    Loop._worker_shutting_down(sig="SIGTERM", how="Warm", exitcode=0)
    assert started.events == ["start", "stopping"]
    assert started._thread is not None
    assert started._thread.is_alive()  # still ticking until the shutdown
    Loop._worker_shutdown(sender=None)
    assert Loop.running() is None
    assert started.events == ["start", "stopping", "stop"]
    assert not started._thread.is_alive()
    Loop._worker_shutting_down()  # after the stop: nothing to tell
    Loop._worker_shutdown()
    assert started.events == ["start", "stopping", "stop"]


@pytest.mark.usefixtures("following")
def test_a_loop_that_cannot_start_is_logged_and_the_worker_runs_without_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(consumer: Any, settings: Settings) -> Loop:
        raise redis.ConnectionError("Redis is away")

    monkeypatch.setattr(Loop, "for_worker", refuse)
    Loop._worker_ready(sender=ready_worker(SimpleNamespace(settings=Settings.from_env({}))))
    assert Loop.running() is None
    assert lines(caplog) == [("ERROR", "test-loop: not started; the worker runs without it")]
    assert "Traceback" in caplog.text

    monkeypatch.setattr(Loop, "for_worker", lambda consumer, settings: None)  # not wanted on this worker
    Loop._worker_ready(sender=ready_worker(SimpleNamespace(settings=Settings.from_env({}))))
    assert Loop.running() is None


def test_each_class_is_its_own_loop() -> None:
    class Other(Loop):
        pass

    background.RUNNING[Loop] = Loop(interval=None)
    try:
        assert Other.running() is None
        assert Loop.running() is background.RUNNING[Loop]
    finally:
        del background.RUNNING[Loop]


def test_a_worker_starts_and_stops_its_loops_in_the_apps_include_order() -> None:
    # A fresh interpreter: the order receivers connect in is the order their modules are first imported.
    check = (
        "from celery.signals import worker_ready, worker_shutting_down, worker_shutdown\n"
        "from wsupload.config import Settings\n"
        "from wsupload.worker.app import create_app\n"
        "app = create_app(Settings.from_env({'REDIS_URL': 'redis://127.0.0.1:1/0'}))\n"
        "app.loader.import_default_modules()\n"
        "for signal in (worker_ready, worker_shutting_down, worker_shutdown):\n"
        "    uids = [key[0] for key, _ in signal.receivers if isinstance(key[0], str)]\n"
        "    print(' '.join(uid.split(':')[1] for uid in uids if uid.startswith('wsupload.worker.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", check], check=True, timeout=60, capture_output=True, text=True)
    # Metrics last: it counts what the others report up to their stop.
    assert done.stdout.splitlines() == ["Heartbeat Renewer CancelWatch PauseWatch Sweeper WorkerEndpoint"] * 3


class Unreachable:
    """A Redis client whose subscriptions fail at once, as with Redis away."""

    def pubsub(self, **_: Any) -> Any:
        return SimpleNamespace(subscribe=self.refuse, close=lambda: None)

    @staticmethod
    def refuse(*_: Any) -> None:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


class Listening(background.ChannelLoop):
    name = "listening-test"
    channel = "test:channel"

    def tick(self) -> object:
        return list(self.messages(self.interval or 0))


class CountedWaits:
    """Stands for the loop's stop event: records each wait, and says "stop" after ``rounds`` of them."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.waited: list[float] = []

    def wait(self, seconds: float) -> bool:
        self.waited.append(seconds)
        return len(self.waited) > self.rounds

    def is_set(self) -> bool:
        return False


def test_a_channel_loop_whose_rounds_fail_waits_an_interval_between_them_instead_of_spinning() -> None:
    loop = Listening(0.5)
    loop.client = Unreachable()  # type: ignore[assignment]
    waits = CountedWaits(rounds=4)
    loop._done = waits  # type: ignore[assignment]
    loop._run()  # the thread's body, here: each round fails to subscribe
    assert waits.waited == [0.0, 0.5, 0.5, 0.5, 0.5]  # the first at once; after a failure, an interval
    assert loop.last_round_failed
