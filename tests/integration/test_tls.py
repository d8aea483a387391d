"""TLS for real: a redis-server and a RabbitMQ node speaking TLS only, with a CA made by the test.

A job end to end over each (worker, producer, ``wsupload wait``), mutual TLS (the
server requires a client certificate), a wrong CA or a host name the certificate does
not hold stopping the worker and a command with one line (exit 2) within the issue's
10 s, an unreachable TLS port still waited for, and a certificate rotated under a running
worker to one its CA does not vouch for: said once, waited out, the jobs run once it is
put right. The servers are the test's own
(``tests.integration.tls_servers``): the machine's RabbitMQ service is not touched.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import producer_env, start_exporter, unavailable
from tests.integration.conftest import run_cli as cli
from tests.integration.tls_servers import (
    Pki,
    TlsRabbit,
    TlsRedis,
    make_pki,
    rabbit_unavailable_reason,
    start_tls_rabbit,
    start_tls_redis,
)
from wsupload.config import Settings
from wsupload.errors import TlsRefused
from wsupload.tasks.store import keys
from wsupload.tasks.store.connections import redis_client
from wsupload.worker.async_producer import AsyncProducer
from wsupload.worker.dev.local_services import WorkerProcess, free_port, wait_until
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.parent import processes_wanted
from wsupload.worker.producer import Producer
from wsupload.worker.supervisor import split_concurrency

pytestmark = [pytest.mark.integration]

STOP_BOUND = 10.0
"""The issue's bound: a wrong CA stops the worker and every command within this many seconds."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        unavailable("the cryptography package is not installed (pip install -e '.[dev]')")
    return make_pki(tmp_path_factory.mktemp("pki"))


def _redis_or_skip() -> None:
    if shutil.which("redis-server") is None:
        unavailable("no redis-server binary (run scripts/install-redis)")


@pytest.fixture(scope="module")
def tls_redis(pki: Pki, worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    _redis_or_skip()
    server = start_tls_redis(pki, tmp_path_factory.mktemp("tls-redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_redis(pki: Pki, worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    _redis_or_skip()
    server = start_tls_redis(pki, tmp_path_factory.mktemp("mtls-redis"), client_certificates=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_rabbit(pki: Pki, worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRabbit]:
    reason = rabbit_unavailable_reason()
    if reason:
        unavailable(reason)
    node = start_tls_rabbit(pki, tmp_path_factory.mktemp("tls-rabbit"))
    yield node
    node.stop()


def tls_env(worker_env: dict[str, str], redis_url: str, **extra: str) -> dict[str, str]:
    """The session's worker settings on queues of the test's own, with ``redis_url`` (and no other broker)."""
    queue = "tls-" + uuid.uuid4().hex[:8]
    base = {k: v for k, v in worker_env.items() if k != "WSUPLOAD_BROKER_URL"}
    return {**base, "REDIS_URL": redis_url, "WSUPLOAD_QUEUE": queue, "WSUPLOAD_BULK_QUEUE": f"{queue}.bulk", **extra}


def end_to_end(env: dict[str, str], media_root: Path, tmp_path: Path) -> None:
    """A worker on ``env``, a job from the producer API, ``wsupload wait`` and ``status`` over the same URLs."""
    image = media_root / f"tls-{uuid.uuid4().hex[:6]}.png"
    image.write_bytes(png_bytes())
    producer = Producer(Settings.from_env(producer_env(env)))
    worker = WorkerProcess(env=env, log_path=tmp_path / "worker.log", concurrency=1)
    try:
        worker.start().wait_ready(producer.app)
        (job,) = producer.enqueue([str(image)])
        waited = cli(producer_env(env), "wait", "--timeout", "60", job.job_id)
        assert waited.returncode == 0, f"{waited.stdout}{waited.stderr}\n{worker.log_tail()}"
        assert "succeeded" in waited.stdout
        assert producer.status([job.job_id])[0]["status"] == "succeeded"  # type: ignore[index]
    finally:
        worker.stop()
        producer.close()


def stops_with_one_line(env: dict[str, str], *args: str) -> tuple[str, float]:
    """Run ``wsupload ARGS``; it must exit 2 within ``STOP_BOUND`` s with one line on stderr. (line, seconds)."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "wsupload.worker.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until(lambda: process.poll() is not None, STOP_BOUND, interval=0.1, what=f"`wsupload {args[0]}` to stop")
    finally:
        if process.poll() is None:
            process.kill()
        out, err = process.communicate(timeout=30)
    elapsed = time.monotonic() - started
    lines = [line for line in err.splitlines() if line.strip()]
    assert process.returncode == 2, f"exit {process.returncode}\n{out}\n{err}"
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0], elapsed


def test_a_job_end_to_end_over_tls_redis(
    tls_redis: TlsRedis, pki: Pki, worker_env: dict[str, str], media_root: Path, tmp_path: Path
) -> None:
    end_to_end(tls_env(worker_env, tls_redis.url(pki.ca)), media_root, tmp_path)


def test_mutual_tls_a_job_end_to_end_with_a_client_certificate(
    mtls_redis: TlsRedis, pki: Pki, worker_env: dict[str, str], media_root: Path, tmp_path: Path
) -> None:
    url = mtls_redis.url(pki.ca, ssl_certfile=str(pki.client_cert), ssl_keyfile=str(pki.client_key))
    end_to_end(tls_env(worker_env, url), media_root, tmp_path)


def test_mutual_tls_without_a_client_certificate_the_worker_stops_with_one_line(
    mtls_redis: TlsRedis, pki: Pki, worker_env: dict[str, str]
) -> None:
    line, _ = stops_with_one_line(tls_env(worker_env, mtls_redis.url(pki.ca)), "worker")
    assert "may require a client certificate (ssl_certfile, ssl_keyfile)" in line


@pytest.mark.parametrize(
    ("command", "what"),
    [
        (("worker",), "wrong CA"),
        (("status", "some-job"), "wrong CA"),
        (("status", "some-job"), "wrong host name"),
        (("beat",), "wrong CA"),
        (("metrics", "--port", "FREE"), "wrong CA"),
    ],
)
def test_a_certificate_that_does_not_verify_stops_the_worker_and_commands_within_10_s(
    tls_redis: TlsRedis, pki: Pki, worker_env: dict[str, str], command: tuple[str, ...], what: str, tmp_path: Path
) -> None:
    url = tls_redis.url(pki.other_ca) if what == "wrong CA" else tls_redis.url(pki.ca, host="127.0.0.1")
    schedules = tmp_path / "schedules.toml"  # beat checks its schedules first
    schedules.write_text(f'[[schedule]]\nname = "tls"\nsource = "{tmp_path}"\nevery = "1h"\n')
    env = tls_env(worker_env, url, WSUPLOAD_SCHEDULES=str(schedules), WSUPLOAD_BEAT_STATE=str(tmp_path / "beat"))
    command = tuple(str(free_port()) if part == "FREE" else part for part in command)
    line, elapsed = stops_with_one_line(env, *command)
    assert elapsed < STOP_BOUND
    assert line.startswith("wsupload: configuration error: Redis at rediss://")
    assert "its TLS certificate does not verify" in line
    expected = "self-signed certificate in certificate chain" if what == "wrong CA" else "IP address mismatch"
    assert expected in line


def test_the_metrics_exporter_serves_queue_depths_over_tls_redis(
    tls_redis: TlsRedis, pki: Pki, worker_env: dict[str, str], tmp_path: Path
) -> None:
    env = producer_env(tls_env(worker_env, tls_redis.url(pki.ca)))
    producer = Producer(Settings.from_env(env))
    port = free_port()
    log = open(tmp_path / "metrics.log", "wb")  # the child holds it
    process = start_exporter(env, port, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        producer.enqueue([str(tmp_path / "never-run.png")])  # no worker on these queues: it waits

        def page() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                    text = str(answer.read().decode())
            except OSError:
                return None
            return text if f'wsupload_queue_depth{{queue="{producer.settings.queue}"}} 1.0' in text else None

        text = wait_until(page, 30, interval=0.2, what="the exporter to show the waiting job")
        assert "wsupload_queue_depth_up 1.0" in text
    finally:
        process.terminate()
        process.wait(timeout=20)
        producer.close()


def test_an_unreachable_tls_port_is_waited_for(pki: Pki, worker_env: dict[str, str], tmp_path: Path) -> None:
    env = tls_env(worker_env, f"rediss://localhost:{free_port()}/0?ssl_ca_certs={pki.ca}")
    worker = WorkerProcess(env=env, log_path=tmp_path / "worker.log", concurrency=1)
    worker.start()
    try:
        assert worker.process is not None
        with pytest.raises(subprocess.TimeoutExpired):  # still running: waiting for Redis, as without TLS
            worker.process.wait(timeout=STOP_BOUND / 2)
        wait_until(lambda: "Cannot connect to rediss://" in worker.log_tail(), 30, what="the worker to say it waits")
    finally:
        worker.stop()


REFUSALS_SEEN = 15
"""Handshakes the rotated server refuses before the test puts it right: many reconnects, one line."""


@pytest.fixture
def rotating_redis(pki: Pki, worker_env: dict[str, str], tmp_path: Path) -> Iterator[TlsRedis]:
    _redis_or_skip()
    server = start_tls_redis(pki, tmp_path / "rotating-redis")
    yield server
    server.stop()


def test_a_certificate_rotated_to_one_that_does_not_verify_is_said_once_and_waited_out(
    rotating_redis: TlsRedis, pki: Pki, worker_env: dict[str, str], media_root: Path, tmp_path: Path
) -> None:
    env = tls_env(worker_env, rotating_redis.url(pki.ca))
    # A producer that trusts both CAs can enqueue while the worker's CA is refused.
    producer = Producer(Settings.from_env(producer_env({**env, "REDIS_URL": rotating_redis.url(pki.both_cas)})))
    log = tmp_path / "worker.log"
    worker = WorkerProcess(env=env, log_path=log, concurrency=2)
    image = media_root / f"rotation-{uuid.uuid4().hex[:6]}.png"
    image.write_bytes(png_bytes())
    server_log = rotating_redis.directory / "redis.log"
    try:
        worker.start().wait_ready(producer.app)
        (before,) = producer.enqueue([str(image)])
        assert producer.wait([before.job_id], timeout=60).all_succeeded, worker.log_tail()

        rotating_redis.restart(pki.other_server_cert, pki.other_server_key)  # signed by a CA the worker does not trust
        (job,) = producer.enqueue([str(image)])
        # The worker's connections keep trying (each refused handshake is in the server's log)…
        wait_until(
            lambda: server_log.read_text(errors="replace").count("unknown ca") >= REFUSALS_SEEN,
            90,
            interval=0.2,
            what=f"the server to refuse {REFUSALS_SEEN} handshakes",
        )
        # … the worker lives, and the job waits.
        assert worker.process is not None
        assert worker.process.poll() is None, worker.log_tail()
        assert producer.status([job.job_id])[0]["status"] == "queued"  # type: ignore[index]

        rotating_redis.restart(pki.server_cert, pki.server_key)  # put right
        outcome = producer.wait([job.job_id], timeout=90)
        assert outcome.all_succeeded, f"{outcome.docs}\n{worker.log_tail()}"
        wait_until(lambda: "TLS verifies again" in log.read_text(), 30, what="the worker to say TLS verifies again")
    finally:
        worker.stop()
        producer.close()
    text = log.read_text(errors="replace")
    # Celery's "Cannot connect to …" at each attempt, each loop's failing line: none says it again.
    # (A connection the restart itself closed ends in an SSL EOF, before any handshake is refused:
    # a line about the server going away, not about the certificate, and not counted here.)
    # Once for the worker: once by each child under --processes N (WSUPLOAD_TEST_PROCESSES), none by the parent.
    children = len(split_concurrency(2, processes_wanted(env["WSUPLOAD_PROCESSES"])))
    about_certificate = [line for line in text.splitlines() if "certificate" in line.lower()]
    assert len(about_certificate) == children, "\n".join(about_certificate)
    for line in about_certificate:
        assert line.endswith(
            "its TLS certificate does not verify (unable to get local issuer certificate): give the CA that signed it"
            " (ssl_ca_certs), and connect by a host name the certificate holds;"
            " connections are retried until it verifies (said once)"
        )
        assert "/MainProcess] Redis at rediss://" in line  # a child's line, naming the URL
    assert text.count("TLS verifies again") == children
    assert "Traceback" not in text


PASSWORD = "s3cret-not-shown"


def with_password(url: str) -> str:
    return url.replace("rediss://", f"rediss://:{PASSWORD}@", 1)


def producer_calls(settings: Settings, image: str) -> dict[str, Callable[[], object]]:
    """Each call of both producer libraries that reaches a broker, by name: what it raises is the test's."""

    def run(calls: Callable[[AsyncProducer], Awaitable[object]]) -> object:
        async def main() -> object:
            async with AsyncProducer(settings) as producer:
                return await calls(producer)

        return asyncio.run(main())

    def sync(call: Callable[[Producer], object]) -> Callable[[], object]:
        def made() -> object:
            producer = Producer(settings)
            try:
                return call(producer)
            finally:
                producer.close()

        return made

    return {
        "enqueue": sync(lambda p: p.enqueue([image])),
        "status": sync(lambda p: p.status(["some-job"])),
        "wait": sync(lambda p: p.wait(["some-job"], timeout=5)),
        "async enqueue": lambda: run(lambda p: p.enqueue([image])),
        "async status": lambda: run(lambda p: p.status(["some-job"])),
        "async wait": lambda: run(lambda p: p.wait(["some-job"], timeout=5)),
    }


@pytest.mark.parametrize("call", ["enqueue", "status", "wait", "async enqueue", "async status", "async wait"])
def test_the_producer_library_raises_tls_refused_for_a_wrong_ca_on_redis(
    tls_redis: TlsRedis, pki: Pki, worker_env: dict[str, str], media_root: Path, call: str
) -> None:
    settings = Settings.from_env(producer_env(tls_env(worker_env, with_password(tls_redis.url(pki.other_ca)))))
    with pytest.raises(TlsRefused) as raised:
        producer_calls(settings, str(media_root / "never.png"))[call]()
    said = str(raised.value)
    assert said.startswith(f"configuration error: Redis at rediss://:***@localhost:{tls_redis.port}/0")
    assert "its TLS certificate does not verify (self-signed certificate in certificate chain)" in said
    assert PASSWORD not in said
    assert "\n" not in said


@pytest.mark.parametrize("call", ["enqueue", "async enqueue"])
def test_the_producer_library_raises_tls_refused_for_a_wrong_ca_on_rabbitmq_before_committing(
    tls_rabbit: TlsRabbit, tls_redis: TlsRedis, pki: Pki, worker_env: dict[str, str], media_root: Path, call: str
) -> None:
    env = tls_env(worker_env, tls_redis.url(pki.ca), WSUPLOAD_BROKER_URL=tls_rabbit.url(pki.other_ca))
    settings = Settings.from_env(producer_env(env))
    owed = keys.owed(settings.queue)
    with pytest.raises(TlsRefused) as raised:
        producer_calls(settings, str(media_root / "never.png"))[call]()
    said = str(raised.value)
    assert said.startswith(f"configuration error: RabbitMQ at amqps://guest:***@localhost:{tls_rabbit.port}/")
    assert "its TLS certificate does not verify (self-signed certificate in certificate chain)" in said
    assert "guest:guest" not in said
    client = redis_client(tls_redis.url(pki.ca))
    assert not client.exists(owed)  # refused before the commit: no job owed (queued, to be published)
    client.close()


def test_mutual_tls_on_rabbitmq_without_a_client_certificate_the_worker_stops_with_one_line(
    tls_rabbit: TlsRabbit, tls_redis: TlsRedis, pki: Pki, worker_env: dict[str, str]
) -> None:
    url = tls_rabbit.url(pki.ca, client_certificate=False)
    line, elapsed = stops_with_one_line(tls_env(worker_env, tls_redis.url(pki.ca), WSUPLOAD_BROKER_URL=url), "worker")
    assert elapsed < STOP_BOUND
    assert line.startswith(f"wsupload: configuration error: RabbitMQ at amqps://guest:***@localhost:{tls_rabbit.port}")
    assert "may require a client certificate (ssl_certfile, ssl_keyfile)" in line


def test_a_job_end_to_end_over_a_tls_rabbitmq_node(
    tls_rabbit: TlsRabbit,
    tls_redis: TlsRedis,
    pki: Pki,
    worker_env: dict[str, str],
    media_root: Path,
    tmp_path: Path,
) -> None:
    # Mutual TLS: the node requires the client certificate its URL gives (ssl_certfile, ssl_keyfile).
    env = tls_env(worker_env, tls_redis.url(pki.ca), WSUPLOAD_BROKER_URL=tls_rabbit.url(pki.ca))
    end_to_end(env, media_root, tmp_path)


@pytest.mark.parametrize("command", [("worker",), ("stats",)])
def test_a_wrong_ca_for_rabbitmq_stops_the_worker_and_stats_within_10_s(
    tls_rabbit: TlsRabbit, tls_redis: TlsRedis, pki: Pki, worker_env: dict[str, str], command: tuple[str, ...]
) -> None:
    env = tls_env(worker_env, tls_redis.url(pki.ca), WSUPLOAD_BROKER_URL=tls_rabbit.url(pki.other_ca))
    line, elapsed = stops_with_one_line(env, *command)
    assert elapsed < STOP_BOUND
    assert "RabbitMQ" in line
    assert "self-signed certificate in certificate chain" in line  # what the TLS library said
    assert "guest:guest" not in line
