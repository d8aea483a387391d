"""kombu's Redis transport, reusing one Redis client per channel.

kombu builds a new ``redis.Redis`` object for every operation that has no
client at hand (``Channel.conn_or_acquire``), which includes the two that
happen for every message: recording it as unacked on delivery and removing
it on ack. A ``redis.Redis`` costs a dict of response callbacks to build; in a
profile of a worker's main process running no-op tasks that was a tenth of its
CPU. The client is only a handle on the channel's connection pool (thread-safe,
shared already), so one per pool does the same work. kombu replaces the pool
after a fork; the client is rebuilt when that happens.

``install()`` points kombu's ``redis`` and ``rediss`` scheme names at it (kombu
derives TLS from the scheme name, so naming the class in ``broker_transport``
would lose it). ``PoisonGuard`` (``worker.poison``) moves messages kombu could
not read aside; everything else about the transport is kombu's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu import transport
from kombu.transport import redis as kombu_redis

from wsupload.worker.poison import PoisonGuard


class Channel(PoisonGuard, kombu_redis.Channel):
    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        if self._shared_client is None or self._shared_client.connection_pool is not pool:
            self._shared_client = self._create_client()  # type: ignore[attr-defined]
        yield self._shared_client


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    """Make ``redis://`` and ``rediss://`` broker URLs use this transport in this process."""
    for scheme in ("redis", "rediss"):
        transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
