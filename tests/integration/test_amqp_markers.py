"""The marker sweep on RabbitMQ (``tasks.recovery.markers``): jobs whose messages RabbitMQ dropped come back.

Against the RabbitMQ on 127.0.0.1:5672, in a vhost of this module's own (the fixtures of
``test_amqp``). Messages are dropped for real: ``rabbitmqctl purge_queue`` mid-batch, a
``max-length`` policy on the queue. A backlog behind a stopped worker is swept by this
process at a short interval and must get nothing published again. Waits poll with deadlines.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import rabbit
from tests.integration.conftest import Ended
from tests.integration.test_amqp import StartWorker, amqp_producer, png, start_worker  # noqa: F401 (fixtures)
from wsupload.config import Settings
from wsupload.tasks.recovery.early_ack_sweep import OwedSweep, Report
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import TERMINAL
from wsupload.tasks.wire.amqp_publisher import ready_messages
from wsupload.worker.dev.local_services import wait_until
from wsupload.worker.dev.samples import distinct_pngs
from wsupload.worker.dev.sandbox import SandboxServer
from wsupload.worker.producer import Producer
from wsupload.worker.sweeper import sweep_for

pytestmark = [pytest.mark.integration]

MARKERS = {
    # Quick markers: a job entered 2 s ago sends one, a met one is judged 1 s later; the
    # producer's publish grace (the entered score) at its floor.
    "WSUPLOAD_AMQP_MARKER_AGE": "2",
    "WSUPLOAD_AMQP_MARKER_SETTLE": "1",
    "WSUPLOAD_AMQP_PUBLISH_GRACE": "5",
}


@pytest.fixture
def amqp_env(worker_env: dict[str, str], rabbit_vhost: str) -> dict[str, str]:
    suffix = os.urandom(4).hex()
    return {
        **worker_env,
        **MARKERS,
        "WSUPLOAD_BROKER_URL": rabbit_vhost,
        "WSUPLOAD_QUEUE": f"markers-{suffix}",
        "WSUPLOAD_BULK_QUEUE": f"markers-{suffix}.bulk",
    }


@pytest.fixture
def ended(amqp_producer: Producer) -> Iterator[Ended]:  # noqa: F811 (the fixture imported above)
    listener = Ended(amqp_producer.redis)
    yield listener
    listener.close()


def vhost_of(producer: Producer) -> str:
    return str(producer.settings.broker_url).rsplit("/", 1)[1]


def all_ended(producer: Producer, job_ids: list[str]) -> bool:
    return all(doc is not None and doc["status"] in TERMINAL for doc in producer.status(job_ids))


def uploads_by_file(sandbox: SandboxServer) -> Counter[str]:
    return Counter(record.filename for record in sandbox.records if record.filename)


@pytest.mark.slow
def test_a_queue_purged_mid_batch_every_job_still_ends_once(
    amqp_producer: Producer,  # noqa: F811
    start_worker: StartWorker,  # noqa: F811
    sandbox: SandboxServer,
    media_root: Path,
    ended: Ended,
) -> None:
    worker = start_worker(concurrency=2)
    files = distinct_pngs(media_root / "purged", 200)
    queue = amqp_producer.settings.bulk_queue  # a batch goes to the bulk queue
    sandbox.latency = 0.05  # two at a time, so most of the batch still waits when the queue is purged
    try:
        batch = amqp_producer.enqueue_batch([str(p) for p in files], options={"dedup": False})
        job_ids = [job.job_id for job in batch.jobs]
        wait_until(lambda: len(sandbox.records) >= 10, 30, what="the first uploads")
        rabbit.rabbitmqctl("purge_queue", "-p", vhost_of(amqp_producer), queue)
        purged_at_most = 200 - len(sandbox.records)
        wait_until(lambda: all_ended(amqp_producer, job_ids), 90, interval=0.5, what="every job to end")
    finally:
        sandbox.latency = 0.0
    docs = amqp_producer.status(job_ids)
    assert [d and d["status"] for d in docs] == ["succeeded"] * 200, worker.log_tail()
    info = amqp_producer.batches.get(batch.batch_id)
    assert info is not None
    assert (info["done"], info["succeeded"]) == (200, 200)
    # Each job's end was published once, and each file reached the API once: nothing was published
    # again whose message was still on the queue.
    assert ended.of(job_ids) == dict.fromkeys(job_ids, 1)
    assert uploads_by_file(sandbox) == Counter({path.name: 1 for path in files})
    log = worker.log_path.read_text()
    lost = log.count("its message was dropped")
    assert 0 < lost <= purged_at_most
    # Everything that ended left the queue's entered set; no marker is left waiting to be judged forever.
    wait_until(lambda: amqp_producer.redis.zcard(keys.entered(queue)) == 0, 10, what="the entered set to empty")


@pytest.mark.slow
def test_messages_a_max_length_policy_dropped_are_published_again(
    amqp_producer: Producer,  # noqa: F811
    start_worker: StartWorker,  # noqa: F811
    sandbox: SandboxServer,
    media_root: Path,
    ended: Ended,
) -> None:
    queue = amqp_producer.settings.queue
    vhost = vhost_of(amqp_producer)
    files = distinct_pngs(media_root / "max-length", 12)
    (first,) = amqp_producer.enqueue([str(files[0])])  # declares the queue; no worker yet: it waits there
    rabbit.rabbitmqctl("set_policy", "-p", vhost, "short", f"^{queue}$", '{"max-length": 4}', "--apply-to", "queues")
    try:
        wait_until(lambda: ready_messages(str(amqp_producer.settings.broker_url), [queue]) == [1], 10, what="the one")
        jobs = [first, *(amqp_producer.enqueue([str(path)])[0] for path in files[1:])]
        # RabbitMQ keeps the newest 4 (drop-head): 8 messages are gone, their jobs `queued`.
        wait_until(lambda: ready_messages(str(amqp_producer.settings.broker_url), [queue]) == [4], 10, what="4 left")
    finally:
        rabbit.rabbitmqctl("clear_policy", "-p", vhost, "short")
    job_ids = [job.job_id for job in jobs]
    worker = start_worker(concurrency=2)
    wait_until(lambda: all_ended(amqp_producer, job_ids), 60, interval=0.5, what="every job to end")
    assert [d and d["status"] for d in amqp_producer.status(job_ids)] == ["succeeded"] * 12
    assert uploads_by_file(sandbox) == Counter({path.name: 1 for path in files})
    assert ended.of(job_ids) == dict.fromkeys(job_ids, 1)
    assert worker.log_path.read_text().count("its message was dropped") == 8


def sweeps(settings: Settings, cycles: int) -> list[Report]:
    """Run this worker's sweep from here ``cycles`` times (each waits for the last one's lock to lapse)."""
    sweep = sweep_for(settings, owner="test")
    assert isinstance(sweep, OwedSweep)
    reports: list[Report] = []
    try:
        for n in range(cycles):
            reports.append(wait_until(sweep.sweep, 10, interval=0.1, what=f"sweep {n}"))
    finally:
        sweep.publisher().close()
    return reports


@pytest.mark.slow
def test_a_long_backlog_behind_a_stopped_worker_gets_one_marker_and_nothing_published_again(
    amqp_producer: Producer,  # noqa: F811
    start_worker: StartWorker,  # noqa: F811
    png: Path,  # noqa: F811
) -> None:
    backlog = 5_000  # 100,000: benchmarks/markers.py (this test's budget is about 20 s)
    worker = start_worker(concurrency=2)
    assert worker.process is not None
    os.killpg(worker.process.pid, signal.SIGSTOP)  # it holds its prefetch and takes nothing more
    settings = amqp_producer.settings
    queue, url = settings.bulk_queue, str(settings.broker_url)
    batch = amqp_producer.enqueue_batch([str(png)] * backlog, options={"dedup": False})
    oldest = amqp_producer.redis.zscore(keys.entered(queue), batch.jobs[0].job_id)
    assert oldest is not None
    wait_until(
        lambda: float(oldest) <= amqp_producer.redis.time()[0] * 1000 - 2000,
        15,
        interval=0.2,
        what="the oldest entry to be old enough for a marker",
    )
    reports = sweeps(settings, 5)
    assert [r.markers for r in reports] == [(queue,), (), (), (), ()]
    assert all(r.lost == () and r.published == () for r in reports)
    marker = amqp_producer.redis.hgetall(keys.marker(queue))
    assert set(marker) == {b"token", b"sent_at"}  # outstanding, never met
    waiting = ready_messages(url, [queue])[0]
    assert backlog - 2 + 1 <= waiting <= backlog + 1  # the backlog, less the stopped worker's prefetch, and the marker
    assert amqp_producer.redis.zcard(keys.entered(queue)) == backlog
