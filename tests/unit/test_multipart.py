"""The streaming multipart body: exact length, parseable, read in bounded blocks."""

import io
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from python_multipart.multipart import MultipartParser

from wsupload.errors import SourceChanged
from wsupload.tasks.wavespeed import multipart
from wsupload.tasks.wavespeed.multipart import SENDFILE_MIN, FileSpan, MultipartBody


def parse(body: bytes, boundary: str) -> tuple[dict[str, str], bytes]:
    headers: dict[str, str] = {}
    data = bytearray()
    field: list[bytes] = []
    value: list[bytes] = []

    def header_end() -> None:
        headers[b"".join(field).decode().lower()] = b"".join(value).decode()
        field.clear()
        value.clear()

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": lambda d, s, e: field.append(d[s:e]),
            "on_header_value": lambda d, s, e: value.append(d[s:e]),
            "on_header_end": header_end,
            "on_part_data": lambda d, s, e: data.extend(d[s:e]),
        },
    )
    parser.write(body)
    parser.finalize()
    return headers, bytes(data)


def drain(body: MultipartBody, block: int) -> list[bytes]:
    parts = []
    while chunk := body.read(block):
        parts.append(chunk)
    return parts


def test_body_has_exact_length_and_parses_back() -> None:
    payload = bytes(range(256)) * 1000
    body = MultipartBody(
        io.BytesIO(payload), field="file", filename='we"ird\nname.png', content_type="image/png", size=len(payload)
    )
    raw = b"".join(drain(body, 4096))
    assert len(raw) == len(body)
    headers, data = parse(raw, body.boundary)
    assert data == payload
    assert headers["content-disposition"] == 'form-data; name="file"; filename="we%22ird%0Aname.png"'
    assert headers["content-type"] == "image/png"
    assert body.content_type == f"multipart/form-data; boundary={body.boundary}"


def test_file_is_read_in_blocks_no_larger_than_asked() -> None:
    payload = b"x" * 100_000
    body = MultipartBody(
        io.BytesIO(payload), field="file", filename="a.png", content_type="image/png", size=len(payload)
    )
    chunks = drain(body, 8192)
    assert max(len(c) for c in chunks) <= 8192
    assert parse(b"".join(chunks), body.boundary)[1] == payload


def test_a_small_file_goes_out_in_one_block_with_its_head_and_tail() -> None:
    payload = b"y" * 10_000
    body = MultipartBody(io.BytesIO(payload), field="file", filename="a.png", content_type="image/png", size=10_000)
    chunks = drain(body, 64 * 1024)
    assert len(chunks) == 1
    assert parse(chunks[0], body.boundary)[1] == payload


@pytest.mark.parametrize("block", [1, 7, 100, 10_000])
def test_any_block_size_gives_the_same_body(block: int) -> None:
    payload = bytes(range(256)) * 20

    def body() -> MultipartBody:
        return MultipartBody(
            io.BytesIO(payload), field="file", filename="a.png", content_type="image/png", size=len(payload)
        )

    whole, blocks = body(), body()
    expected = b"".join(drain(whole, 1 << 20)).replace(whole.boundary.encode(), b"BOUNDARY")
    assert b"".join(drain(blocks, block)).replace(blocks.boundary.encode(), b"BOUNDARY") == expected


def test_a_file_that_shrinks_mid_upload_is_a_retryable_change() -> None:
    body = MultipartBody(io.BytesIO(b"short"), field="file", filename="a.png", content_type="image/png", size=100)
    with pytest.raises(SourceChanged, match="ended after 5 of its 100 bytes") as caught:
        drain(body, 4096)
    assert (caught.value.kind, caught.value.retryable) == ("source_changed", True)


class Check:
    """A ``check`` that records how much of the body had been handed out when it ran."""

    def __init__(self, body_so_far: list[bytes], fail: bool = False) -> None:
        self.body_so_far = body_so_far
        self.fail = fail
        self.seen: list[bytes] = []

    def __call__(self) -> None:
        self.seen.append(b"".join(self.body_so_far))
        if self.fail:
            raise SourceChanged("changed")


def checked_body(payload: bytes, fail: bool) -> tuple[Check, list[bytes], MultipartBody]:
    handed: list[bytes] = []
    check = Check(handed, fail)
    body = MultipartBody(
        io.BytesIO(payload), field="file", filename="a.png", content_type="image/png", size=len(payload), check=check
    )
    return check, handed, body


@pytest.mark.parametrize("block", [1, 100, 4096, 1 << 20])
def test_the_check_runs_once_after_the_last_file_byte_and_before_the_tail(block: int) -> None:
    payload = bytes(range(256)) * 10
    check, handed, body = checked_body(payload, fail=False)
    while chunk := body.read(block):
        handed.append(chunk)
    raw = b"".join(handed)
    assert len(check.seen) == 1
    # Handed out before the check: the head and at most the file, never the closing boundary.
    before = check.seen[0]
    assert raw.startswith(before)
    assert f"--{body.boundary}--".encode() not in before
    assert parse(raw, body.boundary)[1] == payload


@pytest.mark.parametrize("block", [1, 100, 4096, 1 << 20])
def test_a_failed_check_stops_the_body_before_its_tail(block: int) -> None:
    payload = bytes(range(256)) * 10
    _, handed, body = checked_body(payload, fail=True)

    def send() -> None:
        while chunk := body.read(block):
            handed.append(chunk)

    with pytest.raises(SourceChanged):
        send()
    sent = b"".join(handed)
    assert f"--{body.boundary}--".encode() not in sent
    assert len(sent) < len(body)


def test_a_shrink_is_described_by_the_check_when_there_is_one() -> None:
    def check() -> None:
        raise SourceChanged("'/m/a.png' changed while it was being uploaded: it was 100 bytes when opened, 5 now")

    body = MultipartBody(
        io.BytesIO(b"short"), field="file", filename="a.png", content_type="image/png", size=100, check=check
    )
    with pytest.raises(SourceChanged, match="100 bytes when opened, 5 now"):
        drain(body, 4096)


# -- spans: the body a plain socket sends with sendfile ---------------------


@pytest.fixture
def files() -> Iterator[ExitStack]:
    with ExitStack() as opened:
        yield opened


def file_body(files: ExitStack, path: Path, size: int, check: Check | None = None) -> MultipartBody:
    file = files.enter_context(path.open("rb", buffering=0))
    return MultipartBody(file, field="file", filename="a.mp4", content_type="video/mp4", size=size, check=check)


def send_spans(body: MultipartBody, block: int, handed: list[bytes]) -> bytes:
    """Send ``body.spans`` through a socket pair, as the plain connection does; what arrived."""
    ours, theirs = socket.socketpair()
    received = bytearray()

    def receive() -> None:
        while data := theirs.recv(1 << 20):
            received.extend(data)

    reader = threading.Thread(target=receive)
    reader.start()
    try:
        with ours:
            for piece in body.spans(block):
                if isinstance(piece, FileSpan):
                    piece.send_to(ours)
                    handed.append(b"\0" * piece.sent)
                else:
                    ours.sendall(piece)
                    handed.append(piece)
    finally:
        reader.join()
        theirs.close()
    return bytes(received)


def test_spans_send_the_same_body_as_read(tmp_path: Path, files: ExitStack) -> None:
    payload = os.urandom(SENDFILE_MIN + 12345)
    (tmp_path / "a.mp4").write_bytes(payload)
    body = file_body(files, tmp_path / "a.mp4", len(payload))
    assert body.sendfile_ok()
    raw = send_spans(body, 256 * 1024, [])
    assert len(raw) == len(body)
    assert parse(raw, body.boundary)[1] == payload


def test_spans_are_not_for_small_files_streams_or_a_body_already_read(tmp_path: Path, files: ExitStack) -> None:
    (tmp_path / "a.mp4").write_bytes(b"x" * SENDFILE_MIN)
    assert not file_body(files, tmp_path / "a.mp4", SENDFILE_MIN - 1).sendfile_ok()
    stream = MultipartBody(
        io.BytesIO(b"x" * SENDFILE_MIN), field=None, filename="a", content_type="x", size=SENDFILE_MIN
    )
    assert not stream.sendfile_ok()
    started = file_body(files, tmp_path / "a.mp4", SENDFILE_MIN)
    started.read(10)
    assert not started.sendfile_ok()


def test_a_file_that_shrank_stops_the_spans_before_the_tail(tmp_path: Path, files: ExitStack) -> None:
    payload = b"y" * SENDFILE_MIN
    (tmp_path / "a.mp4").write_bytes(payload)
    handed: list[bytes] = []
    body = file_body(files, tmp_path / "a.mp4", len(payload) + 5000)  # opened when it was larger
    with pytest.raises(SourceChanged, match=f"ended after {len(payload)} of its {len(payload) + 5000} bytes"):
        send_spans(body, 64 * 1024, handed)
    assert f"--{body.boundary}--".encode() not in b"".join(handed)


def test_the_check_runs_with_the_last_block_in_hand_before_it_and_the_tail_are_sent(
    tmp_path: Path, files: ExitStack
) -> None:
    (tmp_path / "a.mp4").write_bytes(b"z" * SENDFILE_MIN)
    handed: list[bytes] = []
    check = Check(handed, fail=True)
    body = file_body(files, tmp_path / "a.mp4", SENDFILE_MIN, check)
    with pytest.raises(SourceChanged):
        send_spans(body, 100_000, handed)
    assert len(check.seen) == 1
    last_block = SENDFILE_MIN % 100_000  # read, not sent from the file, so that it is checked in hand
    assert len(check.seen[0]) == len(body) - len(f"\r\n--{body.boundary}--\r\n") - last_block


def test_a_raw_body_whose_file_changed_is_never_completed(tmp_path: Path, files: ExitStack) -> None:
    """The direct flow's PUT has no tail to withhold: its last bytes are what stays unsent."""
    (tmp_path / "a.mp4").write_bytes(b"r" * (SENDFILE_MIN + 10))
    handed: list[bytes] = []
    file = files.enter_context((tmp_path / "a.mp4").open("rb", buffering=0))
    check = Check(handed, fail=True)
    body = MultipartBody(
        file, field=None, filename="a.mp4", content_type="video/mp4", size=SENDFILE_MIN + 10, check=check
    )
    assert body.sendfile_ok()
    with pytest.raises(SourceChanged):
        send_spans(body, 64 * 1024, handed)
    assert 0 < len(b"".join(handed)) < len(body)


def test_boundaries_are_the_systems_random_bytes_one_draw_per_256(monkeypatch: pytest.MonkeyPatch) -> None:
    draws: list[int] = []
    real = os.urandom

    def urandom(n: int) -> bytes:
        draws.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", urandom)
    monkeypatch.setattr(multipart, "_random", multipart._Randomness())
    made = [multipart.boundary() for _ in range(3 * 256)]
    assert draws == [multipart.RANDOM_STORE] * 3
    assert len(set(made)) == len(made)
    assert all(len(b) == 32 and int(b, 16) >= 0 for b in made)
    others: list[str] = []
    thread = threading.Thread(target=lambda: others.extend(multipart.boundary() for _ in range(10)))
    thread.start()
    thread.join()
    assert len(draws) == 4  # a thread draws its own
    assert not set(others) & set(made)
    multipart._forget_randomness()  # what a forked child does first: never its parent's store
    multipart.boundary()
    assert len(draws) == 5
