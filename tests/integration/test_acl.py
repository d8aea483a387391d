"""Least privilege: each role as a real Redis ACL user, and one RabbitMQ user, allowed and refused as documented.

The module's own redis-server (the session's Redis is untouched) holds the three
users ``wsupload acl-rules`` prints (``tasks.store.acl``, docs/security.md); a real
worker runs as the worker user against the sandbox, the producer and the CLI as theirs.
Each allowed test also reads ``ACL LOG``: what a role did, Redis refused none of it.
The RabbitMQ user lives in a vhost of this module's own, with the permissions
``tasks.store.acl.rabbitmq_permissions`` gives.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import amqp
import pytest
import redis

from tests.integration import rabbit
from tests.integration.conftest import producer_env, rabbit_url_or_skip, start_exporter, unavailable
from tests.integration.conftest import run_cli as cli
from wsupload.config import Settings
from wsupload.errors import EnqueueError
from wsupload.tasks.store import acl, keys
from wsupload.worker.app import create_app
from wsupload.worker.dev.local_services import (
    LocalRedis,
    WorkerProcess,
    free_port,
    start_redis,
    stop_group,
    wait_until,
)
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration]

PASSWORD = "acl-" + uuid.uuid4().hex
ADMIN = ("FLUSHALL", "FLUSHDB", "CONFIG GET maxmemory", "KEYS *", "DEBUG SLEEP 0", "SHUTDOWN", "ACL LIST")


@pytest.fixture(scope="module")
def acl_redis(worker_env: dict[str, str]) -> Iterator[LocalRedis]:
    """A redis-server with the three role users, for this deployment's queue names."""
    local = start_redis(extra_args=["--enable-debug-command", "yes"])  # so that the ACL is what refuses DEBUG
    settings = Settings.from_env(producer_env(worker_env))
    admin = redis.Redis.from_url(local.url)
    execute: Callable[..., Any] = admin.execute_command  # untyped in redis-py
    for role in acl.ROLES:
        execute("ACL", "SETUSER", role, *acl.setuser(acl.rules(role, settings)), f">{PASSWORD}")
    # The operator with --control: celery inspect and Flower.
    execute("ACL", "SETUSER", "control", *acl.setuser(acl.rules("operator", settings, control=True)), f">{PASSWORD}")
    admin.close()
    yield local
    local.stop()


def url_as(local: LocalRedis, user: str) -> str:
    return f"redis://{user}:{PASSWORD}@127.0.0.1:{local.port}/0"


def env_as(worker_env: dict[str, str], local: LocalRedis, user: str) -> dict[str, str]:
    """``worker_env`` with ``REDIS_URL`` logged in as ``user``; Redis as the broker (kombu's keys are the point)."""
    env = {k: v for k, v in worker_env.items() if k != "WSUPLOAD_BROKER_URL"}
    return {**env, "REDIS_URL": url_as(local, user), "WSUPLOAD_METRICS_PORT": str(free_port())}


def refusals(local: LocalRedis, *users: str) -> list[dict[Any, Any]]:
    """``ACL LOG`` entries of these users: what Redis refused them."""
    admin = redis.Redis.from_url(local.url)
    try:
        entries = admin.acl_log(count=1000)
    finally:
        admin.close()
    return [e for e in entries if e.get("username") in users]


def reset_log(local: LocalRedis) -> None:
    admin = redis.Redis.from_url(local.url)
    admin.acl_log_reset()
    admin.close()


@pytest.fixture(scope="module")
def acl_worker(
    worker_env: dict[str, str], acl_redis: LocalRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    # One process: the tests look for this worker's own node name (in the registry, `inspect`, Flower).
    env = {**env_as(worker_env, acl_redis, "worker"), "WSUPLOAD_PROCESSES": "1"}
    process = WorkerProcess(env=env, log_path=tmp_path_factory.mktemp("acl") / "worker.log", concurrency=2)
    try:
        process.start().wait_ready(create_app(Settings.from_env(producer_env(env))))
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def acl_producer(worker_env: dict[str, str], acl_redis: LocalRedis) -> Iterator[Producer]:
    made = Producer(Settings.from_env(producer_env(env_as(worker_env, acl_redis, "producer"))))
    yield made
    made.close()


def media(media_root: Path, count: int) -> list[str]:
    paths = []
    for n in range(count):
        path = media_root / f"acl-{uuid.uuid4().hex[:8]}-{n}.png"
        path.write_bytes(png_bytes(8 + n, 8))
        paths.append(str(path))
    return paths


def test_producer_and_worker_run_jobs_as_their_users_and_redis_refuses_them_nothing(
    acl_redis: LocalRedis,
    acl_worker: WorkerProcess,
    acl_producer: Producer,
    media_root: Path,
    worker_env: dict[str, str],
) -> None:
    reset_log(acl_redis)
    jobs = acl_producer.enqueue(media(media_root, 2))
    outcome = acl_producer.wait([j.job_id for j in jobs], timeout=60)
    assert not outcome.timed_out
    assert [d and d["status"] for d in outcome.docs] == ["succeeded", "succeeded"], outcome.docs
    assert [d and d["status"] for d in acl_producer.status([j.job_id for j in jobs])] == ["succeeded"] * 2

    batch = acl_producer.enqueue_batch(media(media_root, 3), name=f"acl-{uuid.uuid4().hex[:6]}", bulk=True)
    info, timed_out = acl_producer.wait_batch(batch.batch_id, timeout=60)
    assert not timed_out
    assert info["succeeded"] == 3, info
    assert acl_producer.batches.resolve(batch.name or "") == batch.batch_id

    # The CLI as the producer: ingest and watch a batch, its status, a job's status and wait.
    env = producer_env(env_as(worker_env, acl_redis, "producer"))
    folder = media_root / f"acl-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    for path in media(media_root, 2):
        Path(path).rename(folder / Path(path).name)
    name = f"acl-{uuid.uuid4().hex[:6]}"
    for args in (
        ["ingest", str(folder), "--batch", name, "--wait", "--timeout", "60"],
        ["batch", "status", name],
        ["status", jobs[0].job_id],
        ["wait", "--timeout", "30", jobs[0].job_id],
    ):
        done = cli(env, *args, timeout=90)
        assert done.returncode == 0, (args, done.stderr)

    # The worker's heartbeat and its own metrics endpoint, as it keeps them.
    port = acl_worker.env["WSUPLOAD_METRICS_PORT"]
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    assert b"wsupload_" in page
    operator = redis.Redis.from_url(url_as(acl_redis, "operator"))
    assert acl_worker.hostname.encode() in operator.zrange(keys.WORKERS, 0, -1)
    assert operator.mget([keys.worker(acl_worker.hostname)]) != [None]  # its record, as `workers` reads it
    # The lost-message sweep ran (it holds each queue's lock for an interval), refused nothing either.
    worker = redis.Redis.from_url(url_as(acl_redis, "worker"))
    queue = acl_worker.env["WSUPLOAD_QUEUE"]
    wait_until(lambda: worker.exists(keys.sweep_lock(queue)), 30, what="a sweep of the interactive queue")
    assert refusals(acl_redis, "producer", "worker") == []


def test_the_producer_cancels_a_running_job_and_the_worker_stops_it_as_their_users(
    acl_redis: LocalRedis, acl_worker: WorkerProcess, acl_producer: Producer, sandbox: SandboxServer, media_root: Path
) -> None:
    reset_log(acl_redis)
    sandbox.add_fault(Fault(stall=60))  # the upload's answer is held: the job is running when cancelled
    (job,) = acl_producer.enqueue(media(media_root, 1))
    wait_until(lambda: any(r.fault and r.fault["stall"] for r in sandbox.records), 30, what="the held upload")
    [outcome] = acl_producer.cancel([job.job_id])
    assert (outcome.outcome, outcome.status) == ("cancelled", "cancelled")
    wait_until(lambda: sandbox.records[0].client_gone, 15, what="the worker to cut the held request")
    assert refusals(acl_redis, "producer", "worker") == []


def test_the_async_producer_enqueues_and_waits_as_the_producer_user(
    acl_redis: LocalRedis, acl_worker: WorkerProcess, worker_env: dict[str, str], media_root: Path
) -> None:
    from wsupload.worker.async_producer import AsyncProducer

    reset_log(acl_redis)
    settings = Settings.from_env(producer_env(env_as(worker_env, acl_redis, "producer")))

    async def run() -> list[str | None]:
        async with AsyncProducer(settings) as producer:
            jobs = await producer.enqueue(media(media_root, 2))
            outcome = await producer.wait([j.job_id for j in jobs], timeout=60)
            return [doc["status"] if doc else None for doc in outcome.docs]

    assert asyncio.run(run()) == ["succeeded", "succeeded"]
    assert refusals(acl_redis, "producer") == []


def test_a_bad_message_goes_to_the_dead_letters_as_the_worker_user(
    acl_redis: LocalRedis, acl_worker: WorkerProcess, worker_env: dict[str, str]
) -> None:
    reset_log(acl_redis)
    worker = redis.Redis.from_url(url_as(acl_redis, "worker"))
    before = worker.llen(keys.DEAD)
    worker.lpush(worker_env["WSUPLOAD_QUEUE"], b"not a message " + uuid.uuid4().hex.encode())
    wait_until(lambda: worker.llen(keys.DEAD) > before, 20, what="the message in the dead-letter list")
    assert refusals(acl_redis, "worker") == []


@pytest.mark.parametrize("role", ["producer", "worker", "operator"])
def test_every_role_is_refused_admin_commands(acl_redis: LocalRedis, role: str) -> None:
    client = redis.Redis.from_url(url_as(acl_redis, role))
    execute: Callable[..., Any] = client.execute_command
    for command in ADMIN:
        with pytest.raises(redis.exceptions.NoPermissionError):
            execute(*command.split())
    assert client.ping()


def test_the_producer_is_refused_keys_outside_its_patterns(acl_redis: LocalRedis) -> None:
    producer = redis.Redis.from_url(url_as(acl_redis, "producer"))
    for key in ("unacked", keys.dedup("0" * 64), keys.RATE_TAT, keys.worker("w@host"), "someone-elses:key"):
        with pytest.raises(redis.exceptions.NoPermissionError):
            producer.get(key)
    with pytest.raises(redis.exceptions.NoPermissionError):
        producer.publish(keys.DEAD, "x")  # no channel but its own
    assert producer.get(keys.result("no-such-job")) is None  # its own: allowed


def test_a_refused_producer_says_so_in_one_line(
    acl_redis: LocalRedis, worker_env: dict[str, str], media_root: Path
) -> None:
    """The operator's login, given to a producer: a readable refusal, no traceback."""
    reset_log(acl_redis)
    env = producer_env(env_as(worker_env, acl_redis, "operator"))
    with pytest.raises(EnqueueError, match=r"no permissions|can't run this command"):
        Producer(Settings.from_env(env)).enqueue(media(media_root, 1))
    done = cli(env, "enqueue", *media(media_root, 1))
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("wsupload: job not enqueued:")
    assert len(done.stderr.strip().splitlines()) == 1
    # Reading documents is refused to the operator too: one line, no traceback.
    for args in (["status", "0" * 32], ["cancel", "0" * 32]):
        read = cli(env, *args)
        assert (read.returncode, read.stderr.strip().splitlines()) == (
            2,
            [read.stderr.strip()],
        ), read
        assert read.stderr.startswith("wsupload: Redis refused the command:")
        assert "no permissions" in read.stderr
    assert refusals(acl_redis, "operator"), "ACL LOG records refusals (the other tests' empty logs mean something)"


def test_the_operator_reads_stats_workers_health_and_metrics(
    acl_redis: LocalRedis, acl_worker: WorkerProcess, worker_env: dict[str, str]
) -> None:
    reset_log(acl_redis)
    env = producer_env(env_as(worker_env, acl_redis, "operator"))
    for args in (["stats"], ["stats", "--json"], ["workers"], ["health"], ["dead", "list"]):
        done = cli(env, *args)
        assert done.returncode == 0, (args, done.stderr)
    assert acl_worker.hostname in cli(env, "workers").stdout
    port = free_port()
    metrics = start_exporter(env, port)
    try:

        def scrape() -> bytes | None:
            try:
                return bytes(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read())
            except OSError:
                assert metrics.poll() is None, metrics.stderr and metrics.stderr.read()
                return None

        page = wait_until(scrape, 30, what="the metrics endpoint")
        assert worker_env["WSUPLOAD_QUEUE"].encode() in page
    finally:
        metrics.terminate()
        metrics.communicate(timeout=10)
    assert refusals(acl_redis, "operator") == []


def test_the_operator_is_refused_writes(acl_redis: LocalRedis, worker_env: dict[str, str]) -> None:
    operator = redis.Redis.from_url(url_as(acl_redis, "operator"))
    for write in (
        lambda: operator.set(keys.result("x"), "{}"),
        lambda: operator.lpush(worker_env["WSUPLOAD_QUEUE"], "x"),
        lambda: operator.delete(keys.WORKERS),
        lambda: operator.hset(keys.stats(0), "a", 1),
        lambda: operator.mget([keys.result("x")]),  # documents are the producer's to read
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            write()


def test_celery_inspect_needs_the_operators_control_rules(
    acl_redis: LocalRedis, acl_worker: WorkerProcess, worker_env: dict[str, str]
) -> None:
    inspect = ["-m", "celery", "-A", "wsupload.worker.app", "inspect", "ping", "--timeout", "5"]
    plain = producer_env(env_as(worker_env, acl_redis, "operator"))
    refused = subprocess.run([sys.executable, *inspect], env=plain, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "no permissions" in refused.stdout + refused.stderr
    reset_log(acl_redis)
    control = producer_env(env_as(worker_env, acl_redis, "control"))
    done = subprocess.run([sys.executable, *inspect], env=control, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done
    assert acl_worker.hostname in done.stdout
    assert refusals(acl_redis, "control") == []


def test_flower_watches_the_fleet_with_the_operators_control_rules(
    acl_redis: LocalRedis, acl_worker: WorkerProcess, worker_env: dict[str, str], media_root: Path, tmp_path: Path
) -> None:
    """Flower as a user starts it: it turns the worker's events on (a broadcast) and hears it on ``celeryev``."""
    from tests.integration.test_flower import FLOWER, Flower

    if importlib.util.find_spec("flower") is None:
        unavailable("flower is not installed (a dev dependency: run `make setup`)")
    reset_log(acl_redis)
    port = free_port()
    log_path = tmp_path / "flower.log"
    env = {**producer_env(env_as(worker_env, acl_redis, "control")), "FLOWER_UNAUTHENTICATED_API": "true"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*FLOWER, f"--port={port}", "--address=127.0.0.1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    flower = Flower(f"http://127.0.0.1:{port}", process, log_path)
    try:
        name = acl_worker.hostname
        try:
            wait_until(
                lambda: (flower.answering("/api/workers?status=true") or {}).get(name) is True,
                60,
                interval=0.2,
                what=f"flower to hear {name}",
            )
        except TimeoutError as exc:
            raise AssertionError(
                f"{exc}\nrefused: {refusals(acl_redis, 'control', 'worker')}\n{flower.log()}"
            ) from None
    finally:
        stop_group(process, timeout=10)
    assert refusals(acl_redis, "control", "worker") == []


# RabbitMQ


@pytest.fixture(scope="module")
def rabbit_user() -> Iterator[tuple[str, str]]:
    """A vhost of the module's own and a user in it with no permissions yet: (vhost, user)."""
    rabbit_url_or_skip()
    vhost = f"wsupload-acl-{uuid.uuid4().hex[:12]}"
    user = f"wsupload-acl-{uuid.uuid4().hex[:8]}"
    rabbit.rabbitmqctl("add_vhost", vhost)
    try:
        rabbit.rabbitmqctl("set_permissions", "-p", vhost, rabbit.USER, ".*", ".*", ".*")
        rabbit.rabbitmqctl("add_user", user, PASSWORD)
        try:
            yield vhost, user
        finally:
            rabbit.rabbitmqctl("delete_user", user)
    finally:
        rabbit.rabbitmqctl("delete_vhost", vhost)


def test_a_rabbitmq_user_limited_to_the_wsupload_queues_runs_jobs_and_is_refused_others(
    rabbit_user: tuple[str, str],
    acl_redis: LocalRedis,
    worker_env: dict[str, str],
    media_root: Path,
    tmp_path: Path,
) -> None:
    vhost, user = rabbit_user
    broker = f"amqp://{user}:{PASSWORD}@{rabbit.HOST}:{rabbit.PORT}/{vhost}"
    env = {**env_as(worker_env, acl_redis, "worker"), "WSUPLOAD_BROKER_URL": broker}
    settings = Settings.from_env(producer_env(env))
    rabbit.rabbitmqctl(*acl.rabbitmq_permissions(settings).command(vhost, user))
    reset_log(acl_redis)
    with rabbit.opening_channels(env):
        process = WorkerProcess(env=env, log_path=tmp_path / "worker.log", concurrency=2).start()
    producer = Producer(Settings.from_env(producer_env({**env, "REDIS_URL": url_as(acl_redis, "producer")})))
    try:
        process.wait_ready(create_app(settings))
        jobs = producer.enqueue(media(media_root, 2))
        outcome = producer.wait([j.job_id for j in jobs], timeout=60)
        assert [d and d["status"] for d in outcome.docs] == ["succeeded", "succeeded"], outcome.docs
    finally:
        producer.close()
        process.stop()
    assert "ACCESS_REFUSED" not in process.log_path.read_text(errors="replace")
    assert refusals(acl_redis, "producer", "worker") == []  # on RabbitMQ the worker keeps owed jobs in Redis

    # Refused: declaring a queue outside its pattern, and reading one that exists (made by guest).
    other = f"other-{uuid.uuid4().hex[:8]}"
    with amqp.Connection(
        f"{rabbit.HOST}:{rabbit.PORT}", userid=rabbit.USER, password=rabbit.PASSWORD, virtual_host=vhost
    ) as guest:
        guest.channel().queue_declare(other, durable=True, auto_delete=False)
    with amqp.Connection(f"{rabbit.HOST}:{rabbit.PORT}", userid=user, password=PASSWORD, virtual_host=vhost) as mine:
        with pytest.raises(amqp.exceptions.AccessRefused):
            mine.channel().queue_declare(f"mine-{uuid.uuid4().hex[:8]}", durable=True, auto_delete=False)
        with pytest.raises(amqp.exceptions.AccessRefused):
            mine.channel().basic_get(other)
        publisher = mine.channel()
        publisher.confirm_select()
        publisher.basic_publish(amqp.Message("x"), exchange="amq.fanout")
        with pytest.raises(amqp.exceptions.AccessRefused):
            mine.drain_events(timeout=10)  # the channel's close (ACCESS_REFUSED), not a confirm
