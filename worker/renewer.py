"""The worker's side of leases (``tasks.recovery.lease``): renewing them, and handing jobs back on a stop.

**Renewal.** A thread in the worker's process renews, every third of
``WSUPLOAD_LEASE``, the lease of every message the worker holds: it moves the
message's entry in kombu's ``unacked_index`` to now (``ZADD XX``, one pipelined
round trip for all of them), which kombu's restore scan honours. Messages
waiting for a thread, and tasks other than uploads (a scan, a callback), are
renewed while the worker lives; an upload only while it shows signs of life
(``tasks.recovery.lease.renewable``), so a hung upload's message goes to another worker.
An entry that is gone (kombu restored it, or Redis lost it) marks the job's
lease lost: the job stops at its next block and writes nothing more.

On RabbitMQ the round is ``worker.amqp_leases``'s: nothing to renew on the broker.

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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis

from wsupload.config.settings import Settings
from wsupload.tasks.observe import telemetry
from wsupload.tasks.observe.bounds import clip
from wsupload.tasks.recovery.lease import BOOK, LeaseBook, renewable
from wsupload.tasks.store import keys, lua
from wsupload.tasks.wavespeed.rate_limit import SLOT_LEASES
from wsupload.worker import redis_transport
from wsupload.worker.background import BackgroundLoop
from wsupload.worker.worker_records import connect

log = logging.getLogger(__name__)

UNACKED_INDEX = keys.UNACKED_INDEX


@dataclass(frozen=True)
class Held:
    """A message this worker holds: its delivery tag, and the channel that delivered it."""

    tag: str
    channel: Any


def held_messages() -> list[Held]:
    """Every message this worker has received and not acknowledged (running, waiting or just finished)."""
    return [Held(tag, qos.channel) for tag, qos in redis_transport.held_tags()]


def to_renew(held: Iterable[Held], book: LeaseBook, now: float) -> list[str]:
    """The tags whose lease is renewed now: all but those of jobs showing no sign of life."""
    tags = []
    for message in held:
        lease = book.get(message.tag)
        if lease is None or renewable(lease, now):
            tags.append(message.tag)
    return tags


class Renewer(BackgroundLoop):
    """Renews the leases this worker holds every ``interval`` (a third of a lease), at a fixed rate."""

    name = "leases"
    logger = log
    failing = "leases: cannot renew (%s: %s); trying again every %.3g s"
    recovered = "leases: renewing again"
    not_started = "leases: not started; a job that runs longer than a lease is given to another worker too"
    interval: float

    def __init__(
        self,
        client: redis.Redis,
        interval: float,
        book: LeaseBook = BOOK,
        held: Callable[[], list[Held]] = held_messages,
        slots: redis.Redis | None = None,
        slot_lease: float = 30.0,
        stop_grace: float | None = None,
    ) -> None:
        super().__init__(interval)
        self.client = client
        self._silent: set[str] = set()
        self.slots = slots
        self.slot_lease = slot_lease
        self.book = book
        self.held = held
        self.stop_grace = stop_grace
        """Seconds running jobs get once the worker is asked to stop; then they are handed back (None: never)."""
        self._renew = lua.script(client, "lease_renew")
        self._slots = lua.script(slots or client, "rate_limit_renew_slots")

    def renew(self) -> int:
        """Renew once; how many leases were renewed (0 after a failure, logged once per streak)."""
        return self.attempt(self.tick, 0)

    def tick(self) -> int:
        """One round: how many leases it renewed."""
        held = self.held()
        tags = to_renew(held, self.book, time.monotonic())
        self._say_silent(held, tags)
        if not tags:
            return 0
        index = getattr(held[0].channel, "unacked_index_key", UNACKED_INDEX)
        replies = self._renew(keys=[index], args=tags)
        self._renew_slots(tags)
        for tag, changed in zip(tags, replies, strict=True):
            lease = self.book.get(tag)
            if not changed and lease is not None and not lease.lost:
                lease.lost = True
                telemetry.lease_lost()
                log.warning("job %s: its lease is gone from Redis; it stops at its next block", lease.job_id)
        return sum(1 for changed in replies if changed)

    def _renew_slots(self, renewed: list[str]) -> None:
        """Keep the fleet-limiter slots of the jobs whose leases were renewed (they live in the results Redis)."""
        tokens = [lease.slot for tag in renewed if (lease := self.book.get(tag)) is not None and lease.slot]
        if not tokens or self.slots is None:
            return
        try:
            self._slots(keys=[keys.RATE_ACTIVE], args=[int(self.slot_lease * 1000), *tokens])
        except Exception as exc:  # a slot not renewed now is renewed next round, or expires: never fatal
            log.warning("leases: cannot renew upload slots (%s: %s)", type(exc).__name__, clip(str(exc)))

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
        """Wait up to ``grace`` for running jobs to end; put the rest back on their queues now.

        A job is told to stop only once its message is back on its queue: one that
        cannot be handed back (Redis away) runs on, and its lease decides.
        """
        if self.book.wait_empty(grace):
            return 0
        try:
            channels = {message.tag: message.channel for message in self.held()}
        except Exception as exc:
            log.warning("stop: cannot read the held messages (%s); running jobs finish or their leases expire", exc)
            return 0
        handed = 0
        for lease in self.book.all():
            channel = channels.get(lease.tag or "")
            if channel is None or lease.tag is None:
                continue
            try:
                channel.qos.restore_by_tag(lease.tag, leftmost=False)  # the front of its queue
            except Exception as exc:
                log.warning(
                    "job %s: could not hand it back (%s); it runs on, and returns once its lease expires",
                    lease.job_id,
                    clip(str(exc)),
                )
                continue
            lease.handed_back = True  # back on its queue: the job stops at its next block, writing nothing more
            telemetry.handed_back()
            handed += 1
            log.warning("job %s: still running after the stop grace; handed back to its queue", lease.job_id)
        return handed

    def on_stop_signal(self, grace: float) -> None:
        """The worker was told to stop: hand back, in a thread of its own, what still runs after ``grace``."""
        threading.Thread(target=self.hand_back, args=(grace,), name="wsupload-stop-grace", daemon=True).start()

    def on_stopping(self) -> None:
        # Inside the signal handler: start a thread and return.
        if self.stop_grace is not None:
            self.on_stop_signal(self.stop_grace)

    def waits(self) -> Iterator[float]:
        # At a fixed rate: a slow round does not push the next one later (three chances per lease).
        due = time.monotonic()
        while True:
            due += self.interval
            yield max(0.0, due - time.monotonic())
            due = max(due, time.monotonic() - self.interval)  # after a stall, no burst of catch-up rounds

    @classmethod
    def for_worker(cls, consumer: Any, settings: Settings) -> Renewer:
        """This worker's renewer: of the broker's ``unacked_index`` on Redis, of owed entries on RabbitMQ."""
        # A renewal gives up well within its interval: the next one still comes in time.
        slots = None
        if settings.max_concurrent_uploads:  # fleet-limiter slots, held by running uploads, in the results Redis
            slots = connect(settings.redis_url, timeout=settings.renew_interval / 3)
        renewer: Renewer
        if settings.broker_is_amqp:
            from wsupload.tasks.recovery.early_acks import early_ack_after
            from wsupload.worker.amqp_leases import AmqpLeases

            renewer = AmqpLeases(
                connect(settings.redis_url, timeout=settings.renew_interval / 3),
                settings.renew_interval,
                lease=settings.lease,
                early_after=early_ack_after(settings.amqp_consumer_timeout),
                slots=slots,
                slot_lease=SLOT_LEASES * settings.lease,
                stop_grace=settings.stop_grace,
                consumer=consumer,
            )
        else:
            client = connect(settings.effective_broker_url, timeout=settings.renew_interval / 3)
            renewer = Renewer(
                client,
                settings.renew_interval,
                slots=slots,
                slot_lease=SLOT_LEASES * settings.lease,
                stop_grace=settings.stop_grace,
            )
        log.info("leases: %g s, renewed every %.3g s", settings.lease, settings.renew_interval)
        return renewer


Renewer.follow_worker()
