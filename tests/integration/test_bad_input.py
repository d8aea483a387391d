"""Every invalid source ends `failed` with a clear error and sends zero requests."""

import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import WORKER_MAX_BYTES, run_one
from wsupload.config import UPLOAD_TASK_NAME
from wsupload.tasks.store.results import TERMINAL, JobDoc
from wsupload.worker.dev.local_services import wait_until
from wsupload.worker.dev.samples import mp4_bytes, png_bytes
from wsupload.worker.dev.sandbox import SandboxServer
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker")]


def make(media_root: Path, tmp_path: Path, case: str) -> str:
    """Build the bad source named by ``case``; return what the producer enqueues."""
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes())
    if case == "missing":
        return str(media_root / "no-such-file.png")
    if case == "directory":
        (media_root / "a-dir.png").mkdir(exist_ok=True)
        return str(media_root / "a-dir.png")
    if case == "fifo":
        path = media_root / "a-pipe.png"
        if not path.exists():
            os.mkfifo(path)
        return str(path)
    if case == "empty":
        (media_root / "empty.png").write_bytes(b"")
        return str(media_root / "empty.png")
    if case == "extension":
        (media_root / "notes.txt").write_bytes(b"hello")
        return str(media_root / "notes.txt")
    if case == "content":
        (media_root / "fake.png").write_bytes(b"text, not a PNG")
        return str(media_root / "fake.png")
    if case == "too-large":
        (media_root / "huge.mp4").write_bytes(mp4_bytes(WORKER_MAX_BYTES + 1))
        return str(media_root / "huge.mp4")
    if case == "outside-roots":
        return str(outside)
    if case == "symlink-escape":
        link = media_root / "escape.png"
        link.unlink(missing_ok=True)
        link.symlink_to(outside)
        return str(link)
    if case == "dotdot-escape":
        return f"{media_root}/../{outside.parent.name}/outside.png"
    if case == "scheme":
        return "ftp://example.com/a.png"
    raise AssertionError(case)


CASES = {
    "missing": ("invalid_input", "does not exist"),
    "directory": ("invalid_input", "not a regular file"),
    "fifo": ("invalid_input", "not a regular file"),
    "empty": ("invalid_input", "is empty"),
    "extension": ("invalid_input", "does not have a supported extension"),
    "content": ("invalid_input", "does not look like a .png file"),
    "too-large": ("too_large", "WSUPLOAD_MAX_BYTES"),
    "outside-roots": ("invalid_input", "outside WSUPLOAD_ALLOWED_ROOTS"),
    "symlink-escape": ("invalid_input", "outside WSUPLOAD_ALLOWED_ROOTS"),
    "dotdot-escape": ("invalid_input", "outside WSUPLOAD_ALLOWED_ROOTS"),
    "scheme": ("invalid_input", "unsupported source scheme 'ftp'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_source_is_refused_before_any_request(
    producer: Producer, sandbox: SandboxServer, media_root: Path, tmp_path: Path, case: str
) -> None:
    kind, needle = CASES[case]
    doc = run_one(producer, make(media_root, tmp_path, case))
    assert doc["status"] == "failed"
    assert doc["error"]["kind"] == kind
    assert needle in doc["error"]["message"]
    assert doc["error"]["retryable"] is False
    assert doc["attempts"] == 0
    assert sandbox.records == []


def foreign_send(producer: Producer, args: list[Any]) -> JobDoc:
    """Send as a producer that writes no queued document; poll for the outcome."""
    producer.app.send_task(UPLOAD_TASK_NAME, args=args, queue=producer.settings.queue)

    def finished() -> JobDoc | None:
        doc = producer.status([args[0]])[0]
        return doc if doc and doc["status"] in TERMINAL else None

    doc: JobDoc = wait_until(finished, 60, what="the job to finish")
    return doc


def test_a_relative_path_from_a_foreign_producer_is_refused(producer: Producer, sandbox: SandboxServer) -> None:
    # The Python producer makes paths absolute; a producer in another language may not.
    doc = foreign_send(producer, [uuid.uuid4().hex, "media/a.png"])
    assert (doc["status"], doc["error"]["kind"]) == ("failed", "invalid_input")
    assert "not an absolute path" in doc["error"]["message"]
    assert sandbox.records == []


def test_a_non_string_source_is_refused(producer: Producer, sandbox: SandboxServer) -> None:
    doc = foreign_send(producer, [uuid.uuid4().hex, 42])
    assert (doc["status"], doc["error"]["kind"]) == ("failed", "invalid_input")
    assert "must be a string" in doc["error"]["message"]
    assert sandbox.records == []
