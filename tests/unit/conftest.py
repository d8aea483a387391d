"""Unit-test fixtures: fakeredis, and the sandbox on loopback for modules that start one (``server``)."""

from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
from prometheus_client import CollectorRegistry

from wsupload.config import Settings
from wsupload.tasks import runtime
from wsupload.tasks.job import JobRunner
from wsupload.tasks.observe import telemetry
from wsupload.tasks.store.results import ResultStore
from wsupload.worker.dev.sandbox import SandboxServer
from wsupload.worker.metrics import WorkerMetrics


@pytest.fixture
def redis_client() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis()
    yield client
    client.close()


@pytest.fixture
def store(redis_client: fakeredis.FakeRedis) -> ResultStore:
    return ResultStore(redis_client, ttl=3600)


def install_runner(store: ResultStore, monkeypatch: pytest.MonkeyPatch, client: Any, **env: str) -> JobRunner:
    """A runner on ``store`` and ``client`` made the process's own, as a worker's tasks find it (``tasks.runtime``)."""
    settings = Settings.from_env({"WAVESPEED_API_KEY": "sk-task-shell-key", **env})
    job = JobRunner(settings=settings, store=store, client=client)
    here = runtime.Runtime(settings)
    here.store, here.runner = store, job  # what the cached properties would build, made here
    monkeypatch.setattr(runtime, "current", lambda: here)
    return job


@pytest.fixture
def sandbox(server: SandboxServer) -> SandboxServer:
    """The test module's own ``server`` (a ``SandboxServer``), reset and serving the direct flow."""
    server.reset()
    server.direct = True
    return server


@pytest.fixture
def recoveries() -> Iterator[Callable[[str], float]]:
    """The worker's metrics installed for this test: ``recoveries(event)`` reads ``wsupload_lease_recoveries_total``."""
    registry = CollectorRegistry()
    telemetry.install(WorkerMetrics(registry))
    yield lambda event: registry.get_sample_value("wsupload_lease_recoveries_total", {"event": event}) or 0.0
    telemetry.install(None)
