"""``tasks.store.lua.LeanScript``: the per-job scripts' short path answers as redis-py's ``Script`` does.

A redis-server of the module's own (``own_redis``): these tests flush its scripts and kill its clients.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from wsupload.tasks.store import lua
from wsupload.worker.dev.local_services import LocalRedis

ECHO = "redis.call('SET', KEYS[1], ARGV[1]); return {redis.call('GET', KEYS[1]), #ARGV}"


@pytest.fixture
def client(own_redis: LocalRedis) -> redis.Redis:
    return redis.Redis.from_url(own_redis.url)


def in_use(client: redis.Redis) -> int:
    pool: Any = client.connection_pool
    return len(pool._in_use_connections)


@pytest.mark.parametrize("single", [False, True], ids=["pooled", "single connection"])
def test_it_answers_as_redis_pys_script_and_gives_the_connection_back(client: redis.Redis, single: bool) -> None:
    caller = redis.Redis(connection_pool=client.connection_pool, single_connection_client=True) if single else client
    lean, plain = lua.LeanScript(client, ECHO), client.register_script(ECHO)
    assert lean.sha == plain.sha
    answers = [script(keys=["lean:k"], args=["v", 2], client=caller) for script in (plain, lean)]
    assert answers[0] == answers[1] == [b"v", 2]
    assert in_use(client) == (1 if single else 0)  # the single client keeps its own; a pooled call gives it back
    # A generator of arguments is read once, whichever path the call takes.
    assert lean(keys=["lean:k"], args=(a for a in ["w"]), client=caller) == [b"w", 1]


def test_a_flushed_script_is_loaded_again(client: redis.Redis) -> None:
    lean = lua.LeanScript(client, ECHO)
    assert lean(keys=["lean:k"], args=["a"]) == [b"a", 1]
    client.script_flush()
    assert lean(keys=["lean:k"], args=["b"]) == [b"b", 1]
    assert client.script_exists(lean.sha) == [True]


def test_an_error_the_script_raises_is_raised_as_is(client: redis.Redis) -> None:
    lean = lua.LeanScript(client, "return redis.error_reply('WRONG no such thing')")
    with pytest.raises(redis.ResponseError, match="WRONG no such thing"):
        lean(keys=[], args=[])
    assert in_use(client) == 0


def kill_clients(url: str, name: str) -> None:
    admin = redis.Redis.from_url(url)
    killed = admin.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1, f"no {name} connection to kill"
    admin.close()


def test_a_dropped_connection_is_sent_again_with_the_clients_retries(own_redis: LocalRedis) -> None:
    client = redis.Redis.from_url(own_redis.url, retry=Retry(NoBackoff(), 1))
    caller = redis.Redis(connection_pool=client.connection_pool, single_connection_client=True)
    lean = lua.LeanScript(client, ECHO)
    assert lean(keys=["lean:k"], args=["a"], client=caller) == [b"a", 1]
    kill_clients(own_redis.url, "held")  # the single client's connection is now closed under it
    assert lean(keys=["lean:k"], args=["b"], client=caller) == [b"b", 1]


def test_a_client_that_retries_nothing_gets_the_error(own_redis: LocalRedis) -> None:
    client = redis.Redis.from_url(own_redis.url, retry=Retry(NoBackoff(), 0))
    caller = redis.Redis(connection_pool=client.connection_pool, single_connection_client=True)
    lean = lua.LeanScript(client, ECHO)
    assert lean(keys=["lean:k"], args=["a"], client=caller) == [b"a", 1]
    kill_clients(own_redis.url, "held")
    with pytest.raises(redis.ConnectionError):
        lean(keys=["lean:k"], args=["b"], client=caller)
    assert redis.Redis.from_url(own_redis.url).get("lean:k") == b"a"  # not sent a second time


def test_in_a_pipeline_it_is_redis_pys_script(client: redis.Redis) -> None:
    lean = lua.LeanScript(client, ECHO)
    pipe = client.pipeline(transaction=False)
    lean(keys=["lean:p"], args=["x"], client=pipe)
    assert pipe.execute() == [[b"x", 1]]
