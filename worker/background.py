"""The worker's background loops: a daemon thread each, from the worker's start to its shutdown.

The heartbeat (``worker.heartbeat``), lease renewal (``worker.renewer``), the sweep
(``worker.sweeper``) and the metrics endpoint (``worker.metrics``) are each a
``BackgroundLoop`` that follows the worker's signals: built and started once the
worker consumes (``worker_ready``), told when it is asked to stop
(``worker_shutting_down``, from inside the signal handler) and stopped once a warm
shutdown has let the running jobs finish (``worker_shutdown``). Celery calls the
receivers in the order they were connected, which is the order ``worker.app``
includes the modules: the heartbeat first, the metrics endpoint last, so it counts
what the other loops report up to their own stop.

A loop must never stop or block the worker: every error of a round is caught and
the next round is the retry, and a failing loop is logged once per streak, when it
starts failing and when it recovers, not once per round. Redis and OS errors are
expected there (one line); anything else also logs its traceback. A TLS refusal (a
certificate rotated to one that does not verify) is said once for the whole worker
(``worker.tls.NOTICE``), not once per loop. The receivers ignore workers of any other app.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Self, TypeVar

import redis
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from wsupload.config.settings import Settings
from wsupload.tasks.observe.bounds import clip
from wsupload.worker import tls

log = logging.getLogger(__name__)

T = TypeVar("T")


class FailureStreak:
    """Failures logged once per streak: when they start, and when the next success ends them."""

    def __init__(
        self,
        log: logging.Logger,
        failing: str,
        recovered: str,
        expected: tuple[type[BaseException], ...] = (redis.RedisError, OSError),
    ) -> None:
        self.log = log
        self.expected = expected
        """Errors logged without their traceback."""
        self.failing_line = failing
        """Logged at the first failure: ``%s`` for the error's type and text, then the caller's args."""
        self.recovered_line = recovered
        self.failing = False
        self.quiet = False
        """Failing for a TLS refusal, said by ``tls.NOTICE``: its end is said there too."""

    def failed(self, exc: BaseException, *args: object) -> None:
        refused = tls.NOTICE.noticed(exc)  # whatever this streak said before: a refusal is the notice's
        if self.failing:
            return
        self.failing, self.quiet = True, refused
        if refused:
            return
        self.log.warning(
            self.failing_line,
            type(exc).__name__,
            clip(str(exc)),
            *args,
            exc_info=not isinstance(exc, self.expected),
        )

    def succeeded(self) -> None:
        if self.failing:
            self.failing = False
            if self.quiet:  # it met the refusal, and now a round went through: TLS verifies again
                self.quiet = False
                tls.NOTICE.verified()
            else:
                self.log.info(self.recovered_line)


RUNNING: dict[type[BackgroundLoop], BackgroundLoop] = {}
"""This process's loops while its worker runs, by the class that follows the worker's signals."""


class BackgroundLoop:
    """Runs ``tick`` from a daemon thread, every ``interval`` seconds, from ``start`` to ``stop``.

    A subclass gives ``tick`` (one round: raising makes it a failed round) and the
    lines its streak logs; to follow a worker's signals, ``for_worker`` and a call of
    ``follow_worker()`` where it is defined. Its hooks, each a no-op here:

    - ``on_start``: as it starts, before its thread (raising: not started);
    - ``on_stopping``: the worker was asked to stop; runs inside the signal handler,
      so no I/O and no lock (start a thread for anything more);
    - ``on_stop``: once its thread has ended, or two intervals of waiting for a round
      in flight have passed;
    - ``waits``: the schedule, the wait before each round.

    ``interval`` None: nothing to tick and no thread, only the hooks (the metrics
    endpoint, whose HTTP server has a thread of its own).
    """

    name: ClassVar[str] = "loop"
    """Its thread is ``wsupload-<name>``."""
    logger: ClassVar[logging.Logger] = log
    """Where its lines go (the module that defines the loop)."""
    failing: ClassVar[str] = "background loop: failed (%s: %s); trying again every %g s"
    """Logged when rounds start failing: the error's type and text, then the interval."""
    recovered: ClassVar[str] = "background loop: working again"
    not_started: ClassVar[str] = "background loop: not started"
    """Logged, with the traceback, when it could not start on a worker: what the worker runs without."""

    def __init__(self, interval: float | None) -> None:
        self.interval = interval
        """Seconds between two rounds (by default from the end of one to the start of the next)."""
        self._streak = FailureStreak(self.logger, self.failing, self.recovered)
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_round_failed = False
        """Whether the thread's last round failed (``waits`` may pause longer after one)."""

    def tick(self) -> object:
        """One round; an exception makes it a failed one (logged once per streak), never the loop's end."""
        return None

    def attempt(self, step: Callable[[], T], otherwise: T) -> T:
        """``step()``, or ``otherwise`` if it raised: the streak logs its first failure and the recovery."""
        try:
            result = step()
        except Exception as exc:  # whatever it is, the worker carries on: the next round tries again
            self._streak.failed(exc, self.interval)
            return otherwise
        self._streak.succeeded()
        return result

    def run_once(self) -> bool:
        """One round; False if it failed (logged once per streak)."""
        return self.attempt(self._tick_succeeded, False)

    def _tick_succeeded(self) -> bool:
        self.tick()
        return True

    def waits(self) -> Iterator[float]:
        """How long to wait before each round: an interval after the last one ended."""
        while self.interval is not None:
            yield self.interval

    def start(self) -> None:
        self.on_start()
        if self.interval is not None:
            self._thread = threading.Thread(target=self._run, name=f"wsupload-{self.name}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        for wait in self.waits():
            if self._done.wait(wait):
                return
            self.last_round_failed = not self.run_once()

    def stop(self) -> None:
        """End the thread (a round in flight gets two intervals, at least a second, to finish), then ``on_stop``."""
        self._done.set()
        if self._thread is not None and self.interval is not None:
            self._thread.join(timeout=max(self.interval * 2, 1.0))
        self.on_stop()

    def on_start(self) -> None:
        pass

    def on_stopping(self) -> None:
        pass

    def on_stop(self) -> None:
        pass

    # Following a worker: one loop of each class per process, while its worker runs.

    @classmethod
    def for_worker(cls, consumer: Any, settings: Settings) -> BackgroundLoop | None:
        """The loop for the worker whose consumer is ready, not started yet; None if it runs without one."""
        raise NotImplementedError

    @classmethod
    def follow_worker(cls) -> None:
        """Start this class's loop on ``worker_ready``, tell it of a stop signal, stop it on ``worker_shutdown``."""
        uid = f"{cls.__module__}:{cls.__qualname__}"
        worker_ready.connect(cls._worker_ready, weak=False, dispatch_uid=f"{uid}:ready")
        worker_shutting_down.connect(cls._worker_shutting_down, weak=False, dispatch_uid=f"{uid}:shutting-down")
        worker_shutdown.connect(cls._worker_shutdown, weak=False, dispatch_uid=f"{uid}:shutdown")

    @classmethod
    def running(cls) -> Self | None:
        """This class's loop while the worker runs."""
        loop = RUNNING.get(cls)
        return loop if isinstance(loop, cls) else None

    @classmethod
    def _worker_ready(cls, sender: Any = None, **_: Any) -> None:
        settings = getattr(getattr(sender, "app", None), "settings", None)
        if not isinstance(settings, Settings) or cls in RUNNING:
            return  # another app's worker, or already running
        try:
            loop = cls.for_worker(sender, settings)
            if loop is None:
                return
            loop.start()
        except Exception:
            cls.logger.exception(cls.not_started)
            return
        RUNNING[cls] = loop

    @classmethod
    def _worker_shutting_down(cls, **_: Any) -> None:
        # Inside the signal handler: a dict read, no lock.
        loop = RUNNING.get(cls)
        if loop is not None:
            loop.on_stopping()

    @classmethod
    def _worker_shutdown(cls, **_: Any) -> None:
        loop = RUNNING.pop(cls, None)
        if loop is not None:
            loop.stop()


class ChannelLoop(BackgroundLoop):
    """A loop whose rounds wait on one Redis pub/sub channel (the cancel and pause watches).

    Each round does its own look at Redis in ``tick``, then takes what ``messages`` yields
    for up to its interval: a change announced is acted on at once, and the next round's
    look covers any announcement missed. A failure closes the subscription, so the next
    round subscribes again.
    """

    channel: ClassVar[str]
    client: redis.Redis
    _pubsub: Any = None

    def waits(self) -> Iterator[float]:
        while True:
            # Each round waits in ``messages``; one that failed (Redis away: subscribing fails at
            # once) waits an interval before the next, or the thread would spin on a core.
            yield self.interval if self.last_round_failed and self.interval else 0.0

    def messages(self, seconds: float) -> Iterator[str]:
        """The channel's messages for up to ``seconds`` (or until the loop stops), subscribing first if need be."""
        try:
            if self._pubsub is None:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(self.channel)
                self._pubsub = pubsub
            until = time.monotonic() + seconds
            while (left := until - time.monotonic()) > 0 and not self._done.is_set():
                message = self._pubsub.get_message(timeout=left)
                if message is not None and message.get("type") == "message":
                    data = message["data"]
                    yield data.decode() if isinstance(data, bytes) else str(data)
        except Exception:
            self.close_subscription()
            raise

    def close_subscription(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # closing a broken connection: nothing left to do
                log.debug("%s: closing the subscription failed", self.name, exc_info=True)

    def on_stop(self) -> None:
        self.close_subscription()
