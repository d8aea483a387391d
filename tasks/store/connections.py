"""The one place a Redis URL becomes a redis-py client, for results and broker alike.

``redis://``, ``rediss://`` and ``unix://`` URLs go to ``redis.Redis.from_url``.
A Sentinel URL (``config.redis_urls``) gives a client of the master the sentinels
name now: ``Sentinel(...).master_for(name, ...)``, whose connections ask the
sentinels for the master's address each time they connect, and drop a connection
that finds itself on a replica (``READONLY``, an old master demoted). So a client
built once follows a failover: calls fail with a ``ConnectionError`` while there is
no master (``MasterNotFoundError`` is one), which every caller already rides out
as it does a Redis restart, and reach the promoted replica after.

The caller's options (timeouts, ``retry``) apply to the master's connections; the
connections to the sentinels get the same socket timeouts and retry, capped at
``SENTINEL_TIMEOUT`` so that one sentinel host that does not answer cannot hold up
asking the next. When no sentinel names a master, the error says so in one short
line, each sentinel and what it answered (redis-py's own repeats every client's repr).

``PerThread`` gives each of the worker's upload threads a client holding one
connection of a shared pool, for the calls every job makes.
"""

from __future__ import annotations

import select
import socket
import threading
from typing import TYPE_CHECKING, Any

import redis
from redis._parsers.socket import SocketBuffer
from redis.sentinel import MasterNotFoundError, Sentinel

from wsupload.config.redis_urls import SentinelUrl, is_sentinel_url, parse_sentinel_url
from wsupload.tasks.observe.bounds import clip

if TYPE_CHECKING:
    import redis.asyncio

SENTINEL_TIMEOUT = 2.0
"""Seconds to connect to, or hear from, one sentinel before asking the next."""


def redis_client(url: str, **options: Any) -> redis.Redis:
    """A client for ``url``; ``options`` are redis-py's (``socket_timeout``, ``retry``, …)."""
    if is_sentinel_url(url):
        return master_client(parse_sentinel_url(url), **options)
    return redis.Redis.from_url(url, **options)


def async_redis_client(url: str, **options: Any) -> redis.asyncio.Redis:
    """``redis_client``'s twin for ``redis.asyncio`` (the asyncio producer): the same URLs, Sentinel's included."""
    import redis.asyncio  # loaded by the asyncio producer only
    import redis.asyncio.sentinel

    if is_sentinel_url(url):
        parsed = parse_sentinel_url(url)
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(parsed.sentinels), sentinel_kwargs=sentinel_options(parsed, options)
        )
        client: redis.asyncio.Redis = sentinel.master_for(parsed.master, **parsed.master_kwargs(), **options)
        return client
    return redis.asyncio.Redis.from_url(url, **options)


def master_client(url: SentinelUrl, **options: Any) -> redis.Redis:
    """A client of ``url.master`` wherever the sentinels say it is, at each (re)connect."""
    sentinel = Sentinels(list(url.sentinels), sentinel_kwargs=sentinel_options(url, options))
    client: redis.Redis = sentinel.master_for(url.master, **url.master_kwargs(), **options)  # type: ignore[no-untyped-call]
    return client


def sentinel_options(url: SentinelUrl, options: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for the connections to the sentinels: their login, bounded timeouts, the caller's retry."""
    kwargs: dict[str, Any] = dict(url.sentinel_kwargs())
    for name in ("socket_timeout", "socket_connect_timeout"):
        given = options.get(name)
        kwargs[name] = SENTINEL_TIMEOUT if given is None else min(float(given), SENTINEL_TIMEOUT)
    if "retry" in options:
        kwargs["retry"] = options["retry"]
    return kwargs


class Sentinels(Sentinel):
    """redis-py's ``Sentinel``; a master not found is one short line naming each sentinel and its answer."""

    def __init__(self, sentinels: list[tuple[str, int]], sentinel_kwargs: dict[str, Any]) -> None:
        super().__init__(sentinels, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
        self._order = threading.Lock()

    def discover_master(self, service_name: str) -> tuple[str, int]:
        """redis-py's (8.x) search: the first sentinel that vouches for the master is asked first next time."""
        said = []
        for sentinel in list(self.sentinels):
            where = "{host}:{port}".format_map(sentinel.connection_pool.connection_kwargs)
            try:
                masters: Any = sentinel.sentinel_masters()
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                # Unreachable, or answering as something else (a plain Redis, an ACL refusal): ask the next.
                said.append(f"{where}: {clip(str(exc), 120)}")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):  # type: ignore[no-untyped-call]
                with self._order:  # threads finding the master at once must not lose a sentinel
                    self.sentinels = [sentinel, *(other for other in self.sentinels if other is not sentinel)]
                return str(state["ip"]), int(state["port"])
            said.append(f"{where}: " + ("monitors no master of that name" if not state else "holds the master down"))
        raise MasterNotFoundError(f"no sentinel names a master {service_name!r} ({'; '.join(said)})")


class PerThread:
    """A client per thread, each holding one connection of ``client``'s pool; calling it gives this thread's.

    For the worker's upload threads, where every job makes the same few calls (its claim
    and its outcome, one Lua call each). Taking a connection from redis-py 8's pool and
    giving it back (a lock, its deprecation and observability wrappers) adds about half
    again to such a call's CPU: a thread that keeps its own skips that. A call on it
    behaves as one on ``client``: same connection settings and retries, a reconnect after
    an error or after the server closed the connection (a restart), a Sentinel's master found again after a failover
    (``tests/integration/test_sentinel.py`` fails over under a worker). The client is built
    at a thread's first call (it connects then, so a Redis that is down fails that call as
    any other would), and its connection goes back to the pool when the thread ends. The
    threads, a bounded pool (``WSUPLOAD_CONCURRENCY``), bound the connections held.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._local = threading.local()

    def __call__(self) -> redis.Redis:
        held: redis.Redis | None = getattr(self._local, "client", None)
        if held is None:
            held = self._local.client = redis.Redis(connection_pool=self._pool, single_connection_client=True)
        else:
            # What the pool does at every checkout: a connection an error closed connects
            # again through its own connect(), which for a Sentinel's asks where the master
            # is now. (A command sent on it would reconnect to the address it had: a master
            # that failed over.) A no-op while it is connected.
            connection: Any = held.connection
            connection.connect()
            if _stale(connection):
                # Readable while idle: the server closed it (a restart), and the next command would
                # fail on it. redis-py's pool makes the same check at each checkout.
                connection.disconnect()
                connection.connect()
        return held


def _stale(connection: Any) -> bool:
    """Whether an idle connection has anything to read: the server closed it (a restart), or bytes no call asked for.

    redis-py's own check (``can_read(timeout=0)``) makes the socket non-blocking, tries a
    read and restores its timeout: three system calls, each letting another thread take
    the GIL. On a plain TCP or unix socket one ``poll`` with no wait answers the same
    question (end of stream, an error and data all show as readable), after the bytes the
    parser may already hold. A TLS socket may hold decrypted bytes where ``poll`` cannot
    see them, and another parser keeps its own buffer: redis-py's check there.
    """
    sock = connection._sock
    buffer = getattr(connection._parser, "_buffer", None)
    if type(sock) is not socket.socket or not isinstance(buffer, SocketBuffer):
        try:
            return bool(connection.can_read(timeout=0))
        except (redis.ConnectionError, OSError):
            return True
    if buffer.unread_bytes():
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    try:
        return bool(poller.poll(0))
    except OSError:
        return True
