"""The streaming multipart body: exact length, parseable, read in bounded blocks."""

import io

import pytest
from python_multipart.multipart import MultipartParser

from wsupload.errors import SourceChanged
from wsupload.tasks.wavespeed.multipart import MultipartBody


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
