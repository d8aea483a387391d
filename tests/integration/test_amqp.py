"""RabbitMQ as the broker, against the RabbitMQ on 127.0.0.1:5672 in a vhost of this module's own.

Results, documents and batch records stay in the session's Redis; messages go
through quorum queues. Each test runs its own workers on fresh queues with a 3 s
lease (``worker_env``); waits poll conditions with deadlines, nothing is timed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import rabbit
from tests.integration.conftest import finished, producer_env
from wsupload.config import Settings
from wsupload.errors import EnqueueError
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import JobDoc
from wsupload.tasks.wire import encode
from wsupload.tasks.wire.amqp_publisher import Publisher, ready_messages
from wsupload.worker.dev.local_services import LocalRedis, WorkerProcess, wait_until
from wsupload.worker.dev.samples import distinct_pngs, png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration]

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def amqp_env(worker_env: dict[str, str], rabbit_vhost: str) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {
        **worker_env,
        "WSUPLOAD_BROKER_URL": rabbit_vhost,
        "WSUPLOAD_QUEUE": f"amqp-{suffix}",
        "WSUPLOAD_BULK_QUEUE": f"amqp-{suffix}.bulk",
        # The sandbox holds answers open while we kill and stall workers.
        "WSUPLOAD_READ_TIMEOUT": "60",
    }


@pytest.fixture
def amqp_producer(amqp_env: dict[str, str]) -> Iterator[Producer]:
    producer = Producer(Settings.from_env(producer_env(amqp_env)))
    yield producer
    producer.close()


@pytest.fixture
def start_worker(
    amqp_env: dict[str, str], amqp_producer: Producer, sandbox: SandboxServer, tmp_path: Path
) -> Iterator[StartWorker]:
    started: list[WorkerProcess] = []

    def start(concurrency: int = 1, **env: str) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        process = WorkerProcess(env={**amqp_env, **env}, log_path=log, concurrency=concurrency)
        with rabbit.opening_channels(process.env):
            started.append(process.start())
            process.wait_ready(amqp_producer.app)
        return process

    yield start
    sandbox.release_stalls()  # a worker stopping waits for its stalled upload's answer: answer it now
    for process in started:
        if process.process is not None and process.process.poll() is None:
            os.killpg(process.process.pid, signal.SIGCONT)
        process.stop()


@pytest.fixture
def png(media_root: Path) -> Path:
    path = media_root / f"amqp-{uuid.uuid4().hex[:6]}.png"
    path.write_bytes(png_bytes(32, 32))
    return path


def publish(producer: Producer, message: encode.AmqpMessage) -> None:
    """Publish one hand-built message, as a producer in another language would (no document written)."""
    publisher = Publisher(str(producer.settings.broker_url))
    try:
        publisher.publish([message])
    finally:
        publisher.close()


def status_of(producer: Producer, job_id: str) -> str | None:
    (doc,) = producer.status([job_id])
    return None if doc is None else doc["status"]


def owed_jobs(producer: Producer) -> list[bytes]:
    settings = producer.settings
    jobs: list[bytes] = []
    for queue in (settings.queue, settings.bulk_queue):
        jobs += [job for job in producer.redis.zrange(keys.owed(queue), 0, -1) if isinstance(job, bytes)]
    return jobs


def test_a_batch_on_rabbitmq_all_succeeds_with_one_document_each(
    amqp_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, media_root: Path
) -> None:
    start_worker(concurrency=4)
    paths = distinct_pngs(media_root / "amqp-batch", 20)
    batch = amqp_producer.enqueue_batch([str(p) for p in paths], options={"dedup": False})
    assert owed_jobs(amqp_producer) == []  # published and confirmed before enqueue returned
    outcome = amqp_producer.wait([job.job_id for job in batch.jobs], timeout=60)
    assert outcome.all_succeeded, outcome.docs
    assert {doc["generation"] for doc in outcome.docs if doc} == {1}
    assert len(sandbox.records) == 20
    info = amqp_producer.batches.get(batch.batch_id)
    assert info is not None
    assert (info["done"], info["succeeded"]) == (20, 20)


def test_each_quorum_queue_is_bound_only_to_its_own_name(
    amqp_producer: Producer, amqp_env: dict[str, str], start_worker: StartWorker
) -> None:
    # A message Celery sends to one queue's exchange and routing key must not reach the other queue.
    start_worker()
    vhost = amqp_env["WSUPLOAD_BROKER_URL"].rsplit("/", 1)[1]
    listed = rabbit.rabbitmqctl("list_bindings", "-p", vhost, "source_name", "destination_name", "routing_key")
    bindings = {tuple(line.split("\t")) for line in listed.splitlines() if line.strip()}
    for queue in (amqp_producer.settings.queue, amqp_producer.settings.bulk_queue):
        routes = {(source, key) for source, destination, key in bindings if destination == queue}
        assert routes == {("", queue), (queue, queue)}, bindings
    types = rabbit.rabbitmqctl("list_queues", "-p", vhost, "name", "type")
    assert {tuple(line.split("\t")) for line in types.splitlines() if line.strip()} >= {
        (amqp_producer.settings.queue, "quorum"),
        (amqp_producer.settings.bulk_queue, "quorum"),
    }


def test_the_hand_built_amqp_message_matches_celerys(amqp_producer: Producer) -> None:
    from kombu import Connection

    queue = amqp_producer.settings.queue
    job_id, options = uuid.uuid4().hex, {"dedup": True, "callback_url": "https://hooks.test/x"}
    app = amqp_producer.app
    app.send_task(
        "wsupload.upload", args=[job_id, "/m/a.png"], kwargs={"options": options}, task_id=job_id, queue=queue
    )
    publisher = Publisher(str(amqp_producer.settings.broker_url))
    publisher.publish([encode.amqp_message(job_id, "/m/a.png", queue, options)])
    publisher.close()
    with Connection(str(amqp_producer.settings.broker_url)) as connection:
        channel: Any = connection.default_channel
        celerys, ours = channel.basic_get(queue, no_ack=True), channel.basic_get(queue, no_ack=True)
    assert celerys is not None
    assert ours is not None
    assert ours.body == celerys.body
    assert ours.delivery_info["exchange"] == celerys.delivery_info["exchange"] == ""
    assert ours.delivery_info["routing_key"] == celerys.delivery_info["routing_key"] == queue
    theirs_props, our_props = dict(celerys.properties), dict(ours.properties)
    theirs_headers, our_headers = theirs_props.pop("application_headers"), our_props.pop("application_headers")
    assert set(our_props) == set(theirs_props)
    for key in our_props:
        if key != "reply_to":  # the sending app's id
            assert our_props[key] == theirs_props[key], key
    differ = {"origin", "argsrepr", "kwargsrepr"}  # descriptive only: the process, and repr details
    for key, value in our_headers.items():
        assert key in theirs_headers, key
        if key not in differ:
            assert value == theirs_headers[key], key


def test_an_interactive_upload_overtakes_a_bulk_backlog_on_rabbitmq(
    amqp_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, media_root: Path
) -> None:
    paths = distinct_pngs(media_root / "amqp-backlog", 200)
    urgent = media_root / "amqp-urgent.png"
    urgent.write_bytes(png_bytes(3, 3))
    start_worker(concurrency=1)
    sandbox.latency = 0.02  # 200 bulk uploads take about 4 s one at a time
    try:
        batch = amqp_producer.enqueue_batch([str(p) for p in paths], options={"dedup": False})
        wait_until(lambda: len(sandbox.records) >= 3, 30, what="the backlog to start")
        (job,) = amqp_producer.enqueue([str(urgent)])
        outcome = amqp_producer.wait([job.job_id], timeout=30)
        info = amqp_producer.batches.get(batch.batch_id)
    finally:
        sandbox.latency = 0.0
    assert outcome.all_succeeded
    assert info is not None
    # Taken next, not after the other ~195: at most the upload in hand and one more finished first.
    assert info["done"] <= 3 + 2, info


@pytest.mark.slow
def test_worker_sigkilled_mid_upload_on_rabbitmq_its_job_completes_once_elsewhere(
    amqp_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, png: Path
) -> None:
    first = start_worker()
    sandbox.add_fault(Fault(stall=30))  # the first upload hangs at the server
    (job,) = amqp_producer.enqueue([str(png)])
    wait_until(lambda: len(sandbox.records) == 1, 30, what="the upload to reach the sandbox")
    second = start_worker()
    first.kill()  # its connection drops: RabbitMQ requeues the message it held

    doc: JobDoc = wait_until(finished(amqp_producer, job.job_id), 30, interval=0.2, what="the job to finish")
    assert (doc["status"], doc["worker"], doc["generation"]) == ("succeeded", second.hostname, 2)
    assert len(sandbox.records) == 2
    assert sandbox.records[-1].sha256 == hashlib.sha256(png.read_bytes()).hexdigest()


@pytest.mark.slow
def test_on_stop_a_job_still_running_after_the_grace_goes_back_to_rabbitmq_at_once(
    amqp_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, png: Path
) -> None:
    stopping = start_worker(WSUPLOAD_STOP_GRACE="1")
    sandbox.add_fault(Fault(stall=40))  # cannot finish within the grace
    (job,) = amqp_producer.enqueue([str(png)])
    wait_until(lambda: len(sandbox.records) == 1, 30, what="the upload to reach the sandbox")
    taker = start_worker()
    assert stopping.process is not None
    os.killpg(stopping.process.pid, signal.SIGTERM)

    doc: JobDoc = wait_until(finished(amqp_producer, job.job_id), 30, interval=0.2, what="the job to finish")
    assert (doc["status"], doc["worker"], doc["generation"]) == ("succeeded", taker.hostname, 2)
    log = stopping.log_path.read_text()
    assert f"job {job.job_id}: still running after the stop grace; handed back to its queue" in log
    assert stopping.process.poll() is None  # still waiting for its stalled answer: the reject came first


@pytest.mark.slow
def test_a_job_longer_than_the_consumer_timeout_runs_once_without_its_channel_closed(
    amqp_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, png: Path
) -> None:
    with rabbit.fast_channel_ticks():
        with rabbit.short_consumer_timeout(10_000):  # these two workers' channels keep it
            runner = start_worker(WSUPLOAD_AMQP_CONSUMER_TIMEOUT="10")
            idle = start_worker(WSUPLOAD_AMQP_CONSUMER_TIMEOUT="10")  # would take a requeued message
        sandbox.add_fault(Fault(stall=25))  # the answer comes well after the timeout
        (job,) = amqp_producer.enqueue([str(png)])
        doc: JobDoc = wait_until(finished(amqp_producer, job.job_id), 60, interval=0.2, what="the job to finish")
    assert (doc["status"], doc["generation"]) == ("succeeded", 1)
    assert len(sandbox.records) == 1
    log = runner.log_path.read_text()
    assert f"job {job.job_id}: held" in log
    assert "acknowledged early" in log
    for text in (log, idle.log_path.read_text()):
        assert "PRECONDITION_FAILED" not in text
        assert "delivery acknowledgement on channel" not in text
        assert "Connection to broker lost" not in text
    wait_until(lambda: owed_jobs(amqp_producer) == [], 10, what="the owed entry to be removed")


@pytest.mark.slow
def test_a_worker_killed_after_an_early_ack_its_job_comes_back_through_the_sweep(
    amqp_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, png: Path
) -> None:
    first = start_worker(WSUPLOAD_AMQP_CONSUMER_TIMEOUT="10")  # acknowledges at 5 s
    sandbox.add_fault(Fault(stall=40))
    (job,) = amqp_producer.enqueue([str(png)])
    wait_until(lambda: "acknowledged early" in first.log_path.read_text(), 30, what="the early acknowledgement")
    assert owed_jobs(amqp_producer) == [job.job_id.encode()]
    second = start_worker()
    first.kill()  # nothing on RabbitMQ to requeue: the owed entry, no longer renewed, brings the job back

    doc: JobDoc = wait_until(finished(amqp_producer, job.job_id), 40, interval=0.2, what="the job to finish")
    assert (doc["status"], doc["worker"], doc["generation"]) == ("succeeded", second.hostname, 2)
    assert len(sandbox.records) == 2
    assert "published again" in second.log_path.read_text()
    wait_until(lambda: owed_jobs(amqp_producer) == [], 10, what="the owed entry to be removed")


@pytest.mark.slow
def test_a_batch_whose_publish_fails_after_the_commit_is_published_by_the_sweep(
    amqp_producer: Producer, amqp_env: dict[str, str], start_worker: StartWorker, media_root: Path
) -> None:
    worker = start_worker()
    broken = {**producer_env(amqp_env), "WSUPLOAD_AMQP_PUBLISH_GRACE": "5"}
    broken["WSUPLOAD_BROKER_URL"] = rabbit.url_for(amqp_env["WSUPLOAD_BROKER_URL"].rsplit("/", 1)[1], port=1)
    paths = distinct_pngs(media_root / "amqp-unpublished", 3)
    with pytest.raises(EnqueueError) as caught:
        Producer(Settings.from_env(broken)).enqueue_batch([str(p) for p in paths], options={"dedup": False})
    error = caught.value
    assert error.queued
    assert error.batch_id is not None
    assert "queued but not published" in str(error)
    assert "\n" not in str(error)
    assert sorted(owed_jobs(amqp_producer)) == sorted(job.job_id.encode() for job in error.jobs)

    outcome = amqp_producer.wait([job.job_id for job in error.jobs], timeout=60)
    assert outcome.all_succeeded, outcome.docs
    assert "published again" in worker.log_path.read_text()
    info = amqp_producer.batches.get(error.batch_id)
    assert info is not None
    assert (info["done"], info["succeeded"]) == (3, 3)
    wait_until(lambda: owed_jobs(amqp_producer) == [], 10, what="the owed entries to be removed")


@pytest.mark.slow
def test_a_job_finishing_within_the_stop_grace_is_acknowledged_though_the_stop_outlasts_two_heartbeats(
    amqp_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, png: Path
) -> None:
    stopping = start_worker(WSUPLOAD_STOP_GRACE="40")
    sandbox.add_fault(Fault(stall=25))  # RabbitMQ closes a connection silent for two heartbeats (20 s)
    (job,) = amqp_producer.enqueue([str(png)])
    wait_until(lambda: len(sandbox.records) == 1, 30, what="the upload to reach the sandbox")
    assert stopping.process is not None
    os.killpg(stopping.process.pid, signal.SIGTERM)
    assert stopping.process.wait(timeout=60) == 0

    doc = amqp_producer.status([job.job_id])[0]
    assert doc is not None
    assert (doc["status"], doc["generation"]) == ("succeeded", 1)
    log = stopping.log_path.read_text()
    assert "Couldn't ack" not in log
    assert "Connection reset by peer" not in log
    settings = amqp_producer.settings
    # Acknowledged: nothing went back to the queue for a worker to take again.
    assert ready_messages(str(settings.broker_url), [settings.queue, settings.bulk_queue]) == [0, 0]


def test_stats_reads_the_queue_depths_from_rabbitmq(amqp_producer: Producer, amqp_env: dict[str, str]) -> None:
    amqp_producer.enqueue(["/m/a.png", "/m/b.png", "/m/c.png"])  # no worker: they wait
    amqp_producer.enqueue(["/m/d.png"], bulk=True)
    env = producer_env(amqp_env)
    command = [sys.executable, "-m", "wsupload.worker.cli", "stats", "--json"]
    answer = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert answer.returncode == 0, answer.stderr
    queues = {queue["name"]: queue["depth"] for queue in json.loads(answer.stdout)["queues"]}
    assert queues == {amqp_env["WSUPLOAD_QUEUE"]: 3, amqp_env["WSUPLOAD_BULK_QUEUE"]: 1}


def test_a_producer_whose_connection_rabbitmq_closed_reconnects_before_publishing(
    amqp_producer: Producer, amqp_env: dict[str, str]
) -> None:
    from kombu import pools

    amqp_producer.enqueue(["/m/a.png"])  # opens the connection the producer keeps
    vhost = amqp_env["WSUPLOAD_BROKER_URL"].rsplit("/", 1)[1]
    rabbit.rabbitmqctl("close_all_connections", "-p", vhost, "test: the broker restarted")
    # kombu keeps Celery apps' connections in process-wide pools keyed by URL: the next test's
    # readiness ping (app.control) would meet the one closed here. Drop them all.
    pools.reset()
    wait_until(lambda: "test: the broker restarted" not in rabbit.rabbitmqctl("list_connections", "-p", vhost), 10)
    jobs = amqp_producer.enqueue(["/m/b.png", "/m/c.png"])
    assert len(jobs) == 2
    assert owed_jobs(amqp_producer) == []
    settings = amqp_producer.settings
    assert ready_messages(str(settings.broker_url), [settings.queue]) == [3]


@pytest.mark.slow
def test_a_job_sent_with_a_task_id_of_its_own_comes_back_through_the_sweep_after_its_worker_dies(
    amqp_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, png: Path
) -> None:
    first = start_worker(WSUPLOAD_AMQP_CONSUMER_TIMEOUT="10")  # acknowledges at 5 s
    sandbox.add_fault(Fault(stall=40))
    job_id = uuid.uuid4().hex
    # As Celery's send_task without task_id publishes it: a task id of its own, the job in args[0].
    message = encode.amqp_message(job_id, str(png), amqp_producer.settings.queue)
    task_id = str(uuid.uuid4())
    publish(
        amqp_producer,
        dataclasses.replace(
            message,
            headers={**message.headers, "id": task_id, "root_id": task_id},
            properties={**message.properties, "correlation_id": task_id},
        ),
    )
    wait_until(lambda: "acknowledged early" in first.log_path.read_text(), 30, what="the early acknowledgement")
    assert owed_jobs(amqp_producer) == [job_id.encode()]
    second = start_worker()
    first.kill()

    doc: JobDoc = wait_until(finished(amqp_producer, job_id), 40, interval=0.2, what="the job to finish")
    assert (doc["status"], doc["worker"], doc["generation"]) == ("succeeded", second.hostname, 2)
    assert "published again" in second.log_path.read_text()
    wait_until(lambda: owed_jobs(amqp_producer) == [], 10, what="the owed entry to be removed")


@pytest.mark.slow
def test_only_a_running_job_is_acknowledged_early_a_waiting_message_goes_back_to_its_queue(
    amqp_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, media_root: Path
) -> None:
    worker = start_worker(concurrency=1, WSUPLOAD_AMQP_CONSUMER_TIMEOUT="10")  # early acks at 5 s
    sandbox.add_fault(Fault(stall=40))  # the one thread stays busy with the first job
    paths = [str(path) for path in distinct_pngs(media_root / f"amqp-wait-{uuid.uuid4().hex[:6]}", 3)]
    (first,) = amqp_producer.enqueue(paths[:1])
    wait_until(lambda: "acknowledged early" in worker.log_path.read_text(), 30, what="the first job's early ack")
    amqp_producer.enqueue(paths[1:])  # its freed prefetch slot lets one in, to wait for the thread

    wait_until(
        lambda: "goes back to its queue" in worker.log_path.read_text() or len(owed_jobs(amqp_producer)) > 1,
        30,
        what="the waiting message to fall due",
    )
    assert owed_jobs(amqp_producer) == [first.job_id.encode()]  # no waiting job was acknowledged early


@pytest.mark.slow
def test_a_job_without_a_queued_document_comes_back_through_the_sweep_with_its_callback(
    amqp_producer: Producer, start_worker: StartWorker, sandbox: SandboxServer, png: Path
) -> None:
    first = start_worker(WSUPLOAD_AMQP_CONSUMER_TIMEOUT="10")  # acknowledges at 5 s
    sandbox.add_fault(Fault(stall=40))
    job_id = uuid.uuid4().hex
    # A producer in another language: the message only, no queued document (optional in the wire contract).
    options = {"callback_url": f"{sandbox.url}/hook"}
    publish(amqp_producer, encode.amqp_message(job_id, str(png), amqp_producer.settings.queue, options))
    wait_until(lambda: "acknowledged early" in first.log_path.read_text(), 30, what="the early acknowledgement")
    second = start_worker()
    first.kill()

    doc: JobDoc = wait_until(finished(amqp_producer, job_id), 40, interval=0.2, what="the job to finish")
    assert (doc["status"], doc["worker"], doc["generation"]) == ("succeeded", second.hostname, 2)
    # Published again with its options: the second delivery queues the job's callback.
    wait_until(lambda: amqp_producer.redis.exists(keys.callback(job_id)), 30, what="the callback's record")
    wait_until(lambda: owed_jobs(amqp_producer) == [], 10, what="the owed entry and its call to be removed")
    settings = amqp_producer.settings
    assert not amqp_producer.redis.exists(keys.owed_calls(settings.queue), keys.owed_calls(settings.bulk_queue))


@pytest.mark.slow
def test_a_job_whose_redis_is_full_waits_for_it_once_then_goes_back_and_succeeds(
    amqp_env: dict[str, str], start_worker: StartWorker, own_redis: LocalRedis, sandbox: SandboxServer, png: Path
) -> None:
    import redis

    producer = Producer(Settings.from_env(producer_env({**amqp_env, "REDIS_URL": own_redis.url})))
    store = redis.Redis.from_url(own_redis.url)
    worker = start_worker(REDIS_URL=own_redis.url)
    sandbox.add_fault(Fault(stall=10))  # the upload is in flight when Redis fills up
    try:
        (job,) = producer.enqueue([str(png)])
        wait_until(lambda: status_of(producer, job.job_id) == "running", 30, interval=0.05, what="the job to run")
        store.config_set("maxmemory-policy", "noeviction")
        store.config_set("maxmemory", 1)  # every write is refused: OOM
        refused = f"job {job.job_id}: Redis unreachable or refusing writes"
        wait_until(lambda: "requeueing once it takes writes" in worker.log_path.read_text(), 30, what="the wait")
        # Held, probing: RabbitMQ has not delivered it again (before, every delivery logged and requeued at once).
        assert worker.log_path.read_text().count(refused) == 1
        store.config_set("maxmemory", 0)
        doc: JobDoc = wait_until(finished(producer, job.job_id), 60, interval=0.2, what="the job to finish")
    finally:
        store.config_set("maxmemory", 0)
        producer.close()
    assert doc["status"] == "succeeded"
    assert worker.log_path.read_text().count(refused) == 1
