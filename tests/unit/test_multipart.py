"""The streaming multipart body: exact length, parseable, read in bounded blocks."""

import io

import pytest
from python_multipart.multipart import MultipartParser

from tasks.errors import InvalidInput
from tasks.multipart import MultipartBody


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


def test_a_file_that_shrinks_mid_upload_is_an_error() -> None:
    body = MultipartBody(io.BytesIO(b"short"), field="file", filename="a.png", content_type="image/png", size=100)
    with pytest.raises(InvalidInput, match="shrank"):
        drain(body, 4096)
