"""kombu's Redis transport: one Redis client per channel, and a worker that outlives Redis faults.

One client per channel: kombu builds a new ``redis.Redis`` object for every
operation that has no client at hand (``Channel.conn_or_acquire``), which
includes the two that happen for every message: recording it as unacked on
delivery and removing it on ack. A ``redis.Redis`` costs a dict of response
callbacks to build; in a profile of a worker's main process running no-op tasks
that was a tenth of its CPU. The client is only a handle on the channel's
connection pool (thread-safe, shared already), so one per pool does the same
work. kombu replaces the pool after a fork; the client is rebuilt when that happens.

Redis faults (a restart, a failover, a full server) must cost the worker a
reconnect or a pause, never its life or a message:

- A Redis that refuses writes (``OOM command not allowed`` under ``noeviction``,
  ``READONLY`` from a replica after a failover) is treated like one that is
  gone: the consumer reconnects with backoff instead of dying, and connecting
  counts only once a (no-op) write is accepted, so a worker started on a full
  Redis waits for memory instead of spinning.
- A message BRPOP took that cannot be recorded as unacked is never run and
  never dropped: it is pushed back onto its queue (allowed even on a full
  Redis: BRPOP just freed its bytes) and the channel takes no message for a
  while, doubling up to ``PAUSE_MAX``; if Redis went away in between, it is held
  in memory and pushed back as soon as the worker connects again.
- An ack or requeue that cannot be written logs one warning; the message stays
  in kombu's unacked set and is redelivered once its lease expires (the job's
  finished document stops a second upload).
- A channel whose connection Celery already collected after a connection loss
  cannot reach Redis: it says so with a connection error, which kombu and
  Celery expect, not kombu's ``AttributeError`` on the transport's cleared client.

Every ``wsupload.upload`` message pushed onto a queue or taken from one keeps its
job's place in the queue's line (``tasks.recovery.job_index``) in the same script or transaction, so the
sweep (``tasks.recovery.lost_sweep``) can tell a message BRPOP took and nobody recorded. A
message pushed again (a restore, a put-back) gets a new delivery tag: a copy never
shares one with the delivery it replaces.

Per message, kombu's unacked bookkeeping is one Lua script each way (``RECORD`` on
delivery, ``REMOVE`` on ack) instead of its MULTI transactions, and an ack made on
the event loop's thread (where Celery acks) is not sent alone: the next delivery's
``RECORD`` carries it, or, if none comes within ``ACK_DELAY``, the loop's next turn
sends it, and closing the channel sends what is still owed. Locally the message is
done with at once (its prefetch slot free, the renewer no longer renewing it); a
worker killed in between leaves the message unacked in Redis, redelivered once its
lease expires, where the job's finished document stops a second upload (as for an
ack Redis refused). One Redis round trip a job fewer.

The same transport exists for Redis Sentinel (``SentinelChannel``,
``SentinelTransport``: kombu's Sentinel classes under the same overrides), whose
channels reach the master the sentinels name at each connect; a failover is, to
the worker, a connection loss followed by a reconnect (to the promoted replica).

``install()`` points kombu's ``redis``, ``rediss`` and ``sentinel`` scheme names at
them (kombu derives TLS from the scheme name, so naming the class in
``broker_transport`` would lose it); ``redis+sentinel://`` URLs reach kombu
rewritten as ``sentinel://`` ones by ``worker.app``. ``PoisonGuard``
(``worker.poison``) moves messages kombu could not read aside; everything else
about the transport is kombu's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from queue import Empty
from typing import Any

import redis
from kombu import transport
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps

from wsupload.tasks.observe.bounds import clip
from wsupload.tasks.recovery import job_index
from wsupload.tasks.store import keys, lua
from wsupload.worker import tls
from wsupload.worker.poison import PoisonGuard, envelope_jobs

log = logging.getLogger(__name__)

REFUSED_WRITES: tuple[type[Exception], ...] = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)
"""Redis answered, but will not write: full under ``noeviction``, or a replica."""

WRITE_PROBE_KEY = keys.BROKER_WRITE_PROBE
"""Never created: ``LPUSHX`` on it changes nothing, yet is refused exactly like any write."""

PUT_BACK = lua.load("job_index_put_back")
"""``job_index.PUSH`` to the front, even on a full Redis (``allow-oom``, Redis ≥ 7): BRPOP took it from there."""

RECORD = lua.load("unacked_record")
"""kombu's unacked entry and delivery stamp (by Redis's clock: leases never depend on a worker host's
clock), and the jobs taken out of their line (``job_index.TAKE``): one call, one reply, where kombu's
MULTI of three cost five replies to parse per delivered message."""

REMOVE = lua.load("unacked_remove")
"""kombu's ack (``ZREM`` the index, ``HDEL`` the hash) in one call: one reply where its MULTI had four."""


def redis_now(client: Any) -> float:
    """Redis's clock, in unix seconds."""
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


ACK_DELAY = 0.05
"""Seconds an acknowledgement waits for the next delivery to carry it to Redis (then it goes alone)."""

PAUSE_BASE = 1.0
PAUSE_MAX = 16.0


def pause_after(refusals: int) -> float:
    """Seconds to take no message after the ``refusals``-th refused delivery in a row."""
    return min(PAUSE_MAX, PAUSE_BASE * 2.0 ** max(0, refusals - 1))


def describe(exc: BaseException) -> str:
    if tls.NOTICE.noticed(exc):  # a rotated certificate: said once for the worker, not in every line
        return tls.REFUSED
    # redis-py names a failed pipeline command with its arguments: a message payload at worst.
    return clip(f"{type(exc).__name__}: {exc}")


class QoS(kombu_redis.QoS):
    """kombu's ack emulation, with writes Redis refuses handled instead of raised."""

    channel: Channel
    _vrestore_count: int
    _paused_until = 0.0
    _refusals = 0
    _acked_since = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acked: list[str] = []
        """Tags acknowledged on the event loop's thread whose Redis half is still owed."""

    def can_consume(self) -> bool:
        return time.monotonic() >= self._paused_until and bool(super().can_consume())

    def append(self, message: Any, delivery_tag: str) -> None:
        _open.add(self)
        try:
            self._record(message, delivery_tag)
        except self.channel.refused_errors as exc:
            self._hand_back(message, exc)
        self._refusals = 0

    def _record(self, message: Any, delivery_tag: str) -> None:
        """kombu's ``QoS.append`` (5.7), with the job taken out of its line in the same script (``RECORD``)."""
        delivery = message.delivery_info
        exchange, routing_key = delivery["exchange"], delivery["routing_key"]
        entry = unacked_entry(message._raw, self.channel.text_of(message._raw), exchange, routing_key)
        jobs = upload_jobs(message._raw)
        taken = job_index.taken_keys(self.channel.lines_of(message._raw, exchange, routing_key)) if jobs else []
        acked, self._acked = self._acked, []  # the event loop's acks so far ride along
        try:
            names = [self.unacked_index_key, self.unacked_key, *taken]
            args: list[str | int] = [delivery_tag, entry, len(acked), *acked, *jobs]
            self.channel.run_script("record", names, args)
        except BaseException:
            self._acked[:0] = acked  # not written: still owed, before any made since
            raise
        virtual.QoS.append(self, message, delivery_tag)

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        """kombu's scan for expired leases (5.7), with "expired" judged by Redis's clock.

        kombu compares each entry with the scanning worker's own clock: one host whose
        clock runs a lease ahead would hand out every other worker's running jobs.
        """
        self._vrestore_count += 1
        if (self._vrestore_count - 1) % (interval or 1):
            return
        with self.channel.conn_or_acquire() as client:
            try:
                with kombu_redis.Mutex(client, self.unacked_mutex_key, self.unacked_mutex_expire):
                    ceil = redis_now(client) - self.visibility_timeout
                    visible = client.zrange(
                        self.unacked_index_key,
                        ceil,
                        0,
                        desc=True,
                        byscore=True,
                        offset=num and start,
                        num=num,
                        withscores=True,
                    )
                    for tag, _score in visible or []:
                        self.restore_by_tag(tag, client)
            except kombu_redis.MutexHeld:
                pass

    def ack(self, delivery_tag: str) -> None:
        """kombu's (5.7), out of the unacked index and hash by a script (``REMOVE``) rather than a MULTI.

        On the event loop's thread the Redis half waits (``ACK_DELAY`` at most, as long as the
        loop turns) for the next delivery's ``RECORD`` to carry it: one round trip a job fewer.
        Done with locally at once either way: the prefetch slot is free, the renewer lets it go.
        """
        if self.channel.on_loop_thread():
            virtual.QoS.ack(self, delivery_tag)
            if not self._acked:
                self._acked_since = time.monotonic()
            self._acked.append(delivery_tag)
            return
        self._remove([delivery_tag])
        virtual.QoS.ack(self, delivery_tag)

    def flush_acks(self, due_only: bool = False) -> None:
        """Write the acknowledgements still owed to Redis (``due_only``: only once ``ACK_DELAY`` has passed)."""
        if not self._acked or (due_only and time.monotonic() - self._acked_since < ACK_DELAY):
            return
        acked, self._acked = self._acked, []
        self._remove(acked)

    def _remove(self, tags: list[str]) -> None:
        try:
            self.channel.run_script("remove", [self.unacked_index_key, self.unacked_key], tags)
        except self.channel.refused_errors as exc:
            for tag in tags:
                self._leave_unacked(tag, "acknowledge", exc, local=False)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue=requeue)
        except self.channel.refused_errors as exc:
            self._leave_unacked(delivery_tag, "requeue" if requeue else "reject", exc)

    def _leave_unacked(self, delivery_tag: str, what: str, exc: BaseException, local: bool = True) -> None:
        log.warning(
            "could not %s message %s (%s); it stays unacked in Redis and is delivered again once its lease expires",
            what,
            delivery_tag,
            describe(exc),
        )
        # Done with locally all the same: a tag left in ``_delivered`` holds a prefetch
        # slot for good, and enough of them would stop this worker taking jobs.
        if local:
            virtual.QoS.ack(self, delivery_tag)

    def _hand_back(self, message: Any, exc: BaseException) -> None:
        """BRPOP took ``message`` but Redis did not record it: never run it, never drop it.

        Put it back and pause taking messages; if Redis cannot take it back now
        (gone, or not writable), hold it until the next connection and let the
        consumer reconnect, with Celery's backoff.
        """
        channel = self.channel
        task = (message.headers or {}).get("id")
        try:
            channel.put_back(message._raw)
        except channel.connection_errors as failed:
            _held.setdefault(channel.connection.broker, []).append(message._raw)
            log.warning(
                "Redis did not record a delivered message (%s) nor take it back (%s); task %s goes "
                "back on its queue once Redis answers again",
                describe(exc),
                describe(failed),
                task,
            )
            raise exc from None
        except Exception as failed:
            log.error("task %s was taken off its queue and could not be put back (%s): it is lost", task, failed)
            raise exc from None
        self._refusals += 1
        pause = pause_after(self._refusals)
        self._paused_until = time.monotonic() + pause
        log.warning(
            "Redis did not record a delivered message (%s); task %s is back on its queue and this "
            "worker takes no message for %g s",
            describe(exc),
            task,
            pause,
        )
        # kombu's poller and event loop read Empty as "nothing delivered".
        raise Empty()


def unacked_entry(payload: Any, text: str | None, exchange: str, routing_key: str) -> str:
    """kombu's unacked entry, ``[payload, exchange, routing_key]`` in JSON, what its restore reads.

    ``text``: the payload as BRPOP read it, if at hand: the entry is built around it
    instead of encoding the payload again (a sixth of the delivery's bookkeeping).
    """
    if text is None:
        return str(dumps([payload, exchange, routing_key]))
    return f"[{text}, {dumps(exchange)}, {dumps(routing_key)}]"


def upload_jobs(payload: Any) -> list[str]:
    """The jobs an upload message carries (``tasks.wire.decode.jobs_named``); none for other messages."""
    jobs, is_upload = envelope_jobs(payload)
    return jobs if is_upload else []


_open: weakref.WeakSet[QoS] = weakref.WeakSet()
"""Every QoS of this process that has taken a message: whose leases the renewer keeps."""


def held_tags() -> list[tuple[str, QoS]]:
    """Messages this process holds unacknowledged, running or not (``worker.renewer`` renews them).

    From kombu's own books, not Celery's requests: a job that finished still holds its
    message until Celery's (possibly deferred) ack reaches Redis, and must keep its
    lease until then. The event loop changes these while the renewer reads them: a
    reading that meets a change is taken again.
    """
    for _ in range(10):
        try:
            held = []
            for qos in list(_open):
                acked = set(qos._dirty or ())
                held += [(tag, qos) for tag in list(qos._delivered or ()) if tag not in acked]
            return held
        except RuntimeError:  # changed size during iteration: take it again
            continue
    raise RuntimeError("the delivered messages kept changing while being read")


_held: dict[str, list[dict[str, Any]]] = {}
"""Per broker, in this process: messages taken off a queue that Redis could not take back yet."""
# Only the process that took them puts them back: a pool child would push copies.
os.register_at_fork(after_in_child=_held.clear)


class _Scripts:
    """The scripts a channel runs per message (``EVALSHA``); each call names the client it goes on."""

    def __init__(self, client: Any) -> None:
        self.record = lua.lean_script(client, "unacked_record")
        self.remove = lua.lean_script(client, "unacked_remove")


class Channel(PoisonGuard, kombu_redis.Channel):
    QoS = QoS
    _shared_client: Any = None
    _loop_client: Any = None
    _scripts: _Scripts | None = None

    def on_loop_thread(self) -> bool:
        """Whether this runs on the thread of the event loop the transport is registered with."""
        return threading.get_ident() == getattr(self.connection, "loop_thread", None)

    def close(self) -> None:
        qos = getattr(self, "_qos", None)
        if isinstance(qos, QoS) and not self.closed:
            qos.flush_acks()  # before kombu restores what is still delivered (a refusal is logged)
        loop_client, self._loop_client = self._loop_client, None
        if loop_client is not None:
            with contextlib.suppress(Exception):
                loop_client.close()  # its connection back to the pool, which kombu disconnects
        super().close()

    def scripts(self, client: Any) -> _Scripts:
        """``RECORD`` and ``REMOVE``, made once: the loop's client and the shared one take turns calling them."""
        scripts = self._scripts
        if scripts is None:
            scripts = self._scripts = _Scripts(client)
        return scripts

    @property
    def refused_errors(self) -> tuple[type[BaseException], ...]:
        """Redis could not be reached or would not write: unreachable, full, a replica, or another refusal."""
        return (*self.connection_errors, redis.exceptions.ResponseError)

    def run_script(self, name: str, keys: list[str], args: Sequence[str | int]) -> Any:
        """``RECORD`` or ``REMOVE`` (``name``: ``record``, ``remove``) on ``scripts_client``.

        The loop's connection, found closed by Redis (a restart, an idle timeout), is
        replaced and the script sent once more on the new one: what the pool's check
        of a connection it lends would have done. Both scripts can run twice.
        """
        client = self.scripts_client()
        script = getattr(self.scripts(client), name)
        try:
            return script(keys=keys, args=args, client=client)
        except redis.ConnectionError:
            if client is not self._loop_client:
                raise
            return script(keys=keys, args=args, client=client)  # a second failure is the caller's

    def scripts_client(self) -> Any:
        """The client ``RECORD`` and ``REMOVE`` go on: on the event loop's thread, one that keeps a connection.

        The pool checks every connection it lends: a ``getpid``, and a non-blocking read
        for stale data (two ``ioctl`` and a ``recvfrom``, which lets another thread take
        the interpreter lock), twice per message on the loop. The loop's own client holds
        one connection instead (only that thread uses it; see ``run_script`` for one Redis
        closed); every other thread shares the pooled client.
        """
        if not self.on_loop_thread():
            with self.conn_or_acquire() as client:
                return client
        pool = self.pool
        client = self._loop_client
        if client is None or client.connection_pool is not pool:  # a fork or a reconnect replaced the pool
            options: dict[str, Any] = {"connection_pool": pool, "single_connection_client": True}
            credentials = pool.connection_kwargs.get("credential_provider")
            if credentials is not None:
                options["credential_provider"] = credentials  # as kombu's _create_client passes it
            client = self._loop_client = self.Client(**options)
        return client

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        if self._shared_client is None or self._shared_client.connection_pool is not pool:
            self._shared_client = self._create_client()  # type: ignore[attr-defined]
        yield self._shared_client

    def _connparams(self, asynchronous: bool = False) -> Any:
        # After a connection loss Celery collects the connection, which clears the
        # transport's client, and then closes its channels; closing one restores its
        # unacked messages through a new pool built from that client. Say "no
        # connection" the way kombu and Celery handle, rather than AttributeError.
        if self.connection is None or self.connection.client is None:
            raise redis.ConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]

    def lines_of(self, payload: dict[str, Any], exchange: str, routing_key: str) -> list[str]:
        """The queue lists a message routed so goes to, as kombu's restore finds them."""
        priority = self._get_message_priority(payload, reverse=False)
        return [self._q_for_pri(queue, priority) for queue in self._lookup(exchange, routing_key)]  # type: ignore[attr-defined]

    def put_back(self, payload: dict[str, Any]) -> None:
        """Push a delivered message back onto its queue, next in line (where kombu's restore puts it)."""
        info = payload["properties"]["delivery_info"]
        payload["properties"]["delivery_tag"] = str(uuid.uuid4())
        jobs = upload_jobs(payload)
        with self.conn_or_acquire() as client:
            for line in self.lines_of(payload, info["exchange"], info["routing_key"]):
                self._put_back(keys=job_index.line_keys(line), args=[dumps(payload), "front", *jobs], client=client)

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        """kombu's (5.7), run inside its MULTI, with a new delivery tag and the job placed where it goes back.

        ``leftmost``: a requeue (reject, shutdown) to the back of the line; else an
        expired delivery, to the front.
        """
        try:
            with contextlib.suppress(KeyError, TypeError):
                payload["headers"]["redelivered"] = True
                payload["properties"]["delivery_info"]["redelivered"] = True
            with contextlib.suppress(KeyError, TypeError):
                payload["properties"]["delivery_tag"] = str(uuid.uuid4())
            side, jobs = ("back" if leftmost else "front"), upload_jobs(payload)
            for line in self.lines_of(payload, exchange, routing_key):
                pipe.eval(job_index.PUSH, 4, *job_index.line_keys(line), dumps(payload), side, *jobs)
        except self.connection_errors:
            # Abort the transaction: it would otherwise remove the message from the unacked hash without requeueing it.
            raise
        except Exception:
            log.critical("Could not restore message: %r", payload, exc_info=True)

    _brpop_command: tuple[tuple[Any, ...], list[Any]] | None = None
    """The last BRPOP sent: its queues and timeout, and the command's words."""

    def _brpop_start(self, timeout: float | None = None) -> None:
        """kombu's (5.7), with the command built again only when its queues or timeout change.

        kombu sends it again at every turn of the loop that can take a message (once per
        job): a key for each queue and priority step, eight for wsupload's two queues.
        """
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        key = (*queues, timeout)
        sent = self._brpop_command
        if sent is None or sent[0] != key:
            keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]  # type: ignore[attr-defined]
            command = ["BRPOP", *keys, timeout or 0]
            if self.global_keyprefix:
                command = self.client._prefix_args(command)
            sent = self._brpop_command = (key, command)
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        self.client.connection.send_command(*sent[1])

    @cached_property
    def _put_back(self) -> Any:
        return self._create_client().register_script(PUT_BACK)  # type: ignore[attr-defined]


class Transport(kombu_redis.Transport):
    Channel = Channel
    connection_errors = (*kombu_redis.Transport.connection_errors, *REFUSED_WRITES)

    broker = ""
    """The broker's URL, which names held messages' Redis; kept: Celery clears ``client`` on a collect.

    Every URL of a list (``sentinel://…;sentinel://…``): kombu moves its connection
    from one to the next as connects fail, and they all name one Redis.
    """

    loop_thread: int | None = None
    """The thread of the event loop this transport is registered with (the consumer's)."""

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """kombu's (its sockets re-added only when needed: ``_KeptReaders``), and at each turn of
        the loop the acknowledgements owed for ``ACK_DELAY`` go to Redis."""
        super().register_with_event_loop(connection, _KeptReaders(loop, self.cycle))
        self.loop_thread = threading.get_ident()
        loop.on_tick.add(self._flush_due_acks)

    def _flush_due_acks(self) -> None:
        for channel in list(self.channels or ()):
            qos = getattr(channel, "_qos", None)
            if isinstance(qos, QoS):
                qos.flush_acks(due_only=True)  # a refusal or a lost connection is logged, not raised

    def establish_connection(self) -> Any:
        """Connected once Redis answers and accepts a write, so Celery's reconnect backoff covers both.

        Then messages held back while Redis was away go back on their queues.
        """
        client: Any = self.client
        self.broker = ";".join(client.alt) or client.as_uri(include_password=True)
        connection = super().establish_connection()
        channel = self._avail_channels[-1]  # type: ignore[attr-defined]  # just made; kombu's PING was answered
        try:
            with channel.conn_or_acquire() as client:
                client.lpushx(WRITE_PROBE_KEY, "")
            _return_held(channel, _held.get(self.broker, []))
        except BaseException:
            self._avail_channels.remove(channel)  # type: ignore[attr-defined]
            with contextlib.suppress(*channel.refused_errors):
                channel.close()
            raise
        return connection


class _KeptReaders:
    """The event loop as kombu's Redis transport is given it: ``add_reader`` skips a socket known to be in.

    kombu adds each of its sockets (BRPOP's, the fanout subscription's) to the loop at every
    turn that starts a poll, once per job: an ``epoll_ctl`` that fails with ``EEXIST``, and
    releases the interpreter lock on the way. The add is needed only after a change, and
    it is made unless all of these still hold since this fd's last add: the loop's poller
    is the same, the loop's reader entry for the fd is the one that add left, and the fd
    is the same open socket of the connection kombu polls it for. A reconnect (redis-py
    opens a new socket, maybe on the same fd number), a removal (a paused queue, a
    disconnect), a reset of the loop: each breaks one of them, and the socket is added as
    kombu adds it. Everything else is the loop's own.
    """

    def __init__(self, loop: Any, cycle: Any) -> None:
        self._loop = loop
        self._cycle = cycle
        self._added: dict[int, tuple[Any, Any, Any]] = {}
        """fd: the poller, the loop's reader entry and the socket when it was last added."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    def add_reader(self, fd: Any, callback: Any, *args: Any) -> Any:
        loop = self._loop
        added = self._added.get(fd)
        if added is not None:
            poller, entry, sock = added
            if (
                poller is loop._poller
                and loop.readers.get(fd) is entry
                and self._socket_at(fd) is sock
                and sock.fileno() == fd
            ):
                return None
        self._added.pop(fd, None)
        result = loop.add_reader(fd, callback, *args)
        sock = self._socket_at(fd)
        if sock is not None and sock.fileno() == fd:
            self._added[fd] = (loop._poller, loop.readers.get(fd), sock)
        return result

    def _socket_at(self, fd: Any) -> Any:
        """The socket of the connection kombu polls ``fd`` for (None if it cannot tell)."""
        try:
            channel, kind = self._cycle._fd_to_chan[fd]
            client = vars(channel).get("client" if kind == "BRPOP" else "subclient")  # never makes one
            return client.connection._sock
        except Exception:
            return None


def _return_held(channel: Channel, held: list[dict[str, Any]]) -> None:
    """Put held messages back in order; what Redis cannot take now stays held (and this raises)."""
    while held:
        task = (held[0].get("headers") or {}).get("id")
        try:
            channel.put_back(held[0])
        except channel.connection_errors:
            raise
        except Exception as failed:
            log.error("task %s was taken off its queue and could not be put back (%s): it is lost", task, failed)
        else:
            log.warning("task %s, held while Redis was away, is back on its queue", task)
        held.pop(0)


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """``Channel`` on kombu's Sentinel channel: its pools ask the sentinels where the master is."""


class SentinelTransport(Transport, kombu_redis.SentinelTransport):
    """``Transport`` on kombu's Sentinel transport (default port 26379, ``master_name`` required)."""

    Channel = SentinelChannel


def install() -> None:
    """Make ``redis://``, ``rediss://`` and ``sentinel://`` broker URLs use these transports in this process."""
    for scheme in ("redis", "rediss"):
        transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
    transport.TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"
