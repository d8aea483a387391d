"""Celery's own commands against real workers: inspect and control need no API key; starting a worker does."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import producer_env, run_one
from wsupload.config import Settings
from wsupload.worker.dev.local_services import WorkerProcess, stop_group, wait_until
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration]

CELERY = [sys.executable, "-m", "celery", "-A", "wsupload.worker.app"]
REFUSAL = [
    "wsupload: configuration error:",
    "  WAVESPEED_API_KEY: is required to run a worker (set it in the worker's environment)",
]


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90, check=False)


def test_inspect_and_control_answer_without_the_api_key(worker: WorkerProcess, worker_env: dict[str, str]) -> None:
    env = producer_env(worker_env)
    assert "WAVESPEED_API_KEY" not in env
    name = worker.hostnames[0]  # the worker's node (with --processes N, its first child's)
    node = ["--destination", name, "--timeout", "10", "--json"]

    ping = run([*CELERY, "inspect", "ping", *node], env)
    assert ping.returncode == 0, ping.stderr
    assert json.loads(ping.stdout) == {name: {"ok": "pong"}}

    queues = run([*CELERY, "inspect", "active_queues", *node], env)
    assert queues.returncode == 0, queues.stderr
    assert [q["name"] for q in json.loads(queues.stdout)[name]][:1] == [env["WSUPLOAD_QUEUE"]]

    # A control command, harmless here: this worker runs with WSUPLOAD_TASK_EVENTS unset (off).
    events = run([*CELERY, "control", "disable_events", *node], env)
    assert events.returncode == 0, events.stderr
    assert json.loads(events.stdout) == [{name: {"ok": "task events already disabled"}}]


@pytest.mark.parametrize(
    "argv",
    [[sys.executable, "-m", "wsupload.worker.cli", "worker"], [*CELERY, "worker"]],
    ids=["wsupload-worker", "celery-worker"],
)
def test_a_worker_without_the_api_key_refuses_to_start_in_one_line(worker_env: dict[str, str], argv: list[str]) -> None:
    result = run(argv, producer_env(worker_env))
    assert result.returncode == 2
    assert result.stderr.splitlines() == REFUSAL
    assert "Traceback" not in result.stderr + result.stdout


def test_a_bad_setting_stops_celery_commands_in_one_line(worker_env: dict[str, str]) -> None:
    result = run([*CELERY, "inspect", "ping", "--timeout", "1"], {**producer_env(worker_env), "WSUPLOAD_LEASE": "1"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "wsupload: configuration error:",
        "  WSUPLOAD_LEASE: must be from 2 to 600 seconds (got '1')",
    ]


@pytest.fixture
def celery_started(worker_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Producer, str]]:
    """A worker started by Celery's own command, with the key, on queues of its own."""
    suffix = uuid.uuid4().hex[:6]
    env = {**worker_env, "WSUPLOAD_QUEUE": f"celery-{suffix}", "WSUPLOAD_BULK_QUEUE": f"celery-{suffix}.bulk"}
    producer = Producer(Settings.from_env(producer_env(env)))
    node = f"celery-{suffix}@{socket.gethostname()}"
    with (tmp_path / "worker.log").open("wb") as log:
        process = subprocess.Popen(
            [*CELERY, "worker", f"--hostname={node}", "--concurrency=1", "--without-gossip", "--without-mingle"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"celery worker exited with status {process.returncode}:\n{log_text()}")
        return bool(producer.app.control.ping(destination=[node], timeout=0.5))

    def log_text() -> str:
        return (tmp_path / "worker.log").read_text(errors="replace")[-4000:]

    try:
        wait_until(ready, 60, interval=0.1, what="the celery-started worker to answer a ping")
        yield producer, node
    finally:
        stop_group(process)


def test_celery_worker_with_the_key_runs_jobs(celery_started: tuple[Producer, str], media_root: Path) -> None:
    # The control for the refusal above: the same entry point, the key present, a job done.
    producer, node = celery_started
    png = media_root / "celery-started.png"
    png.write_bytes(png_bytes())
    doc = run_one(producer, png)
    assert (doc["status"], doc["worker"]) == ("succeeded", node)
