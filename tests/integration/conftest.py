"""Real parts: a private redis-server, a `wsupload worker` process and the sandbox over HTTP.

A service that cannot be had fails the run in CI (CI=true) and skips locally,
saying why. Every worker and producer here share one private Redis; each test
gets a clean sandbox (no faults, no records).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from config import Settings
from tasks.results import JobDoc
from worker.local_services import LocalRedis, WorkerProcess, redis_answers, start_redis
from worker.producer import Job, Producer
from worker.sandbox import SandboxServer

API_KEY = "sk-integration-" + uuid.uuid4().hex
WORKER_MAX_BYTES = 1024 * 1024
SANDBOX_MAX_BYTES = 64 * 1024
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing service is a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if shutil.which("redis-server"):
        local: LocalRedis = start_redis()
        yield local.url
        local.stop()
        return
    url = os.environ.get("WSUPLOAD_TEST_REDIS_URL")
    if url and redis_answers(url):
        yield url
        return
    unavailable("no redis-server binary (run scripts/install-redis) and WSUPLOAD_TEST_REDIS_URL is not reachable")


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    storage = tmp_path_factory.mktemp("sandbox-storage")
    with SandboxServer(api_key=API_KEY, storage_dir=storage, max_bytes=SANDBOX_MAX_BYTES) as server:
        yield server


@pytest.fixture(autouse=True)
def clean_sandbox(sandbox: SandboxServer) -> None:
    sandbox.reset()


@pytest.fixture(scope="session")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media").resolve()


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("WSUPLOAD_", "WAVESPEED_", "REDIS_URL"))}


@pytest.fixture(scope="session")
def worker_env(redis_url: str, sandbox: SandboxServer, media_root: Path) -> dict[str, str]:
    return {
        **clean_env(),
        "REDIS_URL": redis_url,
        "WAVESPEED_BASE_URL": sandbox.url,
        "WAVESPEED_API_KEY": API_KEY,
        "WSUPLOAD_QUEUE": "it-" + uuid.uuid4().hex[:8],
        "WSUPLOAD_MAX_ATTEMPTS": "3",
        "WSUPLOAD_BACKOFF_BASE": "0.05",
        "WSUPLOAD_BACKOFF_MAX": "0.2",
        "WSUPLOAD_RETRY_AFTER_MAX": "5",
        "WSUPLOAD_MAX_BYTES": str(WORKER_MAX_BYTES),
        "WSUPLOAD_ALLOWED_ROOTS": str(media_root),
        "WSUPLOAD_VISIBILITY_TIMEOUT": "20",
        "WSUPLOAD_CONNECT_TIMEOUT": "2",
        "WSUPLOAD_READ_TIMEOUT": "1.5",
    }


def producer_env(worker_env: dict[str, str]) -> dict[str, str]:
    """What a producer sees: everything but the API key."""
    return {k: v for k, v in worker_env.items() if k != "WAVESPEED_API_KEY"}


@pytest.fixture(scope="session")
def producer(worker_env: dict[str, str]) -> Producer:
    return Producer(Settings.from_env(producer_env(worker_env)))


@pytest.fixture(scope="session")
def worker(
    worker_env: dict[str, str], producer: Producer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    log = tmp_path_factory.mktemp("logs") / "worker.log"
    process = WorkerProcess(env=worker_env, log_path=log, concurrency=2).start()
    try:
        process.wait_ready(producer.app)
        yield process
    finally:
        process.stop()


def run_jobs(producer: Producer, sources: Sequence[str], timeout: float = 60) -> tuple[list[Job], list[JobDoc]]:
    jobs = producer.enqueue(list(sources))
    outcome = producer.wait([j.job_id for j in jobs], timeout=timeout)
    assert not outcome.timed_out, f"jobs did not finish in {timeout} s: {outcome.docs}"
    docs = [doc for doc in outcome.docs if doc is not None]
    assert len(docs) == len(jobs)
    return jobs, docs


def run_one(producer: Producer, source: str | Path, timeout: float = 60) -> JobDoc:
    return run_jobs(producer, [str(source)], timeout)[1][0]


def unacked_messages(producer: Producer) -> list[Any]:
    """kombu's in-flight messages (delivered, not yet acknowledged)."""
    return list(producer.redis.hvals("unacked"))
