"""Unit-test fixtures: fakeredis only, no network."""

from collections.abc import Iterator

import fakeredis
import pytest

from wsupload.tasks.results import ResultStore


@pytest.fixture
def redis_client() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis()
    yield client
    client.close()


@pytest.fixture
def store(redis_client: fakeredis.FakeRedis) -> ResultStore:
    return ResultStore(redis_client, ttl=3600)
