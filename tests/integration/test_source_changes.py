"""A file that changes while it is uploaded is never reported as the upload of its old bytes.

The request carrying the changed file is aborted before its body is complete,
and the job's next attempt opens the file again and sends what it holds now.

To change the file mid-upload without sleeping, the sandbox is kept from
reading the body: it stores each upload's file part at ``<storage>/<number>``,
and here upload 1's storage path is a FIFO, so the sandbox's handler blocks
opening it until the test opens the other end. The file is larger than every
socket buffer between the two put together, so while the sandbox is blocked
the worker cannot have read the file's end, which is where the change is
checked for. The test appends to the file while the sandbox is blocked, then
lets it read on.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import API_KEY, Fleet
from wsupload.errors import SourceChanged
from wsupload.tasks.sources.local_files import open_local
from wsupload.tasks.wavespeed.client import UploadClient
from wsupload.worker.dev.local_services import wait_until
from wsupload.worker.dev.samples import mp4_bytes
from wsupload.worker.dev.sandbox import SandboxServer

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def _buffer_max(name: str) -> int:
    """The largest a TCP socket buffer may grow to (the third of ``min default max``)."""
    try:
        return int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 32 * MIB


# Bytes the worker may have read of the file while the sandbox reads nothing: what the
# sandbox took before blocking (one 1 MiB block), the receive and send buffers, and the
# worker's own 1 MiB block in hand. Well past that, the file's end is still unread.
BIG_FILE = max(64 * MIB, _buffer_max("tcp_rmem") + _buffer_max("tcp_wmem") + 16 * MIB)


@pytest.fixture
def roomy_sandbox(tmp_path: Path) -> Iterator[SandboxServer]:
    """A sandbox of our own: no size limit, and storing what it receives."""
    storage = tmp_path / "storage"
    storage.mkdir()
    with SandboxServer(api_key=API_KEY, storage_dir=storage) as server:
        yield server


def big_mp4(path: Path, size: int) -> Path:
    with open(path, "wb") as out:
        out.write(mp4_bytes(4096))
        out.truncate(size)  # sparse: cheap to make, read at full size
    return path


class FifoReader:
    """The other end of a FIFO the sandbox writes a file part into; counts what it read."""

    def __init__(self, fifo: Path) -> None:
        self.fifo = fifo
        self.received = 0
        self._thread = threading.Thread(target=self._drain, name="fifo-reader", daemon=True)

    def start(self) -> FifoReader:
        self._thread.start()
        return self

    def _drain(self) -> None:
        with open(self.fifo, "rb") as end:
            while block := end.read(MIB):
                self.received += len(block)

    def join(self) -> None:
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the sandbox never closed the FIFO"


def release(fifo: Path) -> None:
    """Let a sandbox handler blocked opening ``fifo`` go on, whatever the test did."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))


def test_a_file_that_grows_mid_upload_is_sent_again_at_its_new_size(
    fleet: Fleet, roomy_sandbox: SandboxServer, media_root: Path
) -> None:
    assert roomy_sandbox.storage_dir is not None
    fifo = roomy_sandbox.storage_dir / "1"
    os.mkfifo(fifo)
    path = big_mp4(media_root / "growing.mp4", BIG_FILE)
    workers = fleet(
        WAVESPEED_BASE_URL=roomy_sandbox.url,
        WSUPLOAD_MAX_BYTES=str(4 * BIG_FILE),
        # The sandbox reads nothing while the test appends: that stalled write is not a timeout.
        WSUPLOAD_CONNECT_TIMEOUT="30",
        WSUPLOAD_READ_TIMEOUT="30",
    )
    try:
        (job,) = workers.producer.enqueue([str(path)])
        wait_until(lambda: roomy_sandbox.records, 30, what="the first upload request to reach the sandbox")
        # The worker opened the file before it sent anything; the sandbox now reads nothing more.
        with path.open("ab") as out:
            out.write(os.urandom(MIB))
        reader = FifoReader(fifo).start()
        outcome = workers.producer.wait([job.job_id], timeout=60)
        reader.join()
    finally:
        release(fifo)

    new_content = path.read_bytes()
    (doc,) = outcome.docs
    assert doc is not None
    assert (doc["status"], doc["attempts"]) == ("succeeded", 2), doc
    assert doc["last_error"]["kind"] == "source_changed"
    assert doc["result"]["size"] == len(new_content) == BIG_FILE + MIB

    first, second = roomy_sandbox.records
    # The first request got part of the file and was then cut off: never answered, no upload.
    assert 0 < reader.received < BIG_FILE
    assert (first.status, first.size, first.sha256) == (None, 0, None)
    assert second.status == 200
    assert second.size == len(new_content)
    assert second.sha256 == hashlib.sha256(new_content).hexdigest()


def test_a_change_caught_mid_request_comes_out_of_the_client_as_source_changed(
    roomy_sandbox: SandboxServer, tmp_path: Path
) -> None:
    """Raised from the body's read() inside urllib3, not wrapped as a connection error."""
    path = big_mp4(tmp_path / "clip.mp4", 3 * MIB)  # three socket blocks: the request is underway
    client = UploadClient(base_url=roomy_sandbox.url, api_key=API_KEY, connect_timeout=5, read_timeout=30)
    try:
        with open_local(str(path)) as opened:
            with path.open("ab") as out:
                out.write(b"appended after opening")
            with pytest.raises(SourceChanged, match="changed while it was being uploaded"):
                client.upload(opened)
        # The same client (and its connection pool) uploads the file as it is now.
        with open_local(str(path)) as reopened:
            result = client.upload(reopened)
    finally:
        client.close()
    assert result["size"] == path.stat().st_size
    # By answer, not arrival: the aborted request's handler may reach the sandbox's books after the
    # second's. Only the second completed, with the file as it is now; the first never did.
    answers = sorted(((r.status or 0, r.sha256) for r in roomy_sandbox.records), key=lambda answer: answer[0])
    assert answers == [(0, None), (200, hashlib.sha256(path.read_bytes()).hexdigest())]
