"""The private redis-servers the tests start: a port chosen free but taken before the bind is replaced."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.integration.conftest import unavailable
from wsupload.worker.dev import local_services
from wsupload.worker.dev.local_services import LocalRedis, PortTaken, server_pid, start_redis

pytestmark = pytest.mark.integration


@pytest.fixture
def holder() -> Iterator[LocalRedis]:
    """A redis-server holding a port, as another test's server would."""
    if not shutil.which("redis-server"):
        unavailable("no redis-server binary (run scripts/install-redis)")
    local = start_redis()
    yield local
    local.stop()


def test_a_chosen_port_another_redis_holds_is_replaced_by_a_free_one(
    holder: LocalRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if another test's server bound the port between ``free_port`` and redis-server's bind."""
    ports = iter([holder.port])
    real_free_port = local_services.free_port
    monkeypatch.setattr(local_services, "free_port", lambda: next(ports, None) or real_free_port())

    started = start_redis()
    try:
        assert started.port != holder.port
        assert started.process is not None
        assert server_pid(started.url) == started.process.pid
        assert holder.process is not None
        assert server_pid(holder.url) == holder.process.pid  # left alone
    finally:
        started.stop()


def test_a_port_the_caller_names_is_not_replaced(holder: LocalRedis) -> None:
    """A restart on its own port (to keep its data) must not end up elsewhere: it says the port is taken."""
    with pytest.raises(PortTaken, match=f"port {holder.port}"):
        start_redis(port=holder.port)
