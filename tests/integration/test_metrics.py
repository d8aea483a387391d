"""Metrics as an operator sees them: a real Prometheus scraping a real worker (and `wsupload metrics`).

Prometheus is Debian's ``prometheus`` package (``scripts/install-prometheus``),
started here on a free port with a temporary config built from
``deploy/prometheus.yml`` (scraping every second) and ``deploy/alerts.yml``;
without it these tests fail under CI=true and skip locally. ``promtool`` checks
the shipped files and unit-tests the alert rules.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.integration.conftest import API_KEY, Fleet, run_one, start_exporter, unavailable
from wsupload.worker.dev.local_services import free_port, wait_until
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS = ("WsuploadNoLiveWorkers", "WsuploadQueueGrowing", "WsuploadFailureRatio", "WsuploadQueueDepthUnreadable")


T = TypeVar("T")


def settles(read: Callable[[], T], expected: T, what: str, timeout: float = 60) -> None:
    """Poll ``read`` until it answers ``expected``; past ``timeout``, fail showing its last answer."""
    answers: list[T] = []

    def matches() -> bool:
        answers.append(read())
        return answers[-1] == expected

    with contextlib.suppress(TimeoutError):
        wait_until(matches, timeout, interval=0.5, what=what)
    assert answers[-1] == expected, what


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"no {name} binary (run scripts/install-prometheus, or apt-get install prometheus)")
    assert path is not None
    return path


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as answer:
            doc = json.loads(answer.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, promql: str, label: str | None = None) -> dict[str | None, float]:
        """An instant vector as {value of ``label`` (None: no label asked): value}."""
        found = self.api("query", query=promql)["result"]
        return {(row["metric"].get(label) if label else None): float(row["value"][1]) for row in found}

    def settles(self, promql: str, expected: dict[str | None, float], label: str | None = None) -> None:
        """Poll until ``promql`` answers exactly ``expected`` (Prometheus scrapes every second)."""
        settles(lambda: self.query(promql, label), expected, f"{promql} (log: {self.log})")

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """Start a Prometheus scraping ``targets`` each second under the shipped job name, with the shipped rules."""
    started: list[subprocess.Popen[bytes]] = []

    def start(targets: list[str], job: str = "wsupload") -> Prometheus:
        executable = binary("prometheus")
        config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(DEPLOY / name) for name in config["rule_files"]]
        (shipped,) = config["scrape_configs"]
        config["scrape_configs"] = [{"job_name": job, "static_configs": [{"targets": targets}]}]
        assert shipped["job_name"] == "wsupload"  # the name the alert rules select on
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        log = tmp_path / "prometheus.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [
                    executable,
                    f"--config.file={path}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        server = Prometheus(f"http://127.0.0.1:{port}", process, log)

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited with status {process.returncode}:\n{server.log_tail()}")
            try:
                urllib.request.urlopen(f"{server.url}/-/ready", timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(ready, 30, interval=0.1, what="prometheus to be ready")
        return server

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=15)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def test_prometheus_counts_a_workers_jobs_by_outcome_and_kind(
    fleet: Fleet, prometheus: Callable[..., Prometheus], sandbox: SandboxServer, media_root: Path
) -> None:
    port = free_port()
    handle = fleet(1, WSUPLOAD_METRICS_PORT=str(port), WSUPLOAD_METRICS_ADDR="127.0.0.1")
    server = prometheus([f"127.0.0.1:{port}"])
    files = []
    for n in range(4):
        path = media_root / f"metrics-{uuid.uuid4().hex[:6]}-{n}.png"
        path.write_bytes(png_bytes(8 + n, 8))
        files.append(path)

    # One at a time, so each fault meets the job it is meant for.
    docs = [run_one(handle.producer, files[0])]
    sandbox.add_fault(Fault(status=503))  # once: retried, then uploaded
    docs.append(run_one(handle.producer, files[1]))
    sandbox.add_fault(Fault(status=401))
    docs.append(run_one(handle.producer, files[2]))
    sandbox.add_fault(Fault(status=400))
    docs.append(run_one(handle.producer, files[3]))
    assert [d["status"] for d in docs] == ["succeeded", "succeeded", "failed", "failed"]
    assert [d["error"]["kind"] for d in docs[2:]] == ["unauthorized", "rejected"]

    server.settles('sum(wsupload_jobs_total{outcome="succeeded"})', {None: 2})
    server.settles(
        'sum by (kind) (wsupload_jobs_total{outcome="failed"}) > 0', {"unauthorized": 1, "rejected": 1}, "kind"
    )
    server.settles("sum(wsupload_http_attempts_total)", {None: 5})
    server.settles("sum by (kind) (wsupload_retries_total) > 0", {"server_error": 1}, "kind")
    sizes = sum(path.stat().st_size for path in files[:2])
    server.settles("sum(wsupload_bytes_uploaded_total)", {None: sizes})
    server.settles("sum(wsupload_upload_duration_seconds_count)", {None: 4})
    server.settles("sum(wsupload_job_latency_seconds_count)", {None: 4})
    server.settles("sum(wsupload_jobs_in_flight)", {None: 0})
    queues: dict[str | None, float] = {handle.producer.settings.queue: 0, handle.producer.settings.bulk_queue: 0}
    server.settles("wsupload_queue_depth", queues, "queue")
    server.settles('up{job="wsupload"}', {None: 1})

    # The shipped alert rules load and evaluate against the real series; with a worker up, none fires
    # (WsuploadNoLiveWorkers is pending until the first scrape, then inactive).
    def evaluated() -> dict[str, tuple[str, str]]:
        groups = server.api("rules", type="alert")["groups"]
        return {rule["name"]: (rule["health"], rule["state"]) for group in groups for rule in group["rules"]}

    settles(evaluated, {name: ("ok", "inactive") for name in ALERTS}, "the alert rules to settle")

    # What Prometheus stores is what the worker serves: no secret, job id or path in it.
    text = scrape(port)
    assert API_KEY not in text
    for doc, path in zip(docs, files, strict=True):
        assert doc["job_id"] not in text
        assert path.name not in text
    assert str(media_root) not in text


def test_the_metrics_command_exports_queue_depths_with_no_api_key(
    fleet: Fleet, prometheus: Callable[..., Prometheus], media_root: Path, tmp_path: Path
) -> None:
    handle = fleet(0)  # queues nobody consumes: what is enqueued stays there
    assert "WAVESPEED_API_KEY" not in handle.env
    handle.producer.enqueue([str(media_root / f"waiting-{n}.png") for n in range(3)])
    handle.producer.enqueue([str(media_root / f"bulk-{n}.png") for n in range(2)], bulk=True)
    port = free_port()
    log = tmp_path / "exporter.log"
    with open(log, "wb") as out:
        exporter = start_exporter(handle.env, port, stdout=out, stderr=subprocess.STDOUT)
    try:
        server = prometheus([f"127.0.0.1:{port}"], job="wsupload-queues")
        settings = handle.producer.settings
        server.settles("wsupload_queue_depth", {settings.queue: 3, settings.bulk_queue: 2}, "queue")
        server.settles('wsupload_queue_depth_up{job="wsupload-queues"}', {None: 1})
        assert "wsupload_jobs_total" not in scrape(port)  # the depths only: this process runs no jobs
    finally:
        exporter.send_signal(signal.SIGTERM)
        code = exporter.wait(timeout=15)
    text = log.read_text()
    assert code == 0, text
    assert text.startswith(f"serving the depths of {settings.queue}, {settings.bulk_queue} (Redis redis://")
    assert f"at http://127.0.0.1:{port}/metrics" in text


def test_the_metrics_command_keeps_answering_while_redis_is_unreachable(fleet: Fleet, tmp_path: Path) -> None:
    handle = fleet(0)
    dead = free_port()
    env = {**handle.env, "REDIS_URL": f"redis://127.0.0.1:{dead}/0"}
    port = free_port()
    exporter = start_exporter(env, port)
    try:

        def answered() -> str | None:
            try:
                return scrape(port)
            except urllib.error.URLError:
                assert exporter.poll() is None, "the exporter exited"
                return None

        text = wait_until(answered, 30, interval=0.1, what="the exporter to answer")
        assert "wsupload_queue_depth_up 0.0" in text
        assert "wsupload_queue_depth{" not in text  # no sample rather than a made-up 0
        assert "wsupload_queue_depth_up 0.0" in scrape(port)  # and again: it does not give up
    finally:
        exporter.send_signal(signal.SIGTERM)
        _, err = exporter.communicate(timeout=15)
    assert exporter.returncode == 0
    assert "Traceback" not in err.decode()


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_shipped_scrape_config_and_alert_rules() -> None:
    config = promtool("check", "config", str(DEPLOY / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "SUCCESS: 1 rule files found" in config.stdout
    rules = promtool("check", "rules", str(DEPLOY / "alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in rules.stdout


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    shown = ",".join(f'{k}="{v}"' for k, v in {"job": "wsupload", "instance": "w1:9100", **labels}.items())
    return {"series": f"{name}{{{shown}}}", "values": values}


def test_the_alert_rules_fire_on_trouble_and_stay_quiet_otherwise(tmp_path: Path) -> None:
    shipped = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"][0]["rules"]
    annotations = {rule["alert"]: rule["annotations"] for rule in shipped}
    severity = {rule["alert"]: rule["labels"]["severity"] for rule in shipped}

    def alert(name: str, **labels: str) -> dict[str, Any]:
        return {"exp_labels": {"severity": severity[name], **labels}, "exp_annotations": annotations[name]}

    trouble = {
        "interval": "1m",
        "input_series": [
            series("up", "1x10 0x30"),  # the only worker is down from minute 11
            series("wsupload_queue_depth", "0+5x60", queue="wsupload"),  # grows steadily
            series("wsupload_queue_depth", "100x60", queue="wsupload.bulk"),  # a backlog, but not growing
            series("wsupload_queue_depth_up", "0x60"),
            series("wsupload_jobs_total", "0+8x60", outcome="succeeded", kind="none"),
            series("wsupload_jobs_total", "0+2x60", outcome="failed", kind="unauthorized"),  # 20 % fail
        ],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "WsuploadNoLiveWorkers", "exp_alerts": []},
            {
                "eval_time": "14m",
                "alertname": "WsuploadNoLiveWorkers",
                "exp_alerts": [alert("WsuploadNoLiveWorkers")],
            },
            {"eval_time": "10m", "alertname": "WsuploadQueueGrowing", "exp_alerts": []},  # pending, not firing yet
            {
                "eval_time": "20m",
                "alertname": "WsuploadQueueGrowing",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": severity["WsuploadQueueGrowing"], "queue": "wsupload"},
                        "exp_annotations": {
                            "summary": "wsupload queue wsupload keeps growing",
                            "description": "Queue wsupload holds 100 jobs and has trended up for 15 minutes and more.",
                        },
                    }
                ],
            },
            {"eval_time": "20m", "alertname": "WsuploadFailureRatio", "exp_alerts": [alert("WsuploadFailureRatio")]},
            {
                "eval_time": "6m",
                "alertname": "WsuploadQueueDepthUnreadable",
                "exp_alerts": [alert("WsuploadQueueDepthUnreadable")],
            },
        ],
    }
    healthy = {
        "interval": "1m",
        "input_series": [
            series("up", "1x40"),
            series("wsupload_queue_depth", "50x40", queue="wsupload"),  # a steady backlog
            series("wsupload_queue_depth_up", "1x40"),
            series("wsupload_jobs_total", "0+19x40", outcome="succeeded", kind="none"),
            series("wsupload_jobs_total", "0+1x40", outcome="failed", kind="rejected"),  # 5 %
        ],
        "alert_rule_test": [{"eval_time": "30m", "alertname": name, "exp_alerts": []} for name in ALERTS],
    }
    tests = tmp_path / "alerts.test.yml"
    tests.write_text(
        yaml.safe_dump(
            {"rule_files": [str(DEPLOY / "alerts.yml")], "evaluation_interval": "1m", "tests": [trouble, healthy]}
        )
    )
    answer = promtool("test", "rules", str(tests))
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert "SUCCESS" in answer.stdout
