"""Callbacks through the real worker: signed, retried, and never holding up the upload."""

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Fleet
from wsupload.tasks.callbacks import SIGNATURE_HEADER, callback_key, verify_signature
from wsupload.worker.dev.local_services import wait_until
from wsupload.worker.dev.samples import png_bytes

pytestmark = pytest.mark.integration
SECRET = "whsec-integration"


class Hooks(ThreadingHTTPServer):
    """A receiver answering with the next scripted status (then 200), recording what it got."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HookHandler)
        self.statuses: list[int] = []
        self.received: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


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
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_callback_is_signed_retried_and_delivered(fleet: Fleet, hooks: Hooks, media_root: Path) -> None:
    png = media_root / "hooked.png"
    png.write_bytes(png_bytes(9, 9))
    workers = fleet(WSUPLOAD_CALLBACK_SECRET=SECRET, WSUPLOAD_CALLBACK_ATTEMPTS="4")
    hooks.statuses = [500, 503]  # the receiver is down for the first two tries
    (job,) = workers.producer.enqueue([str(png)], options={"callback_url": hooks.url})
    wait_until(lambda: workers.producer.redis.get(callback_key(job.job_id)), 60, what="the callback's outcome")
    record = json.loads(workers.producer.redis.get(callback_key(job.job_id)) or b"{}")
    assert (record["status"], record["attempts"]) == ("delivered", 3)
    assert len(hooks.received) == 3
    last = hooks.received[-1]
    assert verify_signature(SECRET, last["body"], last["signature"], now=time.time())
    delivered = json.loads(last["body"])
    assert delivered == workers.producer.status([job.job_id])[0]
    assert delivered["status"] == "succeeded"


def test_a_dead_receiver_does_not_hold_up_the_upload(fleet: Fleet, hooks: Hooks, media_root: Path) -> None:
    png = media_root / "unhooked.png"
    png.write_bytes(png_bytes(9, 8))
    workers = fleet(WSUPLOAD_CALLBACK_SECRET=SECRET, WSUPLOAD_CALLBACK_ATTEMPTS="2")
    hooks.statuses = [500, 500]
    (job,) = workers.producer.enqueue([str(png)], options={"callback_url": hooks.url})
    outcome = workers.producer.wait([job.job_id], timeout=60)
    assert outcome.all_succeeded
    wait_until(lambda: workers.producer.redis.get(callback_key(job.job_id)), 60, what="the callback's outcome")
    record = json.loads(workers.producer.redis.get(callback_key(job.job_id)) or b"{}")
    assert (record["status"], record["error"]) == ("failed", "the receiver answered HTTP 500")
