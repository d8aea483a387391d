"""The broker transport: kombu's Redis transport, one Redis client per connection pool."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

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


def fresh_channel(connection: Any, queue: str, messages: int) -> Any:
    """The connection's channel, ``queue`` declared with ``messages`` messages on it, no unacked entry left over."""
    channel = connection.default_channel
    channel.queue_declare(queue)
    with channel.conn_or_acquire() as client:
        client.delete(channel.unacked_key, channel.unacked_index_key)
    for n in range(messages):
        channel.basic_publish(channel.prepare_message(f"m{n}"), exchange="", routing_key=queue)
    return channel


@contextmanager
def on_the_loop_thread(redis_url: str, queue: str, messages: int) -> Iterator[tuple[Any, Any]]:
    """A ``fresh_channel`` and its transport, which takes this thread for its event loop's."""
    app = create_app(Settings.from_env({"REDIS_URL": redis_url}))
    with app.connection_for_write() as connection:
        channel = fresh_channel(connection, queue, messages)
        transport: Any = connection.transport
        transport.loop_thread = threading.get_ident()  # as if this thread ran the event loop
        yield channel, transport


def unacked_tags(channel: Any) -> set[str]:
    with channel.conn_or_acquire() as client:
        return {tag.decode() for tag in client.hkeys(channel.unacked_key)}


def test_an_ack_on_the_loop_thread_rides_with_the_next_delivery_and_is_written_by_close(redis_url: str) -> None:
    """One round trip a job fewer; nothing owed is lost at close, nor put back on the queue."""
    with on_the_loop_thread(redis_url, "acks-ride", 3) as (channel, transport):
        first = channel.basic_get("acks-ride")
        first.ack()
        assert unacked_tags(channel) == {first.delivery_tag}  # owed, not written yet
        second = channel.basic_get("acks-ride")
        assert unacked_tags(channel) == {second.delivery_tag}  # the delivery carried the ack

        transport.loop_thread = None  # another thread's ack is written at once
        second.ack()
        assert unacked_tags(channel) == set()

        transport.loop_thread = threading.get_ident()
        third = channel.basic_get("acks-ride")
        third.ack()
        assert unacked_tags(channel) == {third.delivery_tag}
        channel.close()
    client = redis.Redis.from_url(redis_url)
    assert (client.hlen("unacked"), client.zcard("unacked_index")) == (0, 0)
    assert client.llen("acks-ride") == 0  # acknowledged, so not restored by the close
    client.close()


def test_the_loop_threads_scripts_keep_one_connection_and_a_dropped_one_costs_no_delivery(redis_url: str) -> None:
    """No pool checkout per message on the event loop; a connection Redis closed is replaced at its next call."""
    with on_the_loop_thread(redis_url, "loop-connection", 2) as (channel, _):
        first = channel.basic_get("loop-connection")
        loop_client = channel.scripts_client()
        with channel.conn_or_acquire() as client:
            assert loop_client is not client  # other threads share the pooled client
            assert loop_client.connection is not None
            client.client_kill_filter(_id=loop_client.client_id())  # as a Redis restart or idle timeout would

        second = channel.basic_get("loop-connection")
        assert channel.scripts_client() is loop_client
        assert unacked_tags(channel) == {first.delivery_tag, second.delivery_tag}
        assert channel.qos._paused_until == 0.0  # not handed back: no pause
        channel.close()
        assert channel._loop_client is None
