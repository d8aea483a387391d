"""Flower, run for real against a worker whose task events are on: it shows what each job did.

Flower runs as a user would start it (``celery -A wsupload.worker.app flower``), with no
API key in its environment, and with ``--enable_events=False`` so that it cannot switch
events on remotely: every task it shows came from the worker's own ``WSUPLOAD_TASK_EVENTS``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import API_KEY, FleetHandle, unavailable
from wsupload.tasks.store.results import JobDoc, text
from wsupload.worker.dev.local_services import free_port, stop_group, wait_until
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer

pytestmark = [pytest.mark.integration]

FLOWER = [sys.executable, "-m", "celery", "-A", "wsupload.worker.app", "flower"]


@dataclass
class Flower:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def get(self, path: str) -> tuple[str, Any]:
        """The answer's text (to search for what must not be there) and its JSON."""
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as answer:
            text = answer.read().decode()
        return text, json.loads(text)

    def answering(self, path: str) -> Any:
        """``get``'s JSON once Flower serves it (None before); fails with its log if it has exited."""
        if self.process.poll() is not None:
            raise RuntimeError(f"flower exited with status {self.process.returncode}:\n{self.log()}")
        try:
            return self.get(path)[1]
        except (urllib.error.URLError, ConnectionError):
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture
def watched(fleet: Any, tmp_path: Path) -> Iterator[tuple[FleetHandle, Flower]]:
    """A worker with task events on, and Flower watching its broker, seeing the worker's events."""
    if importlib.util.find_spec("flower") is None:
        unavailable("flower is not installed (a dev dependency: run `make setup`)")
    handle = fleet(count=1, WSUPLOAD_TASK_EVENTS="on")
    port = free_port()
    log_path = tmp_path / "flower.log"
    assert "WAVESPEED_API_KEY" not in handle.env
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*FLOWER, f"--port={port}", "--address=127.0.0.1", "--enable_events=False"],
            env={**handle.env, "FLOWER_UNAUTHENTICATED_API": "true"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    flower = Flower(f"http://127.0.0.1:{port}", process, log_path)
    try:
        # Alive in Flower's event state: its receiver is subscribed and hears the worker.
        names = handle.workers[0].hostnames  # its node, or each of its children's (--processes N)

        def hears_all() -> bool:
            alive = flower.answering("/api/workers?status=true") or {}
            return all(alive.get(name) is True for name in names)

        wait_until(hears_all, 60, interval=0.1, what=f"flower to hear {', '.join(names)}")
        yield handle, flower
    finally:
        stop_group(process, timeout=10)


def expected_exception(doc: JobDoc) -> str:
    """What Celery's task-failed event says of a failed job: its readable error."""
    text = "{kind}: {message}".format(**doc["error"])
    return f"JobFailed({text!r})"


def test_flower_shows_succeeded_jobs_as_success_and_failed_ones_as_failure_with_their_error(
    watched: tuple[FleetHandle, Flower], sandbox: SandboxServer, media_root: Path
) -> None:
    handle, flower = watched
    producer = handle.producer
    sources = []
    for name in ("flower-a.png", "flower-b.png"):
        (media_root / name).write_bytes(png_bytes())
        sources.append(str(media_root / name))
    sources.append(str(media_root / "flower-missing.png"))  # refused before any byte is sent
    jobs = producer.enqueue(sources)
    assert not producer.wait([j.job_id for j in jobs], timeout=60).timed_out
    sandbox.add_fault(Fault(status=401, times=1))  # the next upload is refused: a wrong key, as the API says it
    jobs += producer.enqueue([sources[0]])
    ids = [j.job_id for j in jobs]
    outcome = producer.wait(ids, timeout=60)
    assert not outcome.timed_out
    docs = {doc["job_id"]: doc for doc in outcome.docs if doc is not None}
    statuses = [docs[job_id]["status"] for job_id in ids]
    kinds = [(docs[job_id]["error"] or {}).get("kind") for job_id in ids]
    assert statuses == ["succeeded", "succeeded", "failed", "failed"]
    assert kinds == [None, None, "invalid_input", "unauthorized"]

    def final() -> dict[str, Any] | None:
        tasks = flower.answering("/api/tasks") or {}
        shown = {job_id: tasks.get(job_id, {}) for job_id in ids}
        return shown if all(task.get("state") in ("SUCCESS", "FAILURE") for task in shown.values()) else None

    shown = wait_until(final, 30, interval=0.1, what="flower to show every job's end")
    assert [shown[job_id]["state"] for job_id in ids] == ["SUCCESS", "SUCCESS", "FAILURE", "FAILURE"]
    for job_id in ids[2:]:
        assert shown[job_id]["exception"] == expected_exception(docs[job_id])
    assert "does not exist" in shown[ids[2]]["exception"]
    assert "HTTP 401" in shown[ids[3]]["exception"]
    # Failed, not retried: one delivery each, by Celery's count and by the job's.
    assert [shown[job_id]["retries"] for job_id in ids] == [0, 0, 0, 0]
    assert [docs[job_id]["generation"] for job_id in ids] == [1, 1, 1, 1]

    # Acknowledged: no message of these jobs is left to come back once its lease runs out.
    def held() -> list[str]:
        return [job_id for raw in producer.redis.hvals("unacked") for job_id in ids if job_id in text(raw)]

    wait_until(
        lambda: not held(),
        10,
        what="the failed jobs' messages to be acknowledged",
    )
    assert producer.redis.llen(handle.env["WSUPLOAD_QUEUE"]) == 0

    # The key is nowhere Flower can show it.
    answers = [flower.get(path)[0] for path in ("/api/tasks", "/api/workers?status=true")]
    answers += [flower.get(f"/api/task/info/{job_id}")[0] for job_id in ids]
    assert all(API_KEY not in text for text in answers)
    assert API_KEY not in flower.log_path.read_text(errors="replace")
