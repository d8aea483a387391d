"""One factory turns every Redis URL into a client; a Sentinel URL gives a client of the master it names.

No I/O: redis-py connects lazily, so what is checked is what each client would connect with;
``PerThread``'s held connections are fakeredis's.
"""

from __future__ import annotations

import concurrent.futures
import io
import socket
import threading
from types import SimpleNamespace
from typing import Any, cast

import fakeredis
import pytest
import redis
from redis._parsers.socket import SocketBuffer
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, SentinelConnectionPool

from wsupload.tasks.store.connections import SENTINEL_TIMEOUT, PerThread, Sentinels, _stale, redis_client
from wsupload.worker.worker_records import connect

URL = "redis+sentinel://app:pw@s1:26379,s2:26380/mymaster/4?sentinel_password=spw"


def sentinel_connections(client: redis.Redis) -> list[dict[str, Any]]:
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    return [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]


def test_a_plain_url_is_redis_pys_own() -> None:
    client = redis_client("redis://h:6380/3", socket_timeout=4)
    kwargs = client.connection_pool.connection_kwargs
    assert not isinstance(client.connection_pool, SentinelConnectionPool)
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["socket_timeout"]) == ("h", 6380, 3, 4)


def test_a_sentinel_url_gives_a_client_of_the_named_master() -> None:
    client = redis_client(URL, socket_timeout=7)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert (pool.service_name, pool.is_master) == ("mymaster", True)
    master = pool.connection_kwargs
    assert (master["db"], master["username"], master["password"], master["socket_timeout"]) == (4, "app", "pw", 7)
    sentinels = sentinel_connections(client)
    assert [(s["host"], s["port"]) for s in sentinels] == [("s1", 26379), ("s2", 26380)]
    # The sentinels' own password, never the master's; timeouts capped so a silent one cannot stall the next.
    assert {(s.get("password"), s["socket_timeout"], s["socket_connect_timeout"]) for s in sentinels} == {
        ("spw", SENTINEL_TIMEOUT, SENTINEL_TIMEOUT)
    }


def test_probes_through_sentinel_keep_their_short_timeouts_and_no_retry() -> None:
    """``worker_records.connect`` (heartbeat, renewer, sweeper, health): bounded, and never retried by redis-py."""
    client = connect(URL, timeout=0.5)
    master = client.connection_pool.connection_kwargs
    assert (master["socket_timeout"], master["socket_connect_timeout"]) == (0.5, 0.5)
    retry = master["retry"]
    assert isinstance(retry, Retry)
    assert retry.get_retries() == 0
    for sentinel in sentinel_connections(client):
        assert (sentinel["socket_timeout"], sentinel["socket_connect_timeout"]) == (0.5, 0.5)
        assert sentinel["retry"].get_retries() == 0


def test_a_sentinel_without_a_password_is_asked_without_one() -> None:
    client = redis_client("sentinel://s1;sentinel://s2/0?master_name=m", retry=Retry(NoBackoff(), 1))
    assert all(s.get("password") is None for s in sentinel_connections(client))
    assert client.connection_pool.connection_kwargs.get("password") is None


class FakeSentinel:
    """A sentinel's client as ``discover_master`` uses it: where it is, and its answer to SENTINEL MASTERS."""

    def __init__(self, port: int, answer: dict[str, Any] | Exception) -> None:
        self.connection_pool = type("Pool", (), {"connection_kwargs": {"host": "10.0.0.9", "port": port}})()
        self.answer = answer

    def sentinel_masters(self) -> dict[str, Any]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def master_state(**overrides: Any) -> dict[str, Any]:
    state = {"ip": "10.0.0.5", "port": 6380, "is_master": True, "is_sdown": False, "is_odown": False}
    return {"mymaster": {**state, "num-other-sentinels": 2, **overrides}}


def asking(*fakes: FakeSentinel) -> Sentinels:
    sentinels = Sentinels([("10.0.0.9", 1)], sentinel_kwargs={})
    sentinels.sentinels = cast(Any, list(fakes))
    return sentinels


def test_the_master_is_the_one_a_sentinel_vouches_for_and_that_sentinel_is_asked_first_next() -> None:
    down, up = FakeSentinel(1, redis.ConnectionError("refused")), FakeSentinel(2, master_state())
    sentinels = asking(down, up)
    assert sentinels.discover_master("mymaster") == ("10.0.0.5", 6380)
    assert cast(list[Any], sentinels.sentinels) == [up, down]


def test_no_master_is_one_short_line_naming_each_sentinel_and_its_answer() -> None:
    sentinels = asking(
        FakeSentinel(1, redis.ConnectionError("Error 111 connecting to 10.0.0.9:1. Connection refused.")),
        FakeSentinel(2, {}),
        FakeSentinel(3, master_state(is_odown=True)),
    )
    with pytest.raises(MasterNotFoundError) as missing:
        sentinels.discover_master("mymaster")
    assert str(missing.value) == (
        "no sentinel names a master 'mymaster' (10.0.0.9:1: Error 111 connecting to 10.0.0.9:1. Connection refused.;"
        " 10.0.0.9:2: monitors no master of that name; 10.0.0.9:3: holds the master down)"
    )
    assert isinstance(missing.value, redis.ConnectionError)  # what every caller rides out


def test_a_sentinel_that_answers_as_something_else_is_passed_over() -> None:
    plain = FakeSentinel(1, redis.ResponseError("unknown command 'SENTINEL'"))  # a plain Redis in the list
    up = FakeSentinel(2, master_state())
    sentinels = asking(plain, up)
    assert sentinels.discover_master("mymaster") == ("10.0.0.5", 6380)


def test_threads_finding_the_master_at_once_keep_every_sentinel() -> None:
    fakes = [FakeSentinel(port, master_state()) for port in range(1, 4)]
    sentinels = asking(*fakes)
    barrier = threading.Barrier(8)

    def find() -> tuple[str, int]:
        barrier.wait()
        return sentinels.discover_master("mymaster")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda _: find(), range(8))) == {("10.0.0.5", 6380)}
    assert sorted(id(s) for s in sentinels.sentinels) == sorted(id(s) for s in fakes)


def test_per_thread_gives_each_thread_its_own_held_connection_of_the_shared_pool() -> None:
    shared = fakeredis.FakeRedis()
    here = PerThread(shared)
    mine = here()
    mine.set("written", "by the first thread")
    theirs: list[redis.Redis] = []
    seen: list[bytes | None] = []

    def other_thread() -> None:
        theirs.extend([here(), here()])
        seen.append(cast(bytes | None, theirs[0].get("written")))

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert here() is mine  # the same thread: the same client, its connection held
    assert theirs[0] is theirs[1]
    assert theirs[0] is not mine
    assert mine.connection is not None
    assert mine.connection is not theirs[0].connection
    assert mine.connection_pool is shared.connection_pool
    assert seen == [b"by the first thread"]


def test_a_threads_held_connection_goes_back_to_the_pool_when_the_thread_ends() -> None:
    shared = fakeredis.FakeRedis()
    here = PerThread(shared)
    thread = threading.Thread(target=lambda: here().ping())
    thread.start()
    thread.join()
    pool = cast(Any, shared.connection_pool)
    assert not pool._in_use_connections
    assert len(pool._available_connections) == 1


def test_a_held_connection_that_an_error_closed_connects_again_before_the_next_call() -> None:
    """As a pool checkout does, so that a Sentinel's connection asks where the master is now."""
    shared = fakeredis.FakeRedis()
    here = PerThread(shared)
    held = here()
    held.ping()
    connection = held.connection
    assert connection is not None
    connection.disconnect()  # type: ignore[no-untyped-call]  # what redis-py does to a connection a call failed on
    assert not connection.is_connected
    assert here() is held
    assert connection.is_connected


def test_an_idle_plain_socket_is_stale_once_it_reads_an_end_or_bytes_or_the_parser_holds_some() -> None:
    """``PerThread``'s one-poll check answers as redis-py's ``can_read(timeout=0)`` does, without reading."""
    ours, server = socket.socketpair()
    with ours, server:
        buffer = SocketBuffer(ours, 65536, 5.0)
        connection = SimpleNamespace(_sock=ours, _parser=SimpleNamespace(_buffer=buffer))
        assert not _stale(connection)
        buffer._buffer.write(b"+OK\r\n")  # a reply the parser read but no call took
        buffer._buffer.seek(0)
        assert _stale(connection)
        buffer._buffer.seek(0, io.SEEK_END)
        assert not _stale(connection)
        server.sendall(b"+PONG\r\n")  # bytes no call asked for
        assert _stale(connection)
        assert ours.recv(64) == b"+PONG\r\n"  # the check only looked
        server.close()  # the server went away (a restart)
        assert _stale(connection)
