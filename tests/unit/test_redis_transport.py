"""The Redis transport without I/O: the pause after a refused delivery, how the Sentinel variant is made up,
and the unacked entry."""

import json

from kombu import transport
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps, loads

from wsupload.worker import redis_transport
from wsupload.worker.poison import PoisonGuard
from wsupload.worker.redis_transport import pause_after


def test_pauses_double_from_one_second_up_to_sixteen() -> None:
    assert [pause_after(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 16, 16]


def test_the_sentinel_transport_is_the_same_transport_on_kombus_sentinel_classes() -> None:
    """Every override (poison guard, write probe, put-back, places) applies; kombu's pools ask the sentinels."""
    channel, transport = redis_transport.SentinelChannel, redis_transport.SentinelTransport
    assert issubclass(channel, redis_transport.Channel)
    assert issubclass(channel, kombu_redis.SentinelChannel)
    assert issubclass(channel, PoisonGuard)
    assert channel.QoS is redis_transport.QoS
    # Ours before kombu's Sentinel channel, whose pool is the one thing it changes.
    mro = channel.__mro__
    assert mro.index(redis_transport.Channel) < mro.index(kombu_redis.SentinelChannel)
    assert channel._get_pool is kombu_redis.SentinelChannel._get_pool  # type: ignore[attr-defined]
    assert issubclass(transport, redis_transport.Transport)
    assert transport.Channel is channel
    assert transport.default_port == 26379
    assert set(redis_transport.REFUSED_WRITES) <= set(transport.connection_errors)


def test_install_maps_each_scheme_kombu_is_given() -> None:
    redis_transport.install()
    aliases = transport.TRANSPORT_ALIASES
    assert aliases["redis"] == aliases["rediss"] == "wsupload.worker.redis_transport:Transport"
    assert aliases["sentinel"] == "wsupload.worker.redis_transport:SentinelTransport"


def test_the_unacked_entry_built_around_the_text_read_is_the_one_kombu_would_write() -> None:
    text = '{"body": "W1tdLHt9LHt9XQ==", "headers": {"id": "j\\u00e9"}, "properties": {"delivery_tag": "t"}}'
    payload = json.loads(text)
    kombus = redis_transport.unacked_entry(payload, None, "wsupload", "wsupload")
    assert kombus == dumps([payload, "wsupload", "wsupload"])
    built = redis_transport.unacked_entry(payload, text, "wsupload", 'a "quoted" key')
    assert loads(built) == [payload, "wsupload", 'a "quoted" key']


class _Conn:
    def __init__(self, sock: object) -> None:
        self._sock = sock


class _Client:
    def __init__(self, sock: object) -> None:
        self.connection = _Conn(sock)


class _Chan:
    def __init__(self, sock: object) -> None:
        self.client = _Client(sock)


class _Cycle:
    def __init__(self) -> None:
        self._fd_to_chan: dict[int, tuple[_Chan, str]] = {}


def test_a_socket_already_in_the_loop_is_not_added_again_until_something_changed() -> None:
    """kombu adds its BRPOP socket at every turn; only the first add after a change reaches epoll.

    A change: the loop removed it (a paused queue, a disconnect), the loop was reset, or the
    connection's socket is a new one (a reconnect), even on the same fd number.
    """
    import socket
    from typing import Any

    from kombu.asynchronous.hub import Hub

    hub = Hub()
    cycle = _Cycle()
    loop: Any = redis_transport._KeptReaders(hub, cycle)
    registered: list[int] = []

    def count_registers() -> None:
        poller: Any = hub.poller
        real = poller.register

        def register(fd: int, flags: int) -> Any:
            registered.append(fd)
            return real(fd, flags)

        poller.register = register

    count_registers()

    def on_readable(fd: int) -> None: ...

    first, peer = socket.socketpair()
    fd = first.fileno()
    cycle._fd_to_chan[fd] = (_Chan(first), "BRPOP")
    for _ in range(3):
        loop.add_reader(fd, on_readable, fd)
    assert registered == [fd]
    readers: Any = hub.readers
    assert readers[fd] == (on_readable, (fd,))

    loop.remove_reader(fd)  # everything but add_reader is the loop's own
    loop.add_reader(fd, on_readable, fd)
    loop.add_reader(fd, on_readable, fd)
    assert registered == [fd, fd]

    # A reconnect: the old socket closed (epoll forgets it), a new one on the same fd number.
    first.close()
    second, peer2 = socket.socketpair()
    if second.fileno() != fd:
        import os

        os.dup2(second.fileno(), fd)
        second.detach()
        second = socket.socket(fileno=fd)
    cycle._fd_to_chan[fd] = (_Chan(second), "BRPOP")
    loop.add_reader(fd, on_readable, fd)
    assert registered == [fd, fd, fd]
    peer2.send(b"x")
    assert (fd, 1) in [(ready, flags & 1) for ready, flags in hub.poller.poll(0)]  # polled again, not deaf

    hub.reset()  # a new poller: every socket goes into it again
    count_registers()
    loop.add_reader(fd, on_readable, fd)
    assert registered == [fd, fd, fd, fd]
    for sock in (second, peer, peer2):
        sock.close()
    hub.close()
