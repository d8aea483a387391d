"""One factory turns every Redis URL into a client; a Sentinel URL gives a client of the master it names.

No I/O: redis-py connects lazily, so what is checked is what each client would connect with.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from wsupload.tasks.connections import SENTINEL_TIMEOUT, redis_client
from wsupload.worker.roster import connect

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
    """``roster.connect`` (heartbeat, renewer, sweeper, health): bounded, and never retried by redis-py."""
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
