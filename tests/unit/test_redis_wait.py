"""Waiting for the results Redis before handing a message back: the bounded probe loop, without sleeping."""

import fakeredis
import redis

from wsupload.tasks.recovery.redis_wait import takes_writes, wait_budget, wait_for_writes
from wsupload.tasks.store import keys


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_budget_is_thirty_seconds_or_half_the_early_ack_point() -> None:
    assert wait_budget(900) == 30
    assert wait_budget(10) == 5
    assert wait_budget(0) == 0


def test_it_probes_every_second_until_redis_takes_writes() -> None:
    clock = FakeClock()
    answers = iter([False, False, True])
    assert wait_for_writes(
        lambda: next(answers), budget=30, stopping=lambda: False, sleep=clock.sleep, clock=lambda: clock.now
    )
    assert clock.slept == [1.0, 1.0, 1.0]


def test_it_gives_up_at_the_budget() -> None:
    clock = FakeClock()
    assert not wait_for_writes(
        lambda: False, budget=2.5, stopping=lambda: False, sleep=clock.sleep, clock=lambda: clock.now
    )
    assert clock.slept == [1.0, 1.0, 0.5]


def test_it_stops_waiting_when_the_worker_stops() -> None:
    clock = FakeClock()
    assert not wait_for_writes(
        lambda: False, budget=30, stopping=lambda: clock.now >= 2, sleep=clock.sleep, clock=lambda: clock.now
    )
    assert clock.slept == [1.0, 1.0]


def test_the_probe_writes_nothing_and_fails_on_a_refusing_redis(redis_client: fakeredis.FakeRedis) -> None:
    assert takes_writes(redis_client)
    assert redis_client.exists(keys.BROKER_WRITE_PROBE) == 0

    class Full(fakeredis.FakeRedis):
        def lpushx(self, *args: object, **kwargs: object) -> int:
            raise redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")

    assert not takes_writes(Full())
