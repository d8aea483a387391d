"""docker-compose.yml and the Dockerfile, checked by parsing (no Docker engine runs here)."""

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return doc


def test_redis_persists_and_never_evicts(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert "redis-data" in compose["volumes"]


def test_worker_is_wired_to_redis_and_takes_the_key_from_the_environment(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    env = worker["environment"]
    assert env["REDIS_URL"].startswith("redis://redis:")
    assert env["WAVESPEED_API_KEY"].startswith("${WAVESPEED_API_KEY")
    assert worker["command"] == ["wsupload", "worker"]
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert any(volume.endswith(":/media:ro") for volume in worker["volumes"])
    assert env["WSUPLOAD_ALLOWED_ROOTS"] == "/media"


def test_the_worker_is_healthy_while_its_heartbeat_is_fresh(compose: dict[str, Any]) -> None:
    from wsupload.config.parsers import parse_duration
    from wsupload.worker.cli import PROBE_TIMEOUT
    from wsupload.worker.worker_records import BEAT_INTERVAL, RECORD_TTL

    check = compose["services"]["worker"]["healthcheck"]
    assert check["test"] == ["CMD", "wsupload", "health"]  # no API key needed, no host port: runs as is
    interval, timeout, start = (parse_duration(check[key]) for key in ("interval", "timeout", "start_period"))
    assert timeout > PROBE_TIMEOUT  # an unreachable Redis answers "unreachable" (exit 2), not a killed probe
    assert interval >= BEAT_INTERVAL  # probing faster than the worker beats learns nothing new
    assert check["retries"] * interval > RECORD_TTL  # a missed beat or a short Redis blip is not "unhealthy"
    assert start >= 10  # a starting worker imports and connects before its first beat


def test_the_dockerfile_builds_what_compose_runs(compose: dict[str, Any]) -> None:
    assert compose["services"]["worker"]["build"] == "."
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")  # continuation lines joined
    lines = [line.split() for line in text.splitlines() if line and line[0] != "#"]
    copied = [part for line in lines if line[0] == "COPY" for part in line[1:-1]]
    assert {"wsupload", "config", "tasks", "worker", "pyproject.toml"} <= set(copied)
    assert all((ROOT / path).exists() for path in copied)
    runs = " ".join(" ".join(line) for line in lines if line[0] == "RUN")
    assert "rm -r /src" in runs
    assert "wsupload.worker.dev" in runs  # the development tools stay out of the image
    assert ["CMD", '["wsupload",', '"worker"]'] in lines
    assert any(line[0] == "USER" and line[1] != "root" for line in lines)


def test_the_runtime_never_imports_the_development_tools() -> None:
    # What the image keeps must work without wsupload.worker.dev, which it deletes.
    runtime = [
        "wsupload",
        "wsupload.worker.cli",
        "wsupload.worker.app",
        "wsupload.worker.producer",
        "wsupload.worker.consumer",
        "wsupload.worker.heartbeat",  # the healthcheck's `wsupload health` reads what it writes
        "wsupload.worker.metrics",  # the metrics endpoint and `wsupload metrics`
        "wsupload.tasks.upload",
        "wsupload.tasks.scan",
        "wsupload.tasks.callbacks",
    ]
    probe = f"import sys, {', '.join(runtime)}; print([m for m in sys.modules if m.startswith('wsupload.worker.dev')])"
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd="/")
    assert found.stdout.strip() == "[]"


def test_beat_runs_the_example_schedules(compose: dict[str, Any]) -> None:
    from wsupload.config.schedules import load_schedules

    beat = compose["services"]["beat"]
    assert beat["command"] == ["wsupload", "beat"]
    assert beat["environment"]["WSUPLOAD_SCHEDULES"] == "/config/schedules.toml"
    assert "WAVESPEED_API_KEY" not in beat["environment"]  # beat only enqueues
    assert any(volume.endswith(":/state") for volume in beat["volumes"])
    assert [s.name for s in load_schedules(ROOT / "config" / "schedules.example.toml")] == [
        "incoming",
        "nightly-archive",
    ]


def test_the_monitoring_profile_runs_prometheus_on_the_shipped_config_scraping_each_workers_metrics_port(
    compose: dict[str, Any],
) -> None:
    from wsupload.config.settings import Settings

    prometheus = compose["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]  # optional: `docker compose up` alone does not start it
    assert "depends_on" not in prometheus  # it keeps running (and alerting) with no worker up
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in prometheus["volumes"]}
    command = prometheus["command"]
    config_path = next(arg.split("=", 1)[1] for arg in command if arg.startswith("--config.file="))
    assert mounts[config_path] == "./deploy/prometheus.yml"
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:  # relative to the config file, so mounted beside it
        assert mounts[str(Path(config_path).parent / rule_file)] == f"./deploy/{rule_file}"
    assert any(volume.startswith("prometheus-data:") for volume in prometheus["volumes"])
    assert "prometheus-data" in compose["volumes"]
    assert all(port.startswith("127.0.0.1:") for port in prometheus["ports"])  # the UI is not published wider

    (job,) = config["scrape_configs"]
    (discovery,) = job["dns_sd_configs"]
    assert job["job_name"] == "wsupload"  # the name the alert rules select on
    assert discovery["names"] == ["worker"]  # every replica of the worker service
    worker_env = compose["services"]["worker"]["environment"]
    assert int(worker_env["WSUPLOAD_METRICS_PORT"]) == discovery["port"]
    assert Settings.from_env({"WSUPLOAD_METRICS_PORT": worker_env["WSUPLOAD_METRICS_PORT"]}).metrics_port == 9100
    assert "WSUPLOAD_METRICS_ADDR" not in worker_env  # 0.0.0.0: reachable from the prometheus container


def test_the_alert_rules_select_the_scrape_job_and_metrics_the_workers_export() -> None:
    import fakeredis
    from prometheus_client import CollectorRegistry

    from wsupload.worker.metrics import QueueDepth, WorkerMetrics

    registry = CollectorRegistry()
    WorkerMetrics(registry)
    registry.register(QueueDepth(fakeredis.FakeRedis(), ["q"]))
    exported = {sample.name for metric in registry.collect() for sample in metric.samples}
    rules = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())["groups"][0]["rules"]
    assert {rule["alert"] for rule in rules} == {
        "WsuploadNoLiveWorkers",
        "WsuploadQueueGrowing",
        "WsuploadFailureRatio",
        "WsuploadQueueDepthUnreadable",
    }
    for rule in rules:
        for name in re.findall(r"\b(wsupload_[a-z_]+)\b", rule["expr"]):
            assert name in exported, f"{rule['alert']} uses {name}, which no worker exports"
    assert 'up{job="wsupload"}' in next(r["expr"] for r in rules if r["alert"] == "WsuploadNoLiveWorkers")


# The RabbitMQ variant: docker-compose.rabbitmq.yml over docker-compose.yml, merged as compose merges them.


def merged(base: Any, override: Any) -> Any:
    """Compose's merge of an override file for what these files use: mappings merge key by key
    (environment, depends_on), anything else the override replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {key: merged(base[key], value) if key in base else value for key, value in override.items()} | {
            key: value for key, value in base.items() if key not in override
        }
    return override


def interpolated(text: str, **env: str) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?error}, from ``env`` (an unset required one fails)."""

    def value(match: re.Match[str]) -> str:
        name, operator, word = match.group(1), match.group(2), match.group(3)
        if name in env:
            return env[name]
        assert operator != ":?", f"{name} is required: {word}"
        return word or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", value, text)


@pytest.fixture(scope="module")
def rabbit_compose(compose: dict[str, Any]) -> dict[str, Any]:
    override = yaml.safe_load((ROOT / "docker-compose.rabbitmq.yml").read_text())
    doc: dict[str, Any] = merged(compose, override)
    return doc


def test_the_rabbitmq_variant_runs_a_persistent_healthchecked_broker_with_per_queue_timeouts(
    rabbit_compose: dict[str, Any],
) -> None:
    rabbitmq = rabbit_compose["services"]["rabbitmq"]
    repository, tag = rabbitmq["image"].split(":")
    assert repository == "rabbitmq"
    major, minor = (int(part) for part in tag.split("-")[0].split(".")[:2])
    assert (major, minor) >= (3, 12)  # a consumer timeout per queue, not only server-wide
    assert rabbitmq["healthcheck"]["test"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]
    assert "rabbitmq-data:/var/lib/rabbitmq" in rabbitmq["volumes"]
    assert "rabbitmq-data" in rabbit_compose["volumes"]
    assert rabbitmq["hostname"] == "rabbitmq"  # the node's name, under which its data is kept
    assert all(port.startswith("127.0.0.1:") for port in rabbitmq["ports"])  # the UI is not published wider
    assert "redis-data" in rabbit_compose["volumes"]  # the base file's volumes stay


@pytest.mark.parametrize("service", ["worker", "beat"])
def test_the_rabbitmq_variant_sends_messages_through_rabbitmq_and_keeps_redis_for_the_documents(
    rabbit_compose: dict[str, Any], service: str
) -> None:
    from urllib.parse import unquote, urlsplit

    rabbitmq, node = rabbit_compose["services"]["rabbitmq"], rabbit_compose["services"][service]
    env = {key: str(value) for key, value in node["environment"].items()}
    assert env["REDIS_URL"].startswith("redis://redis:")  # documents, leases, heartbeats stay in Redis
    assert {"redis", "rabbitmq"} <= node["depends_on"].keys()
    assert all(dependency["condition"] == "service_healthy" for dependency in node["depends_on"].values())

    given = {"RABBITMQ_PASSWORD": "s3cret-Pass_1"}
    url = urlsplit(interpolated(env["WSUPLOAD_BROKER_URL"], **given))
    assert (url.scheme, url.hostname, url.port, unquote(url.path[1:])) == ("amqp", "rabbitmq", 5672, "/")  # vhost
    # The user and password the broker is created with.
    assert url.username == interpolated(rabbitmq["environment"]["RABBITMQ_DEFAULT_USER"], **given)
    assert unquote(url.password or "") == interpolated(rabbitmq["environment"]["RABBITMQ_DEFAULT_PASS"], **given)
    with pytest.raises(AssertionError, match="RABBITMQ_PASSWORD is required"):
        interpolated(env["WSUPLOAD_BROKER_URL"])  # no default password: compose refuses to start


def test_the_rabbitmq_variants_broker_url_is_one_the_settings_take(rabbit_compose: dict[str, Any]) -> None:
    from wsupload.config import ConfigError, Settings

    env = rabbit_compose["services"]["worker"]["environment"]
    urls = {
        key: interpolated(env[key], RABBITMQ_PASSWORD="s3cret-Pass_1") for key in ("REDIS_URL", "WSUPLOAD_BROKER_URL")
    }
    try:
        settings = Settings.from_env(urls)
    except ConfigError as error:
        if "WSUPLOAD_BROKER_URL: expected a URL starting with redis" not in str(error):
            raise
        pytest.skip(f"this checkout's settings take no amqp:// broker yet: {error}")
    assert settings.effective_broker_url == urls["WSUPLOAD_BROKER_URL"]
    assert settings.redis_url == "redis://redis:6379/0"
    # The broker sets no consumer_timeout: RabbitMQ's default, 30 min, is what the worker must assume.
    rabbitmq = rabbit_compose["services"]["rabbitmq"]
    assert "command" not in rabbitmq
    assert not any("rabbitmq.conf" in volume or "conf.d" in volume for volume in rabbitmq["volumes"])
    assert "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS" not in rabbitmq["environment"]
    assert "WSUPLOAD_AMQP_CONSUMER_TIMEOUT" not in env
    assert settings.amqp_consumer_timeout == 30 * 60
