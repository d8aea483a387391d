"""Real file names end to end: worker → sandbox → result, with spaces, accents and CJK intact."""

import hashlib
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import run_jobs, run_one
from wsupload.tasks.store.results import JobDoc
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker")]

NAMES = ["café photo 日本.png", "café.png"]


@pytest.fixture
def folder(media_root: Path) -> Path:
    # One folder per test: the same names recur across tests, and the worker reads by path.
    path = media_root / f"names-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def round_trip_problems(doc: JobDoc, name: str, data: bytes, sandbox: SandboxServer) -> list[str]:
    """What did not survive the trip for the file ``name`` (empty when all did)."""
    if doc["status"] != "succeeded":
        return [f"job ended {doc['status']}: {doc['error']}"]
    problems = []
    result = doc["result"]
    if result["filename"] != name:
        problems.append(f"result filename {result['filename']!r}")
    digest = hashlib.sha256(data).hexdigest()
    if [r.filename for r in sandbox.records if r.status == 200 and r.sha256 == digest] != [name]:
        problems.append(f"sandbox records {[(r.filename, r.status) for r in sandbox.records]}")
    try:
        with urllib.request.urlopen(result["download_url"], timeout=10) as answer:
            if answer.read() != data:
                problems.append("other bytes at download_url")
    except urllib.error.HTTPError as error:
        error.close()
        problems.append(f"download_url answered {error.code}")
    return problems


@pytest.mark.parametrize("name", NAMES)
def test_a_real_file_name_round_trips(producer: Producer, sandbox: SandboxServer, folder: Path, name: str) -> None:
    data = png_bytes()
    path = folder / name
    path.write_bytes(data)
    doc = run_one(producer, path)
    assert round_trip_problems(doc, name, data, sandbox) == []
    assert doc["source"] == str(path)


def test_both_names_in_one_run_keep_apart(producer: Producer, sandbox: SandboxServer, folder: Path) -> None:
    files = {name: png_bytes(8 + i, 8) for i, name in enumerate(NAMES)}  # distinct bytes per name
    for name, data in files.items():
        (folder / name).write_bytes(data)
    jobs, docs = run_jobs(producer, [str(folder / name) for name in files])
    for job, doc in zip(jobs, docs, strict=True):
        name = Path(job.source).name
        assert round_trip_problems(doc, name, files[name], sandbox) == []


def test_control_the_old_mangled_answer_is_caught(producer: Producer, sandbox: SandboxServer, folder: Path) -> None:
    # What the sandbox answered for "café.png" before the fix (UTF-8 read as latin-1,
    # re-read as UTF-8): the checks above must reject it.
    data = png_bytes()
    (folder / "café.png").write_bytes(data)
    mangled = "caf\ufffd.png"
    url = f"{sandbox.url}/files/1/caf%EF%BF%BD.png"
    answer = {"type": "image", "download_url": url, "filename": mangled, "size": len(data)}
    sandbox.add_fault(Fault(body={"code": 200, "message": "success", "data": answer}))
    doc = run_one(producer, folder / "café.png")
    assert round_trip_problems(doc, "café.png", data, sandbox) == [
        f"result filename {mangled!r}",
        "download_url answered 404",
    ]
