"""The worker's side of pausing queues: it stops consuming a paused queue, and consumes it again once resumed.

Each worker process reads the fleet-wide set of paused queues (``tasks.store.pauses``) every
``LOOK_EVERY`` seconds, and at once when a producer announces a change on
``keys.PAUSE_CHANNEL``. For each queue this worker serves, a pause cancels its consumer
(Celery's ``cancel_task_queue``: ``basic.cancel`` on RabbitMQ, the queue left out of the Redis
transport's fetches) and a resume adds it back (``add_task_queue``); both run on the consumer's
own event loop (``hub.call_soon``), as Celery's ``cancel_consumer`` control command does. Jobs
running finish; a message already fetched goes back to its queue when its task meets the pause
(``tasks.upload``, ``tasks.upload_many``). The set lives in the results Redis (``REDIS_URL``)
whatever the broker. A worker started while a queue is paused leaves it out before it consumes
anything (``celeryd_after_setup``, where Celery lets its queues be changed), or, if Redis could
not be read then, stops consuming it at its first look.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from celery.signals import celeryd_after_setup

from wsupload.config.settings import Settings
from wsupload.tasks.store import keys, pauses
from wsupload.tasks.store.pauses import BOARD, LEFT_OUT, LOOK_EVERY, Board
from wsupload.worker.background import ChannelLoop
from wsupload.worker.worker_records import connect

log = logging.getLogger(__name__)


class PauseWatch(ChannelLoop):
    """Keeps this worker's consumers in step with the paused set: one read a round, a change at once."""

    name = "pauses"
    logger = log
    failing = "pauses: cannot read the paused queues (%s: %s); trying again every %.3g s"
    recovered = "pauses: reading the paused queues again"
    not_started = "pauses: not started; this worker consumes every queue it serves, paused or not"
    channel = keys.PAUSE_CHANNEL
    interval: float

    def __init__(
        self,
        client: redis.Redis,
        serves: set[str],
        switch: Callable[[str, bool], None],
        interval: float = LOOK_EVERY,
        board: Board = BOARD,
    ) -> None:
        super().__init__(interval)
        self.client = client
        self.serves = set(serves)
        """The queues this worker consumes when none is paused."""
        self.switch = switch
        """``switch(queue, consume)``: start (True) or stop (False) consuming ``queue``."""
        self.board = board
        self.stopped: set[str] = set()
        """The queues this loop stopped consuming."""

    def on_start(self) -> None:
        # At once, before the first interval: a worker started while a queue is paused leaves it alone.
        self.attempt(self.look, None)

    def tick(self) -> set[str]:
        """One round: look at the set, then listen for a change for up to ``interval``."""
        paused = self.look()
        self.listen(self.interval)
        return paused

    def look(self) -> set[str]:
        """Read the paused set and stop or start consuming the queues served here; the set read."""
        paused = pauses.paused(self.client)
        self.board.update(paused)
        for queue in sorted((paused & self.serves) - self.stopped):
            self.switch(queue, False)
            self.stopped.add(queue)
            log.info("queue %s is paused: this worker stops taking its jobs (running ones finish)", queue)
        for queue in sorted(self.stopped - paused):
            self.switch(queue, True)
            self.stopped.discard(queue)
            log.info("queue %s is resumed: this worker takes its jobs again", queue)
        return paused

    def listen(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for an announced change; whether one came."""
        return any(True for _ in self.messages(seconds))

    def on_stop(self) -> None:
        super().on_stop()
        self.board.forget()

    @classmethod
    def for_worker(cls, consumer: Any, settings: Settings) -> PauseWatch:
        serves = {queue.name for queue in consumer.task_consumer.queues} | LEFT_OUT
        watch = cls(connect(settings.redis_url, timeout=LOOK_EVERY * 6), serves, on_loop(consumer))
        watch.stopped = set(LEFT_OUT)
        return watch


def leave_out_paused(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """``celeryd_after_setup``: leave the paused queues out of the worker's queues before it consumes any."""
    app = getattr(instance, "app", None)
    settings = getattr(app, "settings", None)
    if not isinstance(settings, Settings):
        return  # another app's worker
    LEFT_OUT.clear()
    queues = app.amqp.queues  # type: ignore[union-attr]
    client = connect(settings.redis_url, timeout=LOOK_EVERY * 6)
    try:
        paused = pauses.paused(client)
    except redis.RedisError as exc:
        log.warning("pauses: cannot read the paused queues at start (%s); looking again once consuming", exc)
        return
    finally:
        client.close()
    for name in sorted(set(queues.consume_from or queues) & paused):
        queues.deselect(name)
        LEFT_OUT.add(name)
        log.info("queue %s is paused: this worker starts without taking its jobs", name)


def on_loop(consumer: Any) -> Callable[[str, bool], None]:
    """``switch`` for Celery's consumer: its ``cancel_task_queue`` / ``add_task_queue``, on its event loop."""

    def change(queue: str, consume: bool) -> None:
        try:
            if consume:
                consumer.add_task_queue(queue)
            else:
                consumer.cancel_task_queue(queue)
        except Exception:  # the consumer is restarting (a lost connection): the set is read again then
            log.exception("pauses: could not %s consuming queue %s", "start" if consume else "stop", queue)

    def switch(queue: str, consume: bool) -> None:
        hub = getattr(consumer, "hub", None)
        if hub is None:
            change(queue, consume)
        else:
            hub.call_soon(change, queue, consume)

    return switch


PauseWatch.follow_worker()
celeryd_after_setup.connect(leave_out_paused, weak=False, dispatch_uid=f"{__name__}:leave-out-paused")
