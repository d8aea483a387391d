"""A producer in another language: celery-node (tests/node/produce.js) following docs/wire-contract.md.

produce.js writes each job's queued document and sends ``wsupload.upload`` with celery-node's
``sendTask``, over the Redis broker and over RabbitMQ (a vhost of this module's own); a real
worker takes the job and the sandbox receives the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import amqp
import pytest

from tests.integration import rabbit
from tests.integration.conftest import Fleet, FleetHandle, clean_env, unavailable
from wsupload.config import Settings
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import SandboxServer

pytestmark = pytest.mark.integration

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


@pytest.fixture(scope="module")
def node() -> str:
    binary = shutil.which("node")
    if binary is None:
        unavailable("no node binary: the celery-node producer tests need Node.js 18+")
    if not (NODE_DIR / "node_modules" / "celery-node").is_dir():
        unavailable("celery-node is not installed: run make setup (npm ci --prefix tests/node)")
    return str(binary)


def produce(node: str, env: dict[str, str], jobs: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """Run produce.js with a producer's environment (no API key) and these jobs on stdin."""
    settings = Settings.from_env(env)
    wanted = {"REDIS_URL", "WSUPLOAD_BROKER_URL", "WSUPLOAD_QUEUE"}
    js_env = {
        **clean_env(),
        **{k: v for k, v in env.items() if k in wanted},
        "WSUPLOAD_RESULT_TTL": str(settings.result_ttl),
    }
    return subprocess.run(
        [node, str(NODE_DIR / "produce.js")],
        input=json.dumps(jobs),
        env=js_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def unique_png(directory: Path) -> Path:
    """Bytes no other test uploads (the width), so deduplication answers only what this test sent."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{uuid.uuid4().hex[:8]}.png"
    path.write_bytes(png_bytes(width=300 + secrets.randbelow(3000), height=2))
    return path


def run_through_node(node: str, handle: FleetHandle, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    sent = produce(node, handle.env, jobs)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.split() == [job["job_id"] for job in jobs]
    outcome = handle.producer.wait([job["job_id"] for job in jobs], timeout=60)
    assert not outcome.timed_out, outcome.docs
    return [dict(doc or {}) for doc in outcome.docs]


def test_a_celery_node_producer_over_redis_gets_its_jobs_uploaded_with_their_options(
    node: str, fleet: Fleet, sandbox: SandboxServer, media_root: Path, worker_env: dict[str, str]
) -> None:
    handle = fleet(WSUPLOAD_BROKER_URL=worker_env["REDIS_URL"])  # Redis, whichever broker the run tests
    png = unique_png(media_root / "node-redis")
    first = {"job_id": uuid.uuid4().hex, "source": str(png), "options": {"dedup": True}}
    (doc,) = run_through_node(node, handle, [first])
    assert doc["status"] == "succeeded", doc
    assert doc["result"]["filename"] == png.name
    assert [r.sha256 for r in sandbox.records] == [hashlib.sha256(png.read_bytes()).hexdigest()]

    # kwargs arrived: the same bytes with {"dedup": true} reuse the first upload.
    again = {"job_id": uuid.uuid4().hex, "source": str(png), "options": {"dedup": True}}
    (doc,) = run_through_node(node, handle, [again])
    assert doc["status"] == "succeeded", doc
    assert doc["result"]["reused"] is True
    assert len(sandbox.records) == 1


# RabbitMQ: the same producer with WSUPLOAD_BROKER_URL=amqp://…, in this module's vhost
# (``rabbit_vhost``); each fleet has queues of its own.


@contextlib.contextmanager
def connection(url: str) -> Iterator[amqp.Connection]:
    with amqp.Connection(
        f"{rabbit.HOST}:{rabbit.PORT}",
        userid=rabbit.USER,
        password=rabbit.PASSWORD,
        virtual_host=urlsplit(url).path[1:],
    ) as opened:
        yield opened


def test_a_celery_node_producer_over_rabbitmq_gets_its_job_uploaded(
    node: str, fleet: Fleet, sandbox: SandboxServer, media_root: Path, rabbit_vhost: str
) -> None:
    handle = fleet(WSUPLOAD_BROKER_URL=rabbit_vhost)
    png = unique_png(media_root / "node-amqp")
    job = {"job_id": uuid.uuid4().hex, "source": str(png), "options": {"dedup": True}}
    (doc,) = run_through_node(node, handle, [job])
    assert doc["status"] == "succeeded", doc
    assert doc["attempts"] == 1
    assert [r.sha256 for r in sandbox.records] == [hashlib.sha256(png.read_bytes()).hexdigest()]


def test_the_workers_quorum_queue_refuses_celery_nodes_own_declare_and_takes_the_contracts(
    fleet: Fleet, rabbit_vhost: str
) -> None:
    handle = fleet(WSUPLOAD_BROKER_URL=rabbit_vhost)
    queue = handle.env["WSUPLOAD_QUEUE"]
    with connection(rabbit_vhost) as broker:
        # What celery-node 0.5.9 declares on connect and before every publish: a classic queue.
        with pytest.raises(amqp.PreconditionFailed, match="inequivalent arg 'x-queue-type'"):
            broker.channel().queue_declare(queue, durable=True, auto_delete=False, arguments=None)
        # What the contract allows (each on a new channel: the refusal closed that one): nothing,
        # with a passive check that the queue is there, or the quorum queue as the worker declares it.
        there = broker.channel().queue_declare(queue, passive=True)
        same = broker.channel().queue_declare(
            queue, durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"}
        )
    assert there is not None
    assert there[0] == queue
    assert same is not None
    assert same[0] == queue


def test_a_celery_node_producer_with_no_queue_to_send_to_says_so_and_leaves_no_document(
    node: str, fleet: Fleet, rabbit_vhost: str
) -> None:
    handle = fleet(count=0, WSUPLOAD_BROKER_URL=rabbit_vhost)  # no worker has declared the queue
    job_id = uuid.uuid4().hex
    sent = produce(node, handle.env, [{"job_id": job_id, "source": "/media/a.png"}])
    assert sent.returncode == 1
    assert sent.stderr.count("\n") == 1, sent.stderr  # one line, no stack trace
    assert f"no queue '{handle.env['WSUPLOAD_QUEUE']}'" in sent.stderr
    assert handle.producer.redis.exists(f"wsupload:result:{job_id}") == 0


def test_a_celery_node_message_on_rabbitmq_is_what_the_contract_says(
    node: str, fleet: Fleet, rabbit_vhost: str
) -> None:
    handle = fleet(count=0, WSUPLOAD_BROKER_URL=rabbit_vhost)
    queue = handle.env["WSUPLOAD_QUEUE"]
    job_id = uuid.uuid4().hex
    with connection(rabbit_vhost) as broker:
        broker.channel().queue_declare(queue, durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"})
        sent = produce(node, handle.env, [{"job_id": job_id, "source": "/media/a.png", "options": {"dedup": True}}])
        assert sent.returncode == 0, sent.stderr
        message = broker.channel().basic_get(queue, no_ack=True)
    assert message is not None
    assert (message.delivery_info["exchange"], message.delivery_info["routing_key"]) == ("", queue)
    properties = message.properties
    assert properties["content_type"] == "application/json"
    assert properties["content_encoding"] == "utf-8"
    assert properties["delivery_mode"] == 2
    assert properties["correlation_id"] == job_id
    headers = properties["application_headers"]
    assert (headers["task"], headers["id"]) == ("wsupload.upload", job_id)
    args, kwargs, _embed = json.loads(message.body)
    assert args == [job_id, "/media/a.png"]
    assert kwargs == {"options": {"dedup": True}}
