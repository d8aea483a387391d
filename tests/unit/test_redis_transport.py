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
