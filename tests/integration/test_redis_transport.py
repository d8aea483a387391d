"""The broker transport: kombu's Redis transport, one Redis client per connection pool."""

from __future__ import annotations

from typing import Any

from wsupload.config import Settings
from wsupload.worker import redis_transport
from wsupload.worker.app import create_app


def test_the_app_uses_it_and_reuses_one_client_per_pool(redis_url: str) -> None:
    app = create_app(Settings.from_env({"REDIS_URL": redis_url}))
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        assert isinstance(channel, redis_transport.Channel)
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.ping()
        # kombu replaces the pool after a fork: the client must follow it.
        channel._disconnect_pools()  # type: ignore[attr-defined]
        with channel.conn_or_acquire() as after:
            assert after is not first
            assert after.connection_pool is channel.pool
            assert after.ping()


def test_a_client_given_is_used_as_is(redis_url: str) -> None:
    app = create_app(Settings.from_env({"REDIS_URL": redis_url}))
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        own = channel._create_client()
        with channel.conn_or_acquire(own) as got:
            assert got is own


def test_rediss_urls_keep_tls() -> None:
    app = create_app(Settings.from_env({"REDIS_URL": "rediss://redis.test:6380/0"}))
    connection: Any = app.connection_for_write()
    assert connection.transport_cls == "rediss"
    assert connection.ssl
    assert connection.transport.Channel is redis_transport.Channel
