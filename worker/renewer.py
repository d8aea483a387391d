"""The worker's side of leases (``tasks.lease``): renewing them, and handing jobs back on a stop.

**Renewal.** A thread in the worker's process renews, every third of
``WSUPLOAD_LEASE``, the lease of every message the worker holds: it moves the
message's entry in kombu's ``unacked_index`` to now (``ZADD XX``, one pipelined
round trip for all of them), which kombu's restore scan honours. Messages
waiting for a thread, and tasks other than uploads (a scan, a callback), are
renewed while the worker lives; an upload only while it shows signs of life
(``tasks.lease.renewable``), so a hung upload's message goes to another worker.
An entry that is gone (kombu restored it, or Redis lost it) marks the job's
lease lost: the job stops at its next block and writes nothing more.

**Stop.** On SIGTERM (Celery's warm shutdown) running jobs get
``WSUPLOAD_STOP_GRACE`` to finish. Those still running then are handed back at
once: each message goes back to the front of its queue (kombu's own restore, one
transaction) and its job stops at its next block, so another worker takes it
now, not a lease later. A worker killed before that (docker's SIGKILL) loses
its leases within ``WSUPLOAD_LEASE``.

Neither may stop or block the worker: Redis calls time out within a renewal
interval and are not retried by the client (the next round is the retry), and
every error is caught and logged once per streak.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down
from celery.worker import state

from wsupload.config.settings import Settings
from wsupload.tasks import telemetry
from wsupload.tasks.lease import BOOK, LeaseBook, renewable
from wsupload.tasks.limits import clip
from wsupload.worker.roster import connect

log = logging.getLogger(__name__)

UNACKED_INDEX = "unacked_index"
"""kombu's default name for the sorted set of delivered messages by delivery time."""


@dataclass(frozen=True)
class Held:
    """A message this worker holds: its delivery tag, and the channel that delivered it."""

    tag: str
    channel: Any


def held_messages(requests: Iterable[Any] | None = None) -> list[Held]:
    """Every message this worker has received and not acknowledged (running or waiting)."""
    held = []
    for request in tuple(state.reserved_requests if requests is None else requests):
        message = getattr(request, "message", None)
        tag = getattr(message, "delivery_tag", None)
        if isinstance(tag, str) and not getattr(request, "acknowledged", False):
            held.append(Held(tag, getattr(message, "channel", None)))
    return held


def to_renew(held: Iterable[Held], book: LeaseBook, now: float) -> list[str]:
    """The tags whose lease is renewed now: all but those of jobs showing no sign of life."""
    tags = []
    for message in held:
        lease = book.get(message.tag)
        if lease is None or renewable(lease, now):
            tags.append(message.tag)
    return tags


class Renewer:
    def __init__(
        self,
        client: redis.Redis,
        interval: float,
        book: LeaseBook = BOOK,
        held: Callable[[], list[Held]] = held_messages,
    ) -> None:
        self.client = client
        self.interval = interval
        self.book = book
        self.held = held
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._silent: set[str] = set()

    def renew(self) -> int:
        """Renew once; how many leases were renewed (0 after a failure, logged once per streak)."""
        try:
            held = self.held()
            tags = to_renew(held, self.book, time.monotonic())
            self._say_silent(held, tags)
            if not tags:
                return 0
            index = getattr(held[0].channel, "unacked_index_key", UNACKED_INDEX)
            now = time.time()
            pipe = self.client.pipeline(transaction=False)
            for tag in tags:
                pipe.zadd(index, {tag: now}, xx=True, ch=True)
            replies = pipe.execute()
        except Exception as exc:  # the worker carries on; the next round tries again
            if not self._failing:
                self._failing = True
                log.warning(
                    "leases: cannot renew (%s: %s); trying again every %.3g s",
                    type(exc).__name__,
                    clip(str(exc)),
                    self.interval,
                    exc_info=not isinstance(exc, redis.RedisError | OSError),
                )
            return 0
        if self._failing:
            self._failing = False
            log.info("leases: renewing again")
        for tag, changed in zip(tags, replies, strict=True):
            lease = self.book.get(tag)
            if not changed and lease is not None and not lease.lost:
                lease.lost = True
                telemetry.lease_lost()
                log.warning("job %s: its lease is gone from Redis; it stops at its next block", lease.job_id)
        return sum(1 for changed in replies if changed)

    def _say_silent(self, held: list[Held], renewed: list[str]) -> None:
        kept = set(renewed)
        for message in held:
            lease = self.book.get(message.tag)
            if message.tag not in kept and lease is not None and message.tag not in self._silent:
                self._silent.add(message.tag)
                log.warning(
                    "job %s shows no sign of life; its lease is left to expire and another worker takes it",
                    lease.job_id,
                )
        self._silent &= {message.tag for message in held}

    def hand_back(self, grace: float) -> int:
        """Wait up to ``grace`` for running jobs to end; put the rest back on their queues now."""
        if self.book.wait_empty(grace):
            return 0
        channels = {message.tag: message.channel for message in self.held()}
        handed = 0
        for lease in self.book.all():
            channel = channels.get(lease.tag or "")
            lease.handed_back = True  # the job stops at its next block, writing nothing more
            if channel is None or lease.tag is None:
                continue
            try:
                channel.qos.restore_by_tag(lease.tag, leftmost=False)  # the front of its queue
            except Exception as exc:
                log.warning(
                    "job %s: could not hand it back (%s); it returns once its lease expires",
                    lease.job_id,
                    clip(str(exc)),
                )
                continue
            handed += 1
            telemetry.handed_back()
            log.warning("job %s: still running after the stop grace; handed back to its queue", lease.job_id)
        return handed

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wsupload-leases", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            self.renew()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval * 2)


_current: Renewer | None = None
_settings: Settings | None = None


@worker_ready.connect(weak=False, dispatch_uid="wsupload.worker.renewer:ready")
def _start(sender: Any = None, **_: Any) -> None:
    global _current, _settings
    settings = getattr(getattr(sender, "app", None), "settings", None)
    if not isinstance(settings, Settings) or _current is not None:
        return  # another app's worker, or already renewing
    renewer = Renewer(connect(settings.effective_broker_url, timeout=settings.renew_interval), settings.renew_interval)
    renewer.start()
    _current, _settings = renewer, settings
    log.info("leases: %g s, renewed every %.3g s", settings.lease, settings.renew_interval)


@worker_shutting_down.connect(weak=False, dispatch_uid="wsupload.worker.renewer:shutting-down")
def _on_stop_signal(**_: Any) -> None:
    # Inside the signal handler: start a thread and return.
    renewer, settings = _current, _settings
    if renewer is None or settings is None:
        return
    threading.Thread(
        target=renewer.hand_back, args=(settings.stop_grace,), name="wsupload-stop-grace", daemon=True
    ).start()


@worker_shutdown.connect(weak=False, dispatch_uid="wsupload.worker.renewer:shutdown")
def _stop(**_: Any) -> None:
    global _current
    renewer, _current = _current, None
    if renewer is not None:
        renewer.stop()
