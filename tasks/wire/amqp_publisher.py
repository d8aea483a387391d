"""Publishing upload messages to RabbitMQ: many at a time, with publisher confirms, waited for once per batch.

The connection is kept between calls (``Publisher``): a single job costs one queue
declaration and one confirmed publish, not a connection handshake.

Celery's own ``confirm_publish`` waits for RabbitMQ's confirm after every message
(one round trip each). Here a channel in confirm mode publishes ``BATCH`` messages
(``tasks.wire.encode.amqp_message``) and then waits until RabbitMQ has confirmed every one
of them, so 10,000 jobs cost a few dozen round trips. A nack, a returned message,
a closed channel or a wait longer than ``CONFIRM_TIMEOUT`` raises ``PublishError``:
the caller does not know which messages RabbitMQ kept, and the owed set
(``tasks.recovery.early_acks``) covers them all.

The queues are declared first exactly as the workers declare them (durable quorum
queues, ``worker.app``): RabbitMQ drops a message routed to a queue that does not
exist yet, and refuses a declaration whose arguments differ.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import amqp
from amqp.method_framing import frame_writer
from kombu import Connection

from wsupload.config.broker_urls import amqp_tls
from wsupload.config.redis_urls import masked
from wsupload.errors import PublishError
from wsupload.tasks.wire.encode import AmqpMessage

BATCH = 1000
"""Messages published between two waits for confirms."""
CONFIRM_TIMEOUT = 30.0
"""Seconds to wait for one batch's confirms."""
CONNECT_TIMEOUT = 5.0
QUORUM = {"x-queue-type": "quorum"}
"""The arguments every wsupload queue is declared with on RabbitMQ."""


def declare(channel: Any, queues: Iterable[str]) -> None:
    """Declare ``queues`` as the workers do: durable quorum queues (idempotent)."""
    for queue in queues:
        channel.queue_declare(queue, durable=True, auto_delete=False, arguments=QUORUM)


class Publisher:
    """A connection to RabbitMQ kept between calls (thread-safe: one call at a time), opened on first use.

    A call first declares its queues (one round trip), which also finds a connection
    that went stale meanwhile (a broker restart): that one is replaced and the call
    goes on, before anything was published. Any failure after that closes the
    connection and raises ``PublishError``; the next call opens a new one.
    """

    def __init__(self, url: str, *, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._open: tuple[Connection, _Confirms] | None = None

    def publish(self, messages: Sequence[AmqpMessage], *, batch: int = BATCH) -> None:
        """Publish ``messages``; return once RabbitMQ has confirmed each one (``PublishError`` otherwise)."""
        if not messages:
            return
        queues = sorted({m.routing_key for m in messages})
        with self._lock:
            try:
                confirms = self._declared(queues)
                confirms.publish_all(messages, batch)
            except Exception as exc:
                self._close()
                if isinstance(exc, PublishError):
                    raise
                if isinstance(exc, OSError | amqp.exceptions.AMQPError):
                    raise PublishError(f"RabbitMQ: {type(exc).__name__}: {_reason(exc)}") from exc
                raise

    def ready(self, queue: str) -> int:
        """How many messages wait on ``queue`` (declared first, as ``publish`` does), on the kept connection."""
        with self._lock:
            try:
                confirms = self._declared([queue])
                declared = confirms.channel.queue_declare(queue, passive=True)  # (queue, message_count, consumers)
                return int(declared[1])
            except Exception as exc:
                self._close()
                if isinstance(exc, OSError | amqp.exceptions.AMQPError):
                    raise PublishError(f"RabbitMQ: {type(exc).__name__}: {_reason(exc)}") from exc
                raise

    def _declared(self, queues: Sequence[str]) -> _Confirms:
        if self._open is not None:
            try:
                declare(self._open[1].channel, queues)
                return self._open[1]
            except (OSError, amqp.exceptions.ConnectionError, amqp.exceptions.RecoverableConnectionError):
                self._close()  # stale: a new connection below
        connection = _connection(self.url, self.connect_timeout)
        connection.connect()
        raw: amqp.Connection = connection.connection
        confirms = _Confirms(raw, raw.channel())
        self._open = (connection, confirms)
        declare(confirms.channel, queues)
        return confirms

    def _close(self) -> None:
        opened, self._open = self._open, None
        if opened is not None:
            with contextlib.suppress(Exception):
                opened[0].close()
            with contextlib.suppress(Exception):
                opened[0].collect()  # the socket of a connection the broker already dropped

    def close(self) -> None:
        with self._lock:
            self._close()


def _connection(url: str, timeout: float) -> Connection:
    """kombu's connection to ``url``; an ``amqps://`` one verifies as its ``ssl_*`` options say."""
    plain, tls = amqp_tls(url)
    return Connection(plain, connect_timeout=timeout, ssl=tls or False)


def _reason(exc: BaseException) -> str:
    return (masked(" ".join(str(exc).split())) or type(exc).__name__)[:160]


class _Frames:
    """A stand-in transport that keeps what py-amqp writes."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(bytes(data))


class _Confirms:
    """A channel in confirm mode and the delivery tags RabbitMQ has yet to confirm."""

    def __init__(self, connection: amqp.Connection, channel: Any) -> None:
        self.connection = connection
        self.channel = channel
        self.published = 0
        self.confirmed = 0
        """Every tag up to this one is confirmed (RabbitMQ confirms in order, ``multiple`` covering the rest)."""
        self.singles: set[int] = set()
        self.refused = False
        self.returned = False
        channel.events["basic_ack"].add(self._ack)
        channel.events["basic_nack"].add(self._nack)
        channel.events["basic_return"].add(self._return)
        channel.confirm_select()

    def _ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            self.confirmed = max(self.confirmed, tag)
        else:
            self.singles.add(tag)
        while self.confirmed + 1 in self.singles:
            self.confirmed += 1
            self.singles.discard(self.confirmed)

    def _nack(self, tag: int, multiple: bool) -> None:
        self.refused = True

    def _return(self, *_: Any) -> None:
        self.returned = True

    def publish_all(self, messages: Sequence[AmqpMessage], batch: int) -> None:
        for start in range(0, len(messages), batch):
            with self.one_write():
                for message in messages[start : start + batch]:
                    body = amqp.Message(message.body, application_headers=message.headers, **message.properties)
                    # mandatory: a message no queue takes comes back (basic.return) instead of vanishing.
                    self.channel.basic_publish(body, exchange="", routing_key=message.routing_key, mandatory=True)
                    self.published += 1
            self.wait()

    @contextlib.contextmanager
    def one_write(self) -> Iterator[None]:
        """py-amqp writes each frame with its own ``sendall``: a batch's frames go out in one instead.

        That system call per message was half the time of a 10,000-job enqueue.
        """
        connection, frames = self.connection, _Frames()
        direct = connection.frame_writer
        setattr(connection, "frame_writer", frame_writer(connection, frames))  # noqa: B010 (read-only in the stubs)
        try:
            yield
        finally:
            setattr(connection, "frame_writer", direct)  # noqa: B010
        connection.transport.write(b"".join(frames.parts))

    def wait(self) -> None:
        while self.confirmed < self.published and not self.refused:
            try:
                self.connection.drain_events(timeout=CONFIRM_TIMEOUT)
            except TimeoutError:
                raise PublishError(
                    f"RabbitMQ confirmed {self.confirmed} of {self.published} messages within {CONFIRM_TIMEOUT:g} s"
                ) from None
        if self.refused:
            raise PublishError("RabbitMQ refused (nacked) a message")
        if self.returned:
            raise PublishError("RabbitMQ routed a message to no queue")


def ready_messages(url: str, queues: Sequence[str], *, timeout: float = CONNECT_TIMEOUT) -> list[int]:
    """How many messages wait on each of ``queues`` (0 for one not declared yet)."""
    counts = []
    with _connection(url, timeout) as connection:
        connection.connect()
        raw: amqp.Connection = connection.connection
        for queue in queues:
            channel = raw.channel()  # a passive declare of a missing queue closes its channel
            try:
                declared = channel.queue_declare(queue, passive=True)
                counts.append(int(declared[1]) if declared else 0)  # (queue, message_count, consumer_count)
            except amqp.exceptions.NotFound:
                counts.append(0)
            else:
                channel.close()
    return counts
