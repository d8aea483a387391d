"""A worker outlives Redis faults: restarts, a full Redis (noeviction), a replica after a failover.

Each test runs its own redis-server (AOF, ``appendfsync always``, on a fixed port
and directory so it can be restarted with its data), a real ``wsupload worker``
on it and the session's sandbox. The faults are real: SIGKILL and
``SHUTDOWN NOSAVE``, ``maxmemory`` below what Redis holds, ``REPLICAOF``. Every
wait polls a condition with a deadline; the faults themselves last as long as it
takes to see the worker meet them.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Consumer, Queue

from tests.integration.conftest import producer_env
from wsupload.config import Settings
from wsupload.tasks.store.results import SUCCEEDED, TERMINAL, JobDoc
from wsupload.worker.app import create_app
from wsupload.worker.dev.local_services import LocalRedis, WorkerProcess, free_port, start_redis, wait_until
from wsupload.worker.dev.samples import distinct_pngs
from wsupload.worker.dev.sandbox import SandboxServer
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REDELIVERY = 45
"""Seconds to wait for every job to end: jobs whose ack or last write Redis refused come
back once their lease expires (3 s here) and kombu's next scan (every 1 s)."""


@dataclass
class RestartableRedis:
    """A private redis-server that can be killed, shut down, filled up and started again."""

    directory: Path
    port: int = field(default_factory=free_port)
    server: LocalRedis | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.server = start_redis(persistent=True, port=self.port, directory=self.directory)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def kill(self) -> None:
        assert self.server is not None
        self.server.kill()

    def shutdown(self) -> None:
        assert self.server is not None
        assert self.server.process is not None
        self.client().shutdown(nosave=True)  # AOF (appendfsync always) keeps every write
        self.server.process.wait(timeout=10)

    def fill(self) -> None:
        """Hold more than ``maxmemory`` allows, so every write is refused (``noeviction``)."""
        client = self.client()
        client.mset({f"filler:{n}": b"x" * 10_000 for n in range(100)})
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "noeviction")
        # Well below what is held: what a worker frees (a popped message) cannot lift it.
        client.config_set("maxmemory", str(used - 300_000))
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("wsupload-test:full", "x")

    def free(self) -> None:
        self.client().config_set("maxmemory", "0")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    (tmp_path / "redis").mkdir()
    server = RestartableRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def env(worker_env: dict[str, str], private_redis: RestartableRedis) -> dict[str, str]:
    queue = "faults-" + uuid.uuid4().hex[:8]
    return {**worker_env, "REDIS_URL": private_redis.url, "WSUPLOAD_QUEUE": queue, "WSUPLOAD_BULK_QUEUE": f"{queue}.b"}


@pytest.fixture
def producer(env: dict[str, str]) -> Producer:
    return Producer(Settings.from_env(producer_env(env)))


@pytest.fixture
def start_worker(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        process = WorkerProcess(env=env, log_path=tmp_path / f"worker-{len(started)}.log", concurrency=2)
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def slow_sandbox(sandbox: SandboxServer) -> Iterator[SandboxServer]:
    sandbox.latency = 0.2  # uploads in flight while Redis fails under them
    try:
        yield sandbox
    finally:
        sandbox.latency = 0.0


def docs_now(producer: Producer, job_ids: Sequence[str]) -> list[JobDoc | None] | None:
    """The documents, or None while Redis is down (the producer's client reconnects by itself)."""
    try:
        return producer.status(job_ids)
    except (redis.ConnectionError, redis.TimeoutError):
        return None


def ended(producer: Producer, job_ids: Sequence[str], at_least: int | None = None) -> Callable[[], bool]:
    wanted = len(job_ids) if at_least is None else at_least

    def check() -> bool:
        docs = docs_now(producer, job_ids)
        return docs is not None and sum(1 for d in docs if d is not None and d["status"] in TERMINAL) >= wanted

    return check


def alive(worker: WorkerProcess) -> bool:
    assert worker.process is not None
    return worker.process.poll() is None


def logged(worker: WorkerProcess, text: str) -> Callable[[], bool]:
    return lambda: text in worker.log_path.read_text(errors="replace")


def assert_all_succeeded_once(
    producer: Producer, sandbox: SandboxServer, files: Sequence[Path], job_ids: list[str]
) -> None:
    """Every job succeeded with its own bytes, and none was uploaded again once it had."""
    docs = producer.status(job_ids)
    assert [d and d["status"] for d in docs] == [SUCCEEDED] * len(job_ids), docs
    records = sandbox.records
    for path, doc in zip(files, docs, strict=True):
        assert doc is not None
        mine = [r for r in records if r.filename == path.name]
        assert hashlib.sha256(path.read_bytes()).hexdigest() in {r.sha256 for r in mine}
        # finished_at is cut to the millisecond: an upload received after it is one past the next.
        finished = datetime.fromisoformat(doc["finished_at"].replace("Z", "+00:00")).timestamp() + 0.001
        # A job whose outcome Redis lost may be uploaded again; one recorded as done never is.
        assert [r for r in mine if r.received_at > finished] == [], doc["job_id"]


def test_redis_restarted_under_a_run_kills_no_worker_and_loses_no_job(
    private_redis: RestartableRedis,
    producer: Producer,
    start_worker: Callable[[], WorkerProcess],
    slow_sandbox: SandboxServer,
    media_root: Path,
) -> None:
    worker = start_worker()
    worker.wait_ready(producer.app)
    files = distinct_pngs(media_root / "restarts", 30)
    job_ids = [job.job_id for job in producer.enqueue([str(p) for p in files])]

    for n, stop in enumerate([private_redis.kill, private_redis.shutdown] * 3):
        # Each restart lands while jobs are running: after a few more have ended.
        wait_until(ended(producer, job_ids, at_least=3 * n + 1), 30, what=f"jobs to end before restart {n}")
        stop()
        private_redis.start()
        assert alive(worker), worker.log_tail()

    wait_until(ended(producer, job_ids), REDELIVERY, interval=0.2, what="every job to end")
    assert alive(worker), worker.log_tail()
    assert_all_succeeded_once(producer, slow_sandbox, files, job_ids)
    log = worker.log_path.read_text(errors="replace")
    assert "Connection to broker lost" in log  # Celery noticed the restarts...
    assert "worker_cancel_long_running_tasks_on_connection_loss" not in log  # ...without the warning about it


def test_a_full_redis_under_a_run_kills_no_worker_and_loses_no_job(
    private_redis: RestartableRedis,
    producer: Producer,
    start_worker: Callable[[], WorkerProcess],
    slow_sandbox: SandboxServer,
    media_root: Path,
) -> None:
    worker = start_worker()
    worker.wait_ready(producer.app)
    files = distinct_pngs(media_root / "full", 12)
    job_ids = [job.job_id for job in producer.enqueue([str(p) for p in files])]
    wait_until(ended(producer, job_ids, at_least=2), 30, what="the first jobs to end")

    private_redis.fill()
    # The worker meets the refusal for real (its writes, acks, deliveries) and lives on.
    wait_until(logged(worker, "used memory > 'maxmemory'"), 20, what="the worker to meet a full Redis")
    time.sleep(2)  # the fault's duration, not a wait: Redis stays full a little longer
    assert alive(worker), worker.log_tail()
    # Jobs were still to run when Redis filled up: the fault met a run, not an idle worker.
    assert any(d is not None and d["status"] not in TERMINAL for d in producer.status(job_ids))

    private_redis.free()
    wait_until(ended(producer, job_ids), REDELIVERY, interval=0.2, what="every job to end")
    assert alive(worker), worker.log_tail()
    assert_all_succeeded_once(producer, slow_sandbox, files, job_ids)


def test_a_worker_started_on_a_full_redis_waits_and_then_serves(
    private_redis: RestartableRedis,
    producer: Producer,
    start_worker: Callable[[], WorkerProcess],
    sandbox: SandboxServer,
    media_root: Path,
) -> None:
    files = distinct_pngs(media_root / "start-full", 4)
    job_ids = [job.job_id for job in producer.enqueue([str(p) for p in files])]
    private_redis.fill()

    worker = start_worker()
    # It retries connecting (a write is refused) instead of exiting, and runs nothing meanwhile.
    wait_until(logged(worker, "Cannot connect to redis"), 20, what="the worker to retry connecting")
    assert alive(worker), worker.log_tail()
    assert [d and d["status"] for d in producer.status(job_ids)] == ["queued"] * len(job_ids)

    private_redis.free()
    wait_until(ended(producer, job_ids), 30, interval=0.2, what="every job to end")
    assert alive(worker), worker.log_tail()
    assert_all_succeeded_once(producer, sandbox, files, job_ids)


def test_a_worker_rides_out_redis_turning_replica_and_back(
    private_redis: RestartableRedis,
    producer: Producer,
    start_worker: Callable[[], WorkerProcess],
    sandbox: SandboxServer,
    media_root: Path,
) -> None:
    worker = start_worker()
    worker.wait_ready(producer.app)
    client = private_redis.client()
    # A failover as the old master sees it: demoted to a replica (of a master that is not
    # there, so it keeps its data) and every write answered READONLY; then promoted again.
    client.replicaof("127.0.0.1", str(free_port()))
    wait_until(logged(worker, "read only replica"), 20, what="the worker to meet READONLY")
    assert alive(worker), worker.log_tail()
    client.replicaof("NO", "ONE")

    files = distinct_pngs(media_root / "replica", 3)
    job_ids = [job.job_id for job in producer.enqueue([str(p) for p in files])]
    wait_until(ended(producer, job_ids), 30, interval=0.2, what="every job to end")
    assert alive(worker), worker.log_tail()
    assert_all_succeeded_once(producer, sandbox, files, job_ids)


def test_closing_a_channel_after_celery_collected_its_connection_raises_no_attribute_error(
    private_redis: RestartableRedis, env: dict[str, str]
) -> None:
    """What Celery does on a lost connection: ``collect()``, then ``close()``.

    With a message delivered and not acked on one channel and another channel
    waiting in BRPOP, kombu 5.7 failed here with ``AttributeError: 'NoneType'
    object has no attribute 'hostname'`` (restoring the unacked message needs a
    pool built from the transport's client, which ``collect()`` had cleared),
    and the worker died with it.
    """
    app = create_app(Settings.from_env(producer_env(env)))
    connection = app.connection_for_read()
    channel: Any = connection.default_channel
    delivered: list[Any] = []
    Consumer(
        channel, [Queue("t1")], callbacks=[lambda _, message: delivered.append(message)], accept=["json"]
    ).consume()
    Consumer(connection.channel(), [Queue("t2")], callbacks=[lambda *_: None], accept=["json"]).consume()
    with app.connection_for_write() as writer:
        writer.SimpleQueue("t1").put({"n": 1})
    connection.drain_events(timeout=5)
    assert len(delivered) == 1
    with pytest.raises(TimeoutError):
        connection.drain_events(timeout=0.2)  # both channels now wait in BRPOP

    private_redis.kill()
    connection.collect(socket_timeout=0.1)
    connection.close()  # raised AttributeError before

    private_redis.start()
    # Not restored (Redis was down): still unacked, so kombu redelivers it after the timeout.
    assert private_redis.client().hexists("unacked", delivered[0].delivery_tag)


def test_a_threads_own_connection_closed_by_a_restart_is_replaced_before_its_next_call(
    private_redis: RestartableRedis,
) -> None:
    """A worker thread's first job after a Redis restart must not fail (and be requeued) on its old socket."""
    from wsupload.tasks.store.connections import PerThread, redis_client

    here = PerThread(redis_client(private_redis.url))
    here().set("wsupload-test:before", "1")
    private_redis.shutdown()
    private_redis.start()
    assert here().get("wsupload-test:before") == b"1"  # the old socket was closed by the server: a new one
