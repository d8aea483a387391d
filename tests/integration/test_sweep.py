"""Nothing enqueued is lost: messages Redis loses between a worker's BRPOP and its record come back (issue 11).

Real redis-servers and real ``wsupload worker`` processes, whose sweeper thread
(``worker.sweeper``) runs with the default lease (6 s grace, a sweep every 3 s).
A lost message is made two ways: by taking it off its queue by hand (exactly what a
BRPOP whose record Redis never got leaves), and for real, by killing a Redis with
``appendfsync everysec`` under a batch. Every wait polls a condition with a deadline.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import producer_env
from wsupload.config import Settings
from wsupload.tasks.recovery.lost_sweep import jobs_of
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import SUCCEEDED, TERMINAL
from wsupload.worker.dev.local_services import LocalRedis, WorkerProcess, free_port, start_redis, wait_until
from wsupload.worker.dev.samples import distinct_pngs
from wsupload.worker.dev.sandbox import SandboxServer
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration]

REDELIVERED = "sweep: job "
"""How the worker's log starts the line of a job the sweep put back."""


def queues_of(worker_env: dict[str, str], redis_url: str | None = None) -> dict[str, str]:
    queue = "sweep-" + uuid.uuid4().hex[:8]
    env = {**worker_env, "WSUPLOAD_QUEUE": queue, "WSUPLOAD_BULK_QUEUE": f"{queue}.bulk"}
    return {**env, "REDIS_URL": redis_url} if redis_url else env


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(env: dict[str, str], concurrency: int = 2) -> WorkerProcess:
        process = WorkerProcess(env=env, log_path=tmp_path / f"worker-{len(started)}.log", concurrency=concurrency)
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()


def uploads_by_file(sandbox: SandboxServer) -> Counter[str | None]:
    return Counter(record.filename for record in sandbox.records)


def redelivery_lines(worker: WorkerProcess) -> list[str]:
    return [line for line in worker.log_path.read_text(errors="replace").splitlines() if REDELIVERED in line]


def test_a_message_lost_before_the_worker_started_is_uploaded_once(
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    sandbox: SandboxServer,
    media_root: Path,
) -> None:
    env = queues_of(worker_env)
    producer = Producer(Settings.from_env(producer_env(env)))
    files = distinct_pngs(media_root / "lost", 6)
    job_ids = [job.job_id for job in producer.enqueue([str(p) for p in files])]
    # The first in line, taken as BRPOP takes it, and never recorded: in no queue, not unacked.
    raw = producer.redis.rpop(env["WSUPLOAD_QUEUE"])
    assert isinstance(raw, bytes)
    assert jobs_of(raw) == [job_ids[0]]

    worker = start_worker(env)
    outcome = producer.wait(job_ids, timeout=60)
    assert not outcome.timed_out, f"{outcome.docs}\n{worker.log_tail()}"
    assert [d and d["status"] for d in outcome.docs] == [SUCCEEDED] * len(job_ids)
    assert uploads_by_file(sandbox) == Counter({path.name: 1 for path in files})
    (line,) = redelivery_lines(worker)
    assert f"sweep: job {job_ids[0]} was in no queue" in line
    assert line.endswith(f"it is back on queue {env['WSUPLOAD_QUEUE']}")
    assert producer.redis.zcard(keys.pending(env["WSUPLOAD_QUEUE"])) == 0


class Restartable:
    """A redis-server with AOF ``appendfsync everysec``, as the issue's report ran it, killed and restarted."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.server = self._start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _start(self) -> LocalRedis:
        aof = ["--appendonly", "yes", "--appendfsync", "everysec"]
        return start_redis(port=self.port, directory=self.directory, extra_args=aof)

    def kill_and_restart(self) -> None:
        self.server.kill()
        self.server = self._start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def everysec_redis(tmp_path: Path) -> Iterator[Restartable]:
    (tmp_path / "redis").mkdir()
    server = Restartable(tmp_path / "redis")
    yield server
    server.stop()


class Supervisor:
    """Watches the worker: no Redis fault may end it (nothing restarts it here)."""

    def __init__(self, start: Callable[..., WorkerProcess], env: dict[str, str]) -> None:
        self.worker = start(env, concurrency=4)

    def check(self) -> None:
        assert self.worker.process is not None
        if self.worker.process.poll() is not None:
            pytest.fail(f"the worker exited {self.worker.process.returncode}:\n{self.worker.log_tail()}")


@pytest.mark.slow
def test_redis_killed_three_times_under_a_batch_loses_no_job(
    worker_env: dict[str, str],
    everysec_redis: Restartable,
    start_worker: Callable[..., WorkerProcess],
    sandbox: SandboxServer,
    media_root: Path,
) -> None:
    env = queues_of(worker_env, everysec_redis.url)
    producer = Producer(Settings.from_env(producer_env(env)))
    supervisor = Supervisor(start_worker, env)
    supervisor.worker.wait_ready(producer.app)
    files = distinct_pngs(media_root / "everysec", 300)

    def ended(job_ids: Sequence[str], at_least: int) -> Callable[[], bool]:
        def check() -> bool:
            supervisor.check()
            try:
                docs = producer.status(job_ids)
            except (redis.ConnectionError, redis.TimeoutError):
                return False  # Redis is restarting: the producer's client reconnects by itself
            return sum(1 for d in docs if d is not None and d["status"] in TERMINAL) >= at_least

        return check

    sandbox.latency = 0.02  # uploads in flight whenever Redis is killed
    try:
        batch = producer.enqueue_batch([str(p) for p in files])
        job_ids = [job.job_id for job in batch.jobs]
        for n, done in enumerate((30, 110, 190)):
            wait_until(ended(job_ids, done), 60, interval=0.02, what=f"{done} jobs to end before kill {n}")
            everysec_redis.kill_and_restart()
        # In-flight jobs come back within a lease, lost ones after the sweep's grace (a lease too).
        wait_until(ended(job_ids, len(job_ids)), 50, interval=0.2, what="every job to end")
    finally:
        sandbox.latency = 0.0
    docs = producer.status(job_ids)
    assert [d and d["status"] for d in docs] == [SUCCEEDED] * len(job_ids), supervisor.worker.log_tail()
    info = producer.batches.get(batch.batch_id)
    assert info is not None
    assert (info["done"], info["succeeded"], info["total"]) == (300, 300, 300)
    # Every file reached the API; one whose outcome a kill erased may have been uploaded again.
    assert set(uploads_by_file(sandbox)) == {path.name for path in files}
    # The lines' records empty out with the queue: a job finished while its message was lost leaves them too.
    bulk = env["WSUPLOAD_BULK_QUEUE"]
    wait_until(lambda: producer.redis.zcard(keys.pending(bulk)) == 0, 20, what="the bulk line's records to empty")
    assert producer.redis.hlen(keys.suspects(bulk)) == 0
