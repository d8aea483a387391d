"""A worker stops cleanly: exit 0 on SIGTERM, SIGINT and a remote shutdown, and no noise in its log."""

from __future__ import annotations

import os
import re
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import producer_env
from wsupload.config import Settings
from wsupload.worker.dev.local_services import WorkerProcess
from wsupload.worker.producer import Producer

pytestmark = pytest.mark.integration


def stop_by_sigterm(worker: WorkerProcess, producer: Producer) -> None:
    assert worker.process is not None
    os.kill(worker.process.pid, signal.SIGTERM)  # what docker stop and systemd send to the main process


def stop_by_sigint(worker: WorkerProcess, producer: Producer) -> None:
    assert worker.process is not None
    os.killpg(worker.process.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group


def stop_remotely(worker: WorkerProcess, producer: Producer) -> None:
    producer.app.control.shutdown(destination=[worker.hostname])


@pytest.mark.parametrize("stop", [stop_by_sigterm, stop_by_sigint, stop_remotely], ids=["sigterm", "sigint", "remote"])
def test_a_normal_stop_exits_0_with_a_quiet_log(
    worker_env: dict[str, str], tmp_path: Path, stop: Callable[[WorkerProcess, Producer], None]
) -> None:
    env = {**worker_env, "WSUPLOAD_QUEUE": "stop-" + uuid.uuid4().hex[:8]}
    producer = Producer(Settings.from_env(producer_env(env)))
    worker = WorkerProcess(env=env, log_path=tmp_path / "worker.log", concurrency=1).start()
    try:
        worker.wait_ready(producer.app)
        stop(worker, producer)
        assert worker.process is not None
        assert worker.process.wait(timeout=30) == 0
    finally:
        worker.stop()
    log = worker.log_path.read_text()
    assert "Traceback" not in log
    assert "TypeError" not in log
    # The old failure printed its traceback through Celery's stdout redirect, a character a line.
    assert not re.search(r"WARNING/MainProcess\] .?$", log, re.MULTILINE), log[-2000:]
