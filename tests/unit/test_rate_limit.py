"""The fleet-wide limiter's Lua scripts, run by fakeredis (the same scripts Redis runs)."""

import fakeredis
import pytest

from wsupload.tasks.wavespeed.rate_limit import FleetLimiter, RateLimitTimeout
from wsupload.worker.dev.local_services import wait_until


def test_requests_per_second_are_spaced(redis_client: fakeredis.FakeRedis) -> None:
    limiter = FleetLimiter(redis_client, per_second=2)  # one every 500 ms
    assert limiter.try_acquire("a") == 0
    wait = limiter.try_acquire("b")
    assert 0.4 < wait <= 0.5
    # Another process sharing the Redis sees the same bucket.
    assert FleetLimiter(redis_client, per_second=2).try_acquire("c") > 0


def test_concurrent_uploads_are_capped_until_a_slot_is_released(redis_client: fakeredis.FakeRedis) -> None:
    limiter = FleetLimiter(redis_client, max_concurrent=2)
    with limiter.slot(), limiter.slot():
        assert limiter.try_acquire("third") > 0
    assert limiter.try_acquire("third") == 0


def test_a_dead_holders_slot_frees_when_its_lease_ends(redis_client: fakeredis.FakeRedis) -> None:
    limiter = FleetLimiter(redis_client, max_concurrent=1, lease_seconds=0.2)
    assert limiter.try_acquire("crashed-worker") == 0  # never released
    assert limiter.try_acquire("next") > 0
    wait_until(lambda: limiter.try_acquire("next") == 0, 5, what="the lease to expire")


def test_a_pause_holds_everyone(redis_client: fakeredis.FakeRedis) -> None:
    limiter = FleetLimiter(redis_client, per_second=1000)
    assert limiter.try_acquire("a") == 0
    limiter.pause(30)
    assert 29 < FleetLimiter(redis_client, max_concurrent=5).try_acquire("b") <= 30
    limiter.pause(1)  # a shorter pause never cuts a longer one short
    assert limiter.try_acquire("b") > 29


def test_waiting_past_the_deadline_gives_up(redis_client: fakeredis.FakeRedis) -> None:
    limiter = FleetLimiter(redis_client, per_second=1, sleep=lambda _: pytest.fail("must not wait past the deadline"))
    limiter.pause(60)
    with pytest.raises(RateLimitTimeout, match="no upload slot"), limiter.slot(deadline=0.0):
        pass


def test_without_limits_nothing_is_checked_or_paused(redis_client: fakeredis.FakeRedis) -> None:
    limiter = FleetLimiter(redis_client)
    limiter.pause(30)
    assert redis_client.keys("*") == []
    with limiter.slot(deadline=0.0):
        pass  # no wait, no Redis round trip
