"""A worker cut off from Redis by a network that goes silent (``silent_relay``), then comes back.

The cut-off worker reaches Redis only through the relay; its connections stay open and
hear nothing, as on a link that drops every packet: no error, no reset. Its lease is
not renewed, so a worker that can reach Redis takes the job over; when the link comes
back, what the cut-off worker says about the job is refused (fencing), and it serves
jobs again. Meanwhile its heartbeat record expires, so ``wsupload workers`` and
``health`` show it gone, and it is listed again once it beats. Redis broker only (on
RabbitMQ the broker connection is another story: ``test_amqp``). Waits poll conditions
with deadlines.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import Ended, StartWorker, finished, unacked_messages
from tests.integration.silent_relay import SilentRelay
from wsupload.tasks.store.results import JobDoc
from wsupload.worker import worker_records
from wsupload.worker.dev.local_services import wait_until
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def listed(producer: Producer, name: str) -> bool:
    """Whether ``wsupload workers`` would list the worker: its heartbeat record has not expired."""
    return name in {record.name for record in worker_records.read_records(producer.redis)}


@pytest.fixture
def relay(own_env: dict[str, str]) -> Iterator[SilentRelay]:
    port = urlsplit(own_env["REDIS_URL"]).port
    assert port is not None, own_env["REDIS_URL"]
    relay = SilentRelay(port)
    yield relay
    relay.close()


def test_a_worker_cut_off_by_a_silent_network_loses_its_job_to_another_and_serves_again_once_back(
    own_producer: Producer,
    start_worker: StartWorker,
    sandbox: SandboxServer,
    relay: SilentRelay,
    media_root: Path,
) -> None:
    png = media_root / f"partition-{uuid.uuid4().hex[:6]}.png"
    png.write_bytes(png_bytes(24, 24))
    cut_off = start_worker(REDIS_URL=relay.url())  # its broker and results Redis, through the relay
    sandbox.add_fault(Fault(stall=60))  # its upload hangs at the server until released
    ended = Ended(own_producer.redis)
    (job,) = own_producer.enqueue([str(png)])
    wait_until(lambda: len(sandbox.records) == 1, 30, what="the upload to reach the sandbox")
    doc = own_producer.status([job.job_id])[0]
    assert doc is not None
    assert doc["worker"] == cut_off.hostname

    relay.silence()
    taker = start_worker()
    done: JobDoc = wait_until(finished(own_producer, job.job_id), 60, interval=0.2, what="the job to be taken over")
    assert (done["status"], done["worker"], done["generation"]) == ("succeeded", taker.hostname, 2)
    # An operator sees it gone: its beats no longer arrive, its record expires (wsupload health fails).
    wait_until(lambda: not listed(own_producer, cut_off.hostname), 30, interval=0.2, what="its record to expire")

    sandbox.release_stalls()  # the cut-off worker's upload is answered; what it writes of it waits for the link
    relay.restore()
    wait_until(
        lambda: "this delivery stops" in cut_off.log_path.read_text(errors="replace"),
        60,
        interval=0.2,
        what="the cut-off worker to find it may no longer act for the job",
    )
    assert own_producer.status([job.job_id])[0] == done  # the outcome stands as the taker wrote it
    wait_until(lambda: listed(own_producer, cut_off.hostname), 30, interval=0.2, what="its record to be back")
    assert cut_off.process is not None
    assert cut_off.process.poll() is None, cut_off.log_tail()

    taker.stop()  # only the worker that was cut off is left: it must serve again
    again = media_root / f"partition-{uuid.uuid4().hex[:6]}.png"
    again.write_bytes(png_bytes(20, 20))
    (second,) = own_producer.enqueue([str(again)])
    served: JobDoc = wait_until(finished(own_producer, second.job_id), 60, interval=0.2, what="the next job")
    assert (served["status"], served["worker"]) == ("succeeded", cut_off.hostname)
    wait_until(lambda: unacked_messages(own_producer) == [], 20, what="every message to be acknowledged")
    # Each end published once: the cut-off worker's refused outcome published nothing.
    assert ended.of([job.job_id, second.job_id]) == {job.job_id: 1, second.job_id: 1}
    ended.close()
