"""The metrics: what the job code reports (tasks.observe.telemetry) as Prometheus counts, each in a fresh registry.

Jobs run through the real ``JobRunner`` with fakeredis and a scripted client;
the queue-depth collector reads fakeredis, or a Redis that does not answer.
"""

import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.unit.test_job import DATA, SECRET, ScriptedClient, make_runner
from tests.unit.test_renewer import FakeChannel
from wsupload.config import Settings
from wsupload.errors import Rejected, ServerError
from wsupload.tasks.observe import telemetry
from wsupload.tasks.recovery.lease import JobLease, LeaseBook
from wsupload.tasks.sources.media import OpenedSource
from wsupload.tasks.store import results
from wsupload.tasks.store.results import ResultStore
from wsupload.tasks.wavespeed.rate_limit import FleetLimiter
from wsupload.tasks.wire.options import JobOptions
from wsupload.worker import cli, metrics
from wsupload.worker.dev.local_services import free_port
from wsupload.worker.metrics import QueueDepth, WorkerEndpoint, WorkerMetrics
from wsupload.worker.renewer import Held, Renewer


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    """A fresh registry whose metrics receive what the job code reports, for this test only."""
    fresh = CollectorRegistry()
    telemetry.install(WorkerMetrics(fresh))
    yield fresh
    telemetry.install(None)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.fixture
def png(tmp_path: Path) -> str:
    from wsupload.worker.dev.samples import png_bytes

    path = tmp_path / "secret-name-7f3a.png"
    path.write_bytes(png_bytes())
    return str(path)


def test_nothing_is_reported_and_nothing_breaks_without_a_sink(store: ResultStore, png: str) -> None:
    assert telemetry.installed() is None
    doc = make_runner(store, ScriptedClient(DATA), []).run("j", png)
    assert doc["status"] == "succeeded"


def test_a_job_that_succeeds_after_a_retry_counts_one_job_two_attempts_one_retry_and_its_bytes(
    registry: CollectorRegistry, store: ResultStore, png: str
) -> None:
    doc = make_runner(store, ScriptedClient(ServerError("HTTP 503", 503), DATA), []).run("j", png)
    assert doc["status"] == "succeeded"
    assert value(registry, "wsupload_jobs_total", outcome="succeeded", kind="none") == 1
    assert value(registry, "wsupload_jobs_total", outcome="failed", kind="rejected") == 0
    assert value(registry, "wsupload_http_attempts_total") == 2
    assert value(registry, "wsupload_retries_total", kind="server_error") == 1
    assert value(registry, "wsupload_bytes_uploaded_total") == Path(png).stat().st_size
    assert value(registry, "wsupload_uploads_total", flow="binary") == 1
    assert value(registry, "wsupload_uploads_total", flow="direct") == 0  # every flow's series from the start
    assert value(registry, "wsupload_upload_duration_seconds_count", outcome="succeeded") == 1
    assert value(registry, "wsupload_job_latency_seconds_count", outcome="succeeded") == 1
    assert value(registry, "wsupload_jobs_in_flight") == 0
    assert value(registry, "wsupload_dedup_hits_total") == 0


def test_a_failed_job_counts_under_its_kind_and_uploads_no_bytes(
    registry: CollectorRegistry, store: ResultStore, png: str
) -> None:
    doc = make_runner(store, ScriptedClient(Rejected("HTTP 400: bad", 400)), []).run("j", png)
    assert doc["error"]["kind"] == "rejected"
    assert value(registry, "wsupload_jobs_total", outcome="failed", kind="rejected") == 1
    assert value(registry, "wsupload_jobs_total", outcome="succeeded", kind="none") == 0
    assert value(registry, "wsupload_http_attempts_total") == 1
    assert value(registry, "wsupload_bytes_uploaded_total") == 0
    assert value(registry, "wsupload_upload_duration_seconds_count", outcome="failed") == 1


def test_a_refused_source_and_a_message_recorded_outside_a_run_count_as_failed_jobs(
    registry: CollectorRegistry, store: ResultStore, tmp_path: Path
) -> None:
    runner = make_runner(store, ScriptedClient(), [])
    runner.run("missing", str(tmp_path / "nope.png"))
    from wsupload.errors import InvalidMessage

    runner.fail("bad-message", "", InvalidMessage("arguments are not [job_id, source]"))
    runner.fail("bad-message", "", InvalidMessage("counted once: the job has ended"))
    assert value(registry, "wsupload_jobs_total", outcome="failed", kind="invalid_input") == 1
    assert value(registry, "wsupload_jobs_total", outcome="failed", kind="invalid_message") == 1
    assert value(registry, "wsupload_http_attempts_total") == 0
    # Recorded without running here: no delivery duration, but the latency is the job's.
    assert value(registry, "wsupload_upload_duration_seconds_count", outcome="failed") == 1
    assert value(registry, "wsupload_job_latency_seconds_count", outcome="failed") == 2


def test_a_job_that_already_ended_is_not_counted_again_and_a_resumed_one_is_counted_as_resumed(
    registry: CollectorRegistry, store: ResultStore, png: str
) -> None:
    runner = make_runner(store, ScriptedClient(DATA), [])
    runner.run("j", png)
    runner.run("j", png)  # a redelivered message for a job that ended
    assert value(registry, "wsupload_jobs_total", outcome="succeeded", kind="none") == 1
    assert value(registry, "wsupload_lease_recoveries_total", event="resumed") == 0

    store.claim("k")  # an earlier delivery took the job and never ended it (its worker died)
    make_runner(store, ScriptedClient(DATA), []).run("k", png)
    assert value(registry, "wsupload_lease_recoveries_total", event="resumed") == 1


def test_a_dedup_hit_is_counted_and_uploads_nothing(registry: CollectorRegistry, store: ResultStore, png: str) -> None:
    make_runner(store, ScriptedClient(DATA), []).run("first", png, JobOptions(dedup=True))
    make_runner(store, ScriptedClient(), []).run("second", png, JobOptions(dedup=True))
    assert value(registry, "wsupload_dedup_hits_total") == 1
    assert value(registry, "wsupload_http_attempts_total") == 1
    assert value(registry, "wsupload_jobs_total", outcome="succeeded", kind="none") == 2


def test_jobs_in_flight_counts_a_job_while_it_runs(registry: CollectorRegistry, store: ResultStore, png: str) -> None:
    seen: list[float | None] = []

    class Watching(ScriptedClient):
        def upload(self, source: OpenedSource) -> dict[str, Any]:
            seen.append(value(registry, "wsupload_jobs_in_flight"))
            return super().upload(source)

    make_runner(store, Watching(DATA), []).run("j", png)
    assert seen == [1]
    assert value(registry, "wsupload_jobs_in_flight") == 0


def test_latency_runs_from_created_at_to_finished_at_and_tolerates_odd_documents() -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    doc = {
        "created_at": results.isoformat(created),
        "finished_at": results.isoformat(created + timedelta(seconds=90)),
    }
    assert telemetry.latency_of(doc) == 90
    # A producer's clock ahead of the worker's: not negative.
    assert telemetry.latency_of({**doc, "created_at": results.isoformat(created + timedelta(hours=1))}) == 0
    assert telemetry.latency_of({**doc, "created_at": "yesterday"}) is None
    assert telemetry.latency_of({**doc, "created_at": "2026-01-01T00:00:00"}) is None  # naive: no zone to compare
    assert telemetry.latency_of({}) is None


def test_labels_stay_within_bounded_sets_whatever_a_document_or_error_says(registry: CollectorRegistry) -> None:
    odd = {"status": "failed", "error": {"kind": "/srv/media/x.png"}, "created_at": None}
    assert telemetry.outcome_of(odd) == ("failed", "other")
    assert telemetry.outcome_of({"status": "weird"}) == ("other", "none")
    assert telemetry.outcome_of({"status": "succeeded", "error": {"kind": "rejected"}}) == ("succeeded", "none")
    telemetry.retry("https://example.com/?key=1")
    assert value(registry, "wsupload_retries_total", kind="other") == 1


def test_the_exposition_names_no_job_id_path_or_secret(
    registry: CollectorRegistry, store: ResultStore, png: str
) -> None:
    runner = make_runner(store, ScriptedClient(Rejected(f"HTTP 400: key {SECRET} is bad", 400)), [])
    runner.run("job-0123456789abcdef", png)
    text = generate_latest(registry).decode()
    assert 'wsupload_jobs_total{kind="rejected",outcome="failed"} 1.0' in text
    for leak in ("job-0123456789abcdef", "secret-name-7f3a", png, SECRET, "https://"):
        assert leak not in text


def test_a_failing_sink_is_logged_once_and_never_fails_the_job(
    store: ResultStore, png: str, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(WorkerMetrics):
        def attempt(self) -> None:
            raise RuntimeError("boom")

    telemetry.install(Broken(CollectorRegistry()))
    try:
        runner = make_runner(store, ScriptedClient(DATA, DATA), [])
        assert runner.run("a", png)["status"] == "succeeded"
        assert runner.run("b", png)["status"] == "succeeded"
    finally:
        telemetry.install(None)
    assert caplog.text.count("telemetry: the sink failed (attempt)") == 1


def test_the_fleet_limiter_reports_each_wait_for_a_slot_and_nothing_when_no_limit_is_set(
    registry: CollectorRegistry, redis_client: fakeredis.FakeRedis
) -> None:
    with FleetLimiter(redis_client).slot():
        pass
    assert value(registry, "wsupload_fleet_limiter_wait_seconds_count") == 0
    waits = iter([0.25, 0.0])
    limiter = FleetLimiter(redis_client, per_second=1, sleep=lambda _: None)
    limiter.try_acquire = lambda token: next(waits)  # type: ignore[method-assign]
    with limiter.slot():
        pass
    assert value(registry, "wsupload_fleet_limiter_wait_seconds_count") == 1


def test_the_renewer_reports_a_lost_lease_and_a_job_handed_back(
    registry: CollectorRegistry, redis_client: fakeredis.FakeRedis
) -> None:
    book = LeaseBook()
    book.add(JobLease("j-gone", "gone", grace=10))  # no entry in unacked_index: another worker has it
    channel = FakeChannel()
    renewer = Renewer(redis_client, interval=2.0, book=book, held=lambda: [Held("gone", channel)])
    renewer.renew()
    renewer.renew()  # already marked lost: not counted twice
    assert value(registry, "wsupload_lease_recoveries_total", event="lease_lost") == 1

    book = LeaseBook()
    book.add(JobLease("j-running", "t1", grace=10))
    renewer = Renewer(redis_client, interval=2.0, book=book, held=lambda: [Held("t1", channel)])
    assert renewer.hand_back(grace=0.01) == 1
    assert value(registry, "wsupload_lease_recoveries_total", event="handed_back") == 1


def test_queue_depth_is_read_at_scrape_time(redis_client: fakeredis.FakeRedis) -> None:
    registry = CollectorRegistry()
    registry.register(QueueDepth(redis_client, ["wsupload", "wsupload.bulk"]))
    assert value(registry, "wsupload_queue_depth", queue="wsupload") == 0
    redis_client.lpush("wsupload.bulk", "m1", "m2", "m3")
    redis_client.lpush("wsupload", "m4")
    assert value(registry, "wsupload_queue_depth", queue="wsupload") == 1
    assert value(registry, "wsupload_queue_depth", queue="wsupload.bulk") == 3
    assert value(registry, "wsupload_queue_depth_up") == 1


def test_an_unreachable_redis_gives_no_depth_sample_and_no_error_logged_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    server = fakeredis.FakeServer()
    registry = CollectorRegistry()
    registry.register(QueueDepth(fakeredis.FakeRedis(server=server), ["wsupload"]))
    server.connected = False
    for _ in range(2):
        text = generate_latest(registry).decode()
        assert "wsupload_queue_depth{" not in text
        assert "wsupload_queue_depth_up 0.0" in text
    assert caplog.text.count("metrics: cannot read the queue depths") == 1
    server.connected = True
    assert value(registry, "wsupload_queue_depth", queue="wsupload") == 0
    assert "metrics: reading the queue depths again" in caplog.text


def test_a_redis_that_never_answers_costs_a_scrape_at_most_the_depth_timeout() -> None:
    import socket

    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        settings = Settings.from_env({"REDIS_URL": f"redis://127.0.0.1:{port}/0"})
        collector = metrics.queue_depth(settings)
        kwargs = collector.client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == metrics.QUEUE_DEPTH_TIMEOUT
        families = list(collector.collect())
    assert [(f.name, [s.value for s in f.samples]) for f in families] == [
        ("wsupload_queue_depth", []),
        ("wsupload_queue_depth_up", [0]),
    ]


def test_the_depths_are_read_from_the_broker_interactive_queue_first() -> None:
    settings = Settings.from_env(
        {"REDIS_URL": "redis://results:6379/0", "WSUPLOAD_BROKER_URL": "redis://broker:6379/1", "WSUPLOAD_QUEUE": "q"}
    )
    collector = metrics.queue_depth(settings)
    assert collector.queues == ("q", "wsupload.bulk")
    assert collector.client.connection_pool.connection_kwargs["host"] == "broker"


def fetch(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def worker_sender(**env: str) -> Any:
    """What Celery's worker_ready passes: something with ``.app.settings``."""
    settings = Settings.from_env({"WAVESPEED_API_KEY": SECRET, "REDIS_URL": "redis://127.0.0.1:1/0", **env})
    return SimpleNamespace(app=SimpleNamespace(settings=settings))


def test_the_worker_serves_its_metrics_from_worker_ready_to_worker_shutdown() -> None:
    port = free_port()
    WorkerEndpoint._worker_ready(
        sender=worker_sender(WSUPLOAD_METRICS_PORT=str(port), WSUPLOAD_METRICS_ADDR="127.0.0.1")
    )
    try:
        assert isinstance(telemetry.installed(), WorkerMetrics)
        telemetry.attempt()
        text = fetch(port)
        assert "wsupload_http_attempts_total 1.0" in text
        assert "wsupload_queue_depth_up 0.0" in text  # nothing listens on port 1: left out, not an error
        assert "process_resident_memory_bytes" in text
    finally:
        WorkerEndpoint._worker_shutdown()
    assert telemetry.installed() is None
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        fetch(port)


def test_metrics_stay_off_unless_a_port_is_set() -> None:
    WorkerEndpoint._worker_ready(sender=worker_sender())
    assert telemetry.installed() is None
    assert WorkerEndpoint.running() is None


def test_a_worker_whose_metrics_port_is_taken_logs_it_and_runs_without_metrics(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        WorkerEndpoint._worker_ready(
            sender=worker_sender(WSUPLOAD_METRICS_PORT=str(port), WSUPLOAD_METRICS_ADDR="127.0.0.1")
        )
    assert telemetry.installed() is None
    assert f"metrics: cannot listen on 127.0.0.1:{port}" in caplog.text
    assert "this worker runs without metrics" in caplog.text


def test_the_metrics_command_says_what_is_wrong_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    for name in ("WSUPLOAD_METRICS_PORT", "WAVESPEED_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["metrics"]) == cli.EXIT_ERROR
    assert capsys.readouterr().err == "wsupload: metrics: give --port, or set WSUPLOAD_METRICS_PORT\n"

    with pytest.raises(SystemExit) as exit_:
        cli.main(["metrics", "--port", "70000"])
    assert exit_.value.code == 2
    assert "a port is from 1 to 65535 (got 70000)" in capsys.readouterr().err

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert cli.main(["metrics", "--port", str(port), "--addr", "127.0.0.1"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"wsupload: metrics: cannot listen on 127.0.0.1:{port}: ")
    assert err.count("\n") == 1
