"""Real parts: a private redis-server, a `wsupload worker` process and the sandbox over HTTP.

A service that cannot be had fails the run in CI (CI=true) and skips locally,
saying why. Every worker and producer here share one private Redis; each test
gets a clean sandbox (no faults, no records).

``make test`` runs the tests in several processes (pytest-xdist), each with its own
session: its own Redis, sandbox, S3 server, session worker and RabbitMQ vhost, on free
ports. What they share is the machine: start servers on free ports, keep files under
``tmp_path``, and start workers on RabbitMQ inside ``rabbit.opening_channels`` (as the
fixtures here do), since a test may shorten the server-wide ``consumer_timeout``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration import rabbit
from wsupload.config import Settings
from wsupload.tasks.callbacks import SIGNATURE_HEADER
from wsupload.tasks.store.results import ENDED_CHANNEL, TERMINAL, JobDoc
from wsupload.tasks.wire.amqp_publisher import ready_messages
from wsupload.worker.dev.local_services import (
    LocalRedis,
    WorkerProcess,
    free_port,
    redis_answers,
    start_redis,
    wait_until,
)
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import SandboxServer
from wsupload.worker.producer import Job, Producer

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


@pytest.fixture(scope="module")
def own_redis(worker_env: dict[str, str]) -> Iterator[LocalRedis]:
    """A redis-server for one module's tests alone (after ``worker_env``: the session's services first)."""
    local = start_redis()
    yield local
    local.stop()


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
    return {k: v for k, v in os.environ.items() if not k.startswith(("WSUPLOAD_", "WAVESPEED_", "REDIS_URL", "AWS_"))}


TEST_BROKER = os.environ.get("WSUPLOAD_TEST_BROKER", "redis").strip().lower()
"""``amqp``: the shared workers and fleets use RabbitMQ (a vhost of the run's own) as their broker."""


def rabbit_url_or_skip() -> None:
    reason = rabbit.unavailable_reason()
    if reason is not None:
        unavailable(reason)


@pytest.fixture(scope="session")
def broker_env() -> Iterator[dict[str, str]]:
    """Nothing (Redis, the default), or ``WSUPLOAD_BROKER_URL`` for a vhost of this run's own."""
    if TEST_BROKER != "amqp":
        yield {}
        return
    rabbit_url_or_skip()
    with rabbit.vhost() as url:
        yield {"WSUPLOAD_BROKER_URL": url}


@pytest.fixture(scope="module")
def rabbit_vhost() -> Iterator[str]:
    """The AMQP URL of a vhost for one module's tests alone."""
    rabbit_url_or_skip()
    with rabbit.vhost() as url:
        yield url


@pytest.fixture(scope="session")
def worker_env(
    redis_url: str, sandbox: SandboxServer, media_root: Path, s3: S3, broker_env: dict[str, str]
) -> dict[str, str]:
    return {
        **clean_env(),
        **broker_env,
        **s3.worker_env,
        "WSUPLOAD_ALLOWED_BUCKETS": "s3://media,s3://private,s3://vanished",
        "REDIS_URL": redis_url,
        "WAVESPEED_BASE_URL": sandbox.url,
        "WAVESPEED_API_KEY": API_KEY,
        "WSUPLOAD_QUEUE": "it-" + uuid.uuid4().hex[:8],
        # One process per worker, as the tests count them (kill its group, read its pid's node name);
        # WSUPLOAD_TEST_PROCESSES=auto runs the suite with the default (test_processes.py: N > 1 always).
        "WSUPLOAD_PROCESSES": os.environ.get("WSUPLOAD_TEST_PROCESSES", "1"),
        "WSUPLOAD_MAX_ATTEMPTS": "3",
        "WSUPLOAD_BACKOFF_BASE": "0.05",
        "WSUPLOAD_BACKOFF_MAX": "0.2",
        "WSUPLOAD_RETRY_AFTER_MAX": "5",
        "WSUPLOAD_MAX_BYTES": str(WORKER_MAX_BYTES),
        "WSUPLOAD_ALLOWED_ROOTS": str(media_root),
        # Short, so the recovery tests are quick; each test that depends on it says so.
        "WSUPLOAD_LEASE": "3",
        "WSUPLOAD_STOP_GRACE": "2",
        "WSUPLOAD_CONNECT_TIMEOUT": "2",
        "WSUPLOAD_READ_TIMEOUT": "1.5",
    }


def producer_env(worker_env: dict[str, str]) -> dict[str, str]:
    """What a producer sees: everything but the API key."""
    return {k: v for k, v in worker_env.items() if k != "WAVESPEED_API_KEY"}


@pytest.fixture(scope="session")
def producer(worker_env: dict[str, str]) -> Iterator[Producer]:
    made = Producer(Settings.from_env(producer_env(worker_env)))
    yield made
    made.close()  # its RabbitMQ connection, when it has one


@pytest.fixture(scope="session")
def worker(
    worker_env: dict[str, str], producer: Producer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    log = tmp_path_factory.mktemp("logs") / "worker.log"
    process = WorkerProcess(env=worker_env, log_path=log, concurrency=2)
    try:
        with rabbit.opening_channels(worker_env):
            process.start().wait_ready(producer.app)
        yield process
    finally:
        process.stop()


def run_cli(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``wsupload ARGS`` as a user runs it, in a process of its own; what it printed and its exit status."""
    return subprocess.run(
        [sys.executable, "-m", "wsupload.worker.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_exporter(
    env: dict[str, str], port: int, stdout: Any = subprocess.DEVNULL, stderr: Any = subprocess.PIPE
) -> subprocess.Popen[bytes]:
    """``wsupload metrics`` serving on 127.0.0.1:``port``, in a process of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "wsupload.worker.cli", "metrics", "--port", str(port), "--addr", "127.0.0.1"],
        env=env,
        stdout=stdout,
        stderr=stderr,
    )


def png_file(root: Path, name: str, size: int = 16) -> str:
    """A small PNG at ``root/<name>.png`` (``size`` pixels square), as a source to enqueue."""
    path = root / f"{name}.png"
    path.write_bytes(png_bytes(size, size))
    return str(path)


def run_jobs(producer: Producer, sources: Sequence[str], timeout: float = 60) -> tuple[list[Job], list[JobDoc]]:
    jobs = producer.enqueue(list(sources))
    outcome = producer.wait([j.job_id for j in jobs], timeout=timeout)
    assert not outcome.timed_out, f"jobs did not finish in {timeout} s: {outcome.docs}"
    docs = [doc for doc in outcome.docs if doc is not None]
    assert len(docs) == len(jobs)
    return jobs, docs


def run_one(producer: Producer, source: str | Path, timeout: float = 60) -> JobDoc:
    return run_jobs(producer, [str(source)], timeout)[1][0]


def finished(producer: Producer, job_id: str) -> Callable[[], JobDoc | None]:
    """A ``wait_until`` predicate: the job's document once it has ended, else None."""

    def check() -> JobDoc | None:
        doc = producer.status([job_id])[0]
        return doc if doc and doc["status"] in TERMINAL else None

    return check


class Ended:
    """Every final document published on ``wsupload:ended`` while it listens: how often each job ended."""

    def __init__(self, client: redis.Redis) -> None:
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self.pubsub.subscribe(ENDED_CHANNEL)
        self.counts: Counter[str] = Counter()

    def of(self, job_ids: list[str]) -> dict[str, int]:
        """How often each of ``job_ids`` ended, once each has (the channel is the session's: other tests' too)."""

        def read() -> bool:
            while (message := self.pubsub.get_message(timeout=0.05)) is not None:
                self.counts[json.loads(message["data"])["job_id"]] += 1
            return all(self.counts[job] for job in job_ids)

        wait_until(read, 10, interval=0, what="every job's end to be published")
        return {job: self.counts[job] for job in job_ids}

    def close(self) -> None:
        self.pubsub.close()


def unacked_messages(producer: Producer) -> list[Any]:
    """kombu's in-flight messages (delivered, not yet acknowledged); on RabbitMQ, each channel's count
    of them as ``rabbitmqctl`` reports it (its statistics are a few seconds old)."""
    url = producer.settings.broker_url
    if producer.settings.broker_is_amqp and url:
        return rabbit.unacknowledged(url)
    return list(producer.redis.hvals("unacked"))


def waiting_messages(producer: Producer, queue: str) -> int:
    """Messages waiting on ``queue``: the Redis list's length, or RabbitMQ's ready count."""
    url = producer.settings.broker_url
    if producer.settings.broker_is_amqp and url:
        return ready_messages(url, [queue])[0]
    return int(producer.redis.llen(queue))


@dataclass
class S3:
    """moto's S3 server with IAM enforced: ``worker_env`` may read bucket ``media`` only."""

    url: str
    admin: Any
    worker_env: dict[str, str]

    def fault(self, **fault: Any) -> None:
        request = urllib.request.Request(f"{self.url}/_faults", data=json.dumps(fault).encode(), method="POST")
        urllib.request.urlopen(request, timeout=5).close()

    @contextlib.contextmanager
    def auth_off(self) -> Iterator[None]:
        """moto cannot check presigned URLs against IAM: switch enforcement off meanwhile."""
        set_auth(self.url, enforced=False)
        try:
            yield
        finally:
            set_auth(self.url, enforced=True)

    def s3_requests(self) -> int:
        with urllib.request.urlopen(f"{self.url}/_faults", timeout=5) as answer:
            return int(json.loads(answer.read())["s3_requests"])


WORKER_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            # moto names HeadBucket's permission s3:HeadBucket; AWS checks s3:ListBucket.
            "Action": ["s3:GetObject", "s3:ListBucket", "s3:HeadBucket"],
            # "vanished" is never created: reading it must say the bucket is missing.
            "Resource": [
                "arn:aws:s3:::media",
                "arn:aws:s3:::media/*",
                "arn:aws:s3:::vanished",
                "arn:aws:s3:::vanished/*",
            ],
        }
    ],
}
ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def _client(service: str, url: str, key: str, secret: str) -> Any:
    import boto3

    return boto3.client(
        service, endpoint_url=url, aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1"
    )


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    port = free_port()
    log = open(tmp_path_factory.mktemp("s3") / "moto.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.s3_server", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url) or process.poll() is not None, 30, what="the S3 server to start")
        if process.poll() is not None:
            unavailable(f"the moto S3 server exited with status {process.returncode}")
        iam = _client("iam", url, "setup", "setup")
        users = {}
        for name, policy in (("admin", ADMIN_POLICY), ("worker", WORKER_POLICY)):
            iam.create_user(UserName=name)
            iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
            users[name] = iam.create_access_key(UserName=name)["AccessKey"]
        set_auth(url, enforced=True)
        admin = _client("s3", url, users["admin"]["AccessKeyId"], users["admin"]["SecretAccessKey"])
        for bucket in ("media", "private"):
            admin.create_bucket(Bucket=bucket)
        yield S3(
            url=url,
            admin=admin,
            worker_env={
                "AWS_ACCESS_KEY_ID": users["worker"]["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": users["worker"]["SecretAccessKey"],
                "AWS_DEFAULT_REGION": "us-east-1",
                "WSUPLOAD_S3_ENDPOINT_URL": url,
                "WSUPLOAD_S3_ADDRESSING_STYLE": "path",
            },
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def set_auth(url: str, *, enforced: bool) -> None:
    """From now on moto checks every request against IAM (or no longer)."""
    count = b"0" if enforced else b"inf"
    request = urllib.request.Request(f"{url}/moto-api/reset-auth", data=count, headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request, timeout=5).close()


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/_faults", timeout=1).close()
        return True
    except OSError:
        return False


@dataclass
class FleetHandle:
    producer: Producer
    env: dict[str, str]
    """The producers' environment for these workers (queues included, no API key)."""
    workers: list[WorkerProcess]


Fleet = Callable[..., FleetHandle]


@pytest.fixture
def fleet(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Fleet]:
    """Start workers on fresh queues with extra settings (``count=0``: just the producer)."""
    started: list[WorkerProcess] = []
    producers: list[Producer] = []

    def start(count: int = 1, concurrency: int = 2, **env: str) -> FleetHandle:
        suffix = uuid.uuid4().hex[:6]
        full = {**worker_env, "WSUPLOAD_QUEUE": f"fleet-{suffix}", "WSUPLOAD_BULK_QUEUE": f"fleet-{suffix}.bulk", **env}
        producer = Producer(Settings.from_env(producer_env(full)))
        producers.append(producer)
        with rabbit.opening_channels(full if count else {}):
            mine = [
                WorkerProcess(env=full, log_path=tmp_path / f"fleet-{suffix}-{n}.log", concurrency=concurrency).start()
                for n in range(count)
            ]
            started.extend(mine)
            for process in mine:
                process.wait_ready(producer.app)
        return FleetHandle(producer, producer_env(full), mine)

    yield start
    for process in started:
        process.stop()
    for producer in producers:
        producer.close()


# Workers of a test's own, on a queue of its own (the session worker must not take its jobs).

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def own_env(worker_env: dict[str, str]) -> dict[str, str]:
    # A long read timeout: the sandbox holds uploads open while we kill, pause and stop workers.
    queue = "recovery-" + uuid.uuid4().hex[:8]
    own = {"WSUPLOAD_QUEUE": queue, "WSUPLOAD_BULK_QUEUE": f"{queue}.bulk", "WSUPLOAD_READ_TIMEOUT": "60"}
    return {**worker_env, **own}


@pytest.fixture
def own_producer(own_env: dict[str, str]) -> Iterator[Producer]:
    producer = Producer(Settings.from_env(producer_env(own_env)))
    yield producer
    producer.close()


@pytest.fixture
def start_worker(own_env: dict[str, str], own_producer: Producer, tmp_path: Path) -> Iterator[StartWorker]:
    started: list[WorkerProcess] = []

    def start(**env: str) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        process = WorkerProcess(env={**own_env, **env}, log_path=log, concurrency=1)
        with rabbit.opening_channels(process.env):
            started.append(process.start())
            process.wait_ready(own_producer.app)
        return process

    yield start
    for process in started:
        if process.process is not None and process.process.poll() is None:
            os.killpg(process.process.pid, signal.SIGCONT)  # a paused one would not hear SIGTERM
        process.stop()


class Hooks(ThreadingHTTPServer):
    """A callback receiver: answers each POST with the next scripted status (then 200) and records it."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HookHandler)
        self.statuses: list[int] = []
        self.received: list[dict[str, Any]] = []
        """Each POST: its raw ``body`` and its ``signature`` header."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    @property
    def docs(self) -> list[Any]:
        """The documents the POSTs carried, in order."""
        return [json.loads(post["body"]) for post in self.received]


class _HookHandler(BaseHTTPRequestHandler):
    server: Hooks

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append({"body": body, "signature": self.headers.get(SIGNATURE_HEADER)})
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    server = Hooks()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()
