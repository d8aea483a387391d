"""The example web app (``examples/fastapi_app.py``) under a real uvicorn, against a real worker and the sandbox.

Driven over HTTP as its users would: a file or an ``s3://`` key posted is uploaded and its
document read back; the event stream follows a job to its end; what lies outside the allowed
roots and buckets (a ``..`` escape and a symlink out included) is refused with a 4xx and never
enqueued, and with the allow-lists unset nothing is taken; DELETE cancels a queued job (an app
whose queue no worker consumes) and says when a job had already ended; SIGTERM stops the app
cleanly, its producer closed. The app's environment is a producer's: no API key.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import S3, StartWorker, producer_env
from tests.integration.test_cancel import held_request
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import is_end
from wsupload.worker.dev.local_services import WorkerProcess, free_port, start_redis, wait_until
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer
from wsupload.worker.producer import Producer

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclass
class App:
    client: httpx.Client
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> int:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()  # never left running: the failure is reported, not hidden
            raise


def start_app(env: dict[str, str], log: Path) -> App:
    assert "WAVESPEED_API_KEY" not in env  # a web app needs Redis only
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--app-dir", str(EXAMPLES), "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    app = App(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30), process, log)
    try:
        wait_until(lambda: process.poll() is not None or answers(app.client), 30, what="uvicorn to serve the app")
        assert process.poll() is None, f"uvicorn exited with status {process.returncode}:\n{log.read_text()}"
    except BaseException:
        app.stop()
        raise
    return app


def answers(client: httpx.Client) -> bool:
    try:
        return client.get("/openapi.json").status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def app(worker: WorkerProcess, worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The app, producing for the session's worker."""
    started = start_app(producer_env(worker_env), tmp_path_factory.mktemp("example-app") / "uvicorn.log")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def idle_app(worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The app on a queue of its own that no worker consumes: its jobs stay queued."""
    queue = "example-idle-" + uuid.uuid4().hex[:8]
    env = producer_env({**worker_env, "WSUPLOAD_QUEUE": queue, "WSUPLOAD_BULK_QUEUE": f"{queue}.bulk"})
    started = start_app(env, tmp_path_factory.mktemp("example-idle-app") / "uvicorn.log")
    yield started
    started.stop()


@pytest.fixture
def own_app(own_env: dict[str, str], start_worker: StartWorker, tmp_path: Path) -> Iterator[App]:
    """The app, producing for a worker of the test's own (a 60 s read timeout: it waits out a held answer)."""
    start_worker()
    started = start_app(producer_env(own_env), tmp_path / "uvicorn.log")
    yield started
    started.stop()


def media(root: Path, name: str) -> Path:
    path = root / f"example-{name}-{uuid.uuid4().hex[:8]}.png"
    path.write_bytes(png_bytes(8, 8 + len(name)))
    return path


def post(app: App, source: str) -> str:
    answer = app.client.post("/uploads", json={"source": source})
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["job_id"]
    return job_id


def ended(app: App, job_id: str) -> dict[str, Any]:
    """The job's document read through the app, polled until it has ended."""

    def read() -> dict[str, Any] | None:
        answer = app.client.get(f"/uploads/{job_id}")
        assert answer.status_code == 200, answer.text
        doc: dict[str, Any] = answer.json()
        return doc if is_end(doc["status"]) else None

    found: dict[str, Any] = wait_until(read, 60, interval=0.1, what=f"job {job_id} to end")
    return found


def job_documents(producer: Producer) -> set[str]:
    """The documents' keys (not a job's `:generation` or `:cancel` key, which a worker may add meanwhile)."""
    found = (key.decode() for key in producer.redis.scan_iter(match=keys.result("*"), count=1000))
    return {key for key in found if key.count(":") == keys.result("x").count(":")}


def test_a_posted_file_and_s3_key_are_uploaded_and_their_documents_read(
    app: App, media_root: Path, s3: S3, sandbox: SandboxServer
) -> None:
    path = media(media_root, "posted")
    job_id = post(app, str(path))
    doc = ended(app, job_id)
    assert (doc["job_id"], doc["status"]) == (job_id, "succeeded")
    downloaded = httpx.get(doc["result"]["download_url"], timeout=10)
    assert downloaded.content == path.read_bytes()

    name = f"in/example-{uuid.uuid4().hex[:8]}.png"
    s3.admin.put_object(Bucket="media", Key=name, Body=png_bytes(9, 9))
    doc = ended(app, post(app, f"s3://media/{name}"))
    assert doc["status"] == "succeeded"
    assert sandbox.records[-1].sha256 == hashlib.sha256(png_bytes(9, 9)).hexdigest()

    unknown = app.client.get(f"/uploads/{uuid.uuid4().hex}")
    assert unknown.status_code == 404
    assert "no job" in unknown.json()["detail"]


def events(answer: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in answer.iter_lines():
        if line.startswith("data:"):
            yield json.loads(line.removeprefix("data:"))


def test_the_event_stream_follows_a_job_to_its_end(own_app: App, sandbox: SandboxServer, media_root: Path) -> None:
    app = own_app
    sandbox.add_fault(Fault(stall=60))  # the upload is held at the sandbox until released
    job_id = post(app, str(media(media_root, "followed")))
    held_request(sandbox)
    with app.client.stream("GET", f"/uploads/{job_id}/events") as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        stream = events(answer)
        first = next(stream)  # read while the upload is held: the job has not ended
        sandbox.release_stalls()
        rest = list(stream)  # the app ends the stream when the job ends
    docs = [first, *rest]
    assert {doc["job_id"] for doc in docs} == {job_id}
    assert first["status"] == "running"
    assert [doc["status"] for doc in docs][-1] == "succeeded"
    assert [is_end(doc["status"]) for doc in docs].count(True) == 1
    assert len(docs) == len({json.dumps(doc, sort_keys=True) for doc in docs}), "each event is a change"

    with app.client.stream("GET", f"/uploads/{job_id}/events") as again:  # an ended job: its end, then the end
        assert [doc["status"] for doc in events(again)] == ["succeeded"]
    assert app.client.get(f"/uploads/{uuid.uuid4().hex}/events").status_code == 404


def test_sources_outside_the_allowed_roots_and_buckets_are_refused_and_not_enqueued(
    app: App, media_root: Path, tmp_path: Path, producer: Producer
) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes())
    assert not outside.resolve().is_relative_to(media_root)
    escape = f"{media_root}/../{tmp_path.name}/outside.png"
    assert Path(escape).resolve() == outside.resolve()  # the '..' escape names a real file
    link = media_root / f"example-link-{uuid.uuid4().hex[:8]}.png"
    link.symlink_to(outside)
    (media_root / "notes.txt").write_text("not media")
    refused = {
        str(outside): (403, "outside WSUPLOAD_ALLOWED_ROOTS"),
        escape: (403, "outside WSUPLOAD_ALLOWED_ROOTS"),
        str(link): (403, "outside WSUPLOAD_ALLOWED_ROOTS"),
        f"file://{outside}": (403, "outside WSUPLOAD_ALLOWED_ROOTS"),
        "s3://elsewhere/cat.png": (403, "outside WSUPLOAD_ALLOWED_BUCKETS"),
        "s3://media/in/": (422, "does not name an object"),
        "example.png": (422, "not an absolute path"),
        str(media_root / "notes.txt"): (422, "supported extension"),
        str(media_root / "missing.png"): (422, "is not a file"),
        "https://example.com/cat.png": (422, "unsupported source"),
        "": (422, "empty"),
    }
    before = job_documents(producer)
    answers = {source: app.client.post("/uploads", json={"source": source}) for source in refused}
    got = {source: (answer.status_code, answer.json()["detail"]) for source, answer in answers.items()}
    wrong = {s: got[s] for s, (code, needle) in refused.items() if got[s][0] != code or needle not in got[s][1]}
    assert not wrong
    assert job_documents(producer) == before
    accepted = post(app, str(media(media_root, "accepted")))  # the control: what is enqueued shows
    assert job_documents(producer) - before == {keys.result(accepted)}
    assert app.client.post("/uploads", json={"path": "/x.png"}).status_code == 422  # not the body it takes


def test_delete_cancels_a_queued_job_and_says_when_a_job_had_ended(app: App, idle_app: App, media_root: Path) -> None:
    job_id = post(idle_app, str(media(media_root, "queued")))
    assert idle_app.client.get(f"/uploads/{job_id}").json()["status"] == "queued"  # no worker takes it
    cancelled = idle_app.client.delete(f"/uploads/{job_id}")
    assert cancelled.status_code == 200
    assert cancelled.json() == {"job_id": job_id, "outcome": "cancelled", "status": "cancelled"}
    assert idle_app.client.get(f"/uploads/{job_id}").json()["status"] == "cancelled"
    again = idle_app.client.delete(f"/uploads/{job_id}")
    assert again.json() == {"job_id": job_id, "outcome": "ended", "status": "cancelled"}

    done = post(app, str(media(media_root, "done")))
    assert ended(app, done)["status"] == "succeeded"
    finished = app.client.delete(f"/uploads/{done}")
    assert finished.status_code == 200
    assert finished.json() == {"job_id": done, "outcome": "ended", "status": "succeeded"}
    assert app.client.get(f"/uploads/{done}").json()["status"] == "succeeded"  # left as it was

    unknown = uuid.uuid4().hex
    missing = app.client.delete(f"/uploads/{unknown}")
    assert missing.status_code == 404
    assert missing.json() == {"job_id": unknown, "outcome": "unknown", "status": None}


def test_an_app_without_allowed_roots_or_buckets_takes_neither_and_stops_cleanly_on_sigterm(
    worker_env: dict[str, str], media_root: Path, tmp_path: Path
) -> None:
    unset = ("WSUPLOAD_ALLOWED_ROOTS", "WSUPLOAD_ALLOWED_BUCKETS")
    env = {k: v for k, v in producer_env(worker_env).items() if k not in unset}
    started = start_app(env, tmp_path / "uvicorn.log")
    local = started.client.post("/uploads", json={"source": str(media(media_root, "unset"))})
    remote = started.client.post("/uploads", json={"source": "s3://media/in/cat.png"})
    assert (local.status_code, local.json()["detail"]) == (
        403,
        "no local paths are taken here: WSUPLOAD_ALLOWED_ROOTS is unset",
    )
    assert (remote.status_code, remote.json()["detail"]) == (
        403,
        "no s3:// keys are taken here: WSUPLOAD_ALLOWED_BUCKETS is unset",
    )
    assert started.client.get(f"/uploads/{uuid.uuid4().hex}").status_code == 404  # the producer was used
    assert started.stop() == -signal.SIGTERM  # uvicorn shuts down gracefully, then exits by the signal it got
    log = started.log.read_text()
    assert "Application shutdown complete." in log, log  # the lifespan closed the producer without error
    assert "Traceback" not in log, log


def test_while_redis_is_away_the_app_answers_503_with_retry_after_and_serves_again_once_it_is_back(
    worker_env: dict[str, str], media_root: Path, tmp_path: Path
) -> None:
    server = start_redis()
    port = server.port
    started = start_app(producer_env({**worker_env, "REDIS_URL": server.url}), tmp_path / "uvicorn.log")
    try:
        job = f"/uploads/{uuid.uuid4().hex}"
        assert started.client.get(job).status_code == 404
        server.stop()  # the fault: Redis is gone (a restart, a failover)
        for answer in (
            started.client.get(job),
            started.client.delete(job),
            started.client.post("/uploads", json={"source": str(media(media_root, "away"))}),
        ):
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "5"
            assert "Redis" in answer.json()["detail"]  # reads: cannot be reached; the post: its job in doubt
        server = start_redis(port=port)
        wait_until(lambda: started.client.get(job).status_code == 404, 30, what="the app to serve again")
    finally:
        started.stop()
        server.stop()
    log = started.log.read_text()
    assert "Traceback" not in log, log
