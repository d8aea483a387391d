"""The sandbox reads real file names: raw UTF-8, filename*, HTML5 escapes; the answer round-trips.

The table and the property test exercise the pure function; the last tests talk to an
in-process sandbox over loopback (no other service), as the worker does.
"""

import http.client
import io
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsupload.tasks.wavespeed.multipart import MultipartBody
from wsupload.worker.dev.disposition import Disposition, parse_disposition
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import UPLOAD_PATH, SandboxServer, _Headers

NAMES = ["café photo 日本.png", "café.png", "my photo.png", 'a"b.png', "line\r\nbreak.png", "x;y=z.png", "50%.png"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # What browsers, requests and the worker send: raw UTF-8 between the quotes.
        ('form-data; name="file"; filename="café photo 日本.png"'.encode(), ("file", "café photo 日本.png")),
        ('form-data; name="file"; filename="café.png"'.encode(), ("file", "café.png")),
        # RFC 5987 ext-value, alone, in either charset, and preferred over filename=.
        (b"form-data; name=\"file\"; filename*=UTF-8''caf%C3%A9.png", ("file", "café.png")),
        (b"form-data; name=\"file\"; filename*=iso-8859-1'fr'caf%E9.png", ("file", "café.png")),
        (b'form-data; name="file"; filename="cafe.png"; filename*=utf-8\'\'caf%C3%A9.png', ("file", "café.png")),
        (b'form-data; name="file"; filename*=UTF-8\'\'caf%C3%A9.png; filename="cafe.png"', ("file", "café.png")),
        (b"form-data; name=\"file\"; FILENAME*=UTF-8''%E6%97%A5%E6%9C%AC.png", ("file", "日本.png")),
        # A filename* that does not decode leaves filename= in charge.
        (b'form-data; name="file"; filename*=UTF-8\'\'caf%E9.png; filename="cafe.png"', ("file", "cafe.png")),
        (b'form-data; name="file"; filename*=koi8-r\'\'x.png; filename="cafe.png"', ("file", "cafe.png")),
        (b'form-data; name="file"; filename*=caf%C3%A9.png; filename="cafe.png"', ("file", "cafe.png")),
        (b'form-data; name="file"; filename*=UTF-8\'\'; filename="cafe.png"', ("file", "cafe.png")),
        # HTML5 form encoding of ", CR and LF, decoded back; no other escape is touched.
        (b'form-data; name="file"; filename="a%22b%0D%0Ac%0d%0a.png"', ("file", 'a"b\r\nc\r\n.png')),
        (b'form-data; name="file"; filename="caf%C3%A9 100%41.png"', ("file", "caf%C3%A9 100%41.png")),
        (b'form-data; name="fi%22le"; filename="x.png"', ('fi"le', "x.png")),
        # Quotes may hold ";" and "="; a backslash is a character, \" a sender's escaped quote.
        (b'form-data; name="file"; filename="x;y=z.png"', ("file", "x;y=z.png")),
        (b'form-data; name="file"; filename="dir\\name.png"', ("file", "dir\\name.png")),
        (b'form-data; name="file"; filename="a\\"b.png"', ("file", 'a"b.png')),
        (b'form-data; name="file"; filename="ends\\" ; x=1', ("file", "ends\\")),
        # Bytes that are not UTF-8 are read as latin-1 (legacy clients).
        (b'form-data; name="file"; filename="caf\xe9.png"', ("file", "café.png")),
        # Tokens, spacing, case and repeats.
        (b"form-data;name=file;filename=plain.png", ("file", "plain.png")),
        (b'Form-Data ;  NAME = "file" ;\tFileName=  "sp aced.png"  ', ("file", "sp aced.png")),
        (b'form-data; name="file"; filename="first.png"; filename="second.png"', ("file", "first.png")),
        # Absent or broken.
        (b'form-data; name="file"', ("file", None)),
        (b'form-data; name="file"; filename=""', ("file", "")),
        (b'form-data; name="file"; filename="unterminated.png', ("file", None)),
        (b'form-data; flag; name="file"; filename="x.png"', ("file", "x.png")),
        (b"", (None, None)),
        (b"form-data", (None, None)),
    ],
)
def test_parse_disposition(header: bytes, expected: tuple[str | None, str | None]) -> None:
    assert parse_disposition(header) == Disposition(*expected)


def worker_header(filename: str) -> bytes:
    """The Content-Disposition value the worker's multipart body carries for ``filename``."""
    body = MultipartBody(io.BytesIO(b""), field="file", filename=filename, content_type="image/png", size=0)
    head = body.read(len(body))
    line = next(line for line in head.split(b"\r\n") if line.startswith(b"Content-Disposition:"))
    return line.split(b":", 1)[1].strip()


# Any name a file system can hold, except the one ambiguity of HTML5's form encoding: a name
# holding a literal "%22", "%0D" or "%0A" reads back as the character those escape.
_escapes = ("%22", "%0d", "%0a")
file_names = st.text(st.characters(codec="utf-8"), max_size=40).filter(
    lambda name: not any(escape in name.lower() for escape in _escapes)
)


@given(file_names)
def test_any_name_the_worker_sends_reads_back_exactly(filename: str) -> None:
    assert parse_disposition(worker_header(filename)) == Disposition("file", filename)


def test_a_literal_escape_in_a_name_is_the_documented_ambiguity() -> None:
    assert parse_disposition(worker_header("100%22.png")).filename == '100".png'


# -- the sandbox over loopback ---------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    # One server for the module: stopping one waits out serve_forever's 0.5 s poll.
    with SandboxServer(api_key="k", storage_dir=tmp_path_factory.mktemp("sandbox")) as server:
        yield server


@pytest.fixture
def sandbox(server: SandboxServer) -> SandboxServer:
    server.reset()
    return server


def post(sandbox: SandboxServer, body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
    host, port = sandbox.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        headers = {"Content-Type": content_type, "Authorization": "Bearer k"}
        connection.request("POST", UPLOAD_PATH, body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return bytes(answer.read())


@pytest.mark.parametrize("filename", NAMES)
def test_sandbox_answers_the_name_the_worker_sent(sandbox: SandboxServer, filename: str) -> None:
    data = png_bytes()
    body = MultipartBody(io.BytesIO(data), field="file", filename=filename, content_type="image/png", size=len(data))
    status, answer = post(sandbox, body.read(len(body)), body.content_type)
    assert status == 200, answer
    assert answer["data"]["filename"] == filename
    assert [record.filename for record in sandbox.records] == [filename]
    assert download(answer["data"]["download_url"]) == data


def test_sandbox_prefers_filename_star(sandbox: SandboxServer) -> None:
    data = png_bytes()
    body = (
        b"--b\r\n"
        b'Content-Disposition: form-data; name="file"; filename="cafe.png"; filename*=UTF-8\'\'caf%C3%A9.png\r\n'
        b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--b--\r\n"
    )
    status, answer = post(sandbox, body, "multipart/form-data; boundary=b")
    assert status == 200, answer
    assert answer["data"]["filename"] == "café.png"
    assert answer["data"]["download_url"].endswith("/files/1/caf%C3%A9.png")
    assert download(answer["data"]["download_url"]) == data


def test_download_url_serves_only_under_the_uploaded_name(sandbox: SandboxServer) -> None:
    # The control for the round trip: a URL whose name did not survive (as the old
    # latin-1 re-encoding made "café" into "caf\ufffd") is refused, not served.
    data = png_bytes()
    body = MultipartBody(io.BytesIO(data), field="file", filename="café.png", content_type="image/png", size=len(data))
    status, answer = post(sandbox, body.read(len(body)), body.content_type)
    assert status == 200, answer
    url = answer["data"]["download_url"]
    assert download(url) == data
    for wrong in (url.replace("caf%C3%A9", "caf%EF%BF%BD"), url.replace("caf%C3%A9", "cafe"), url.rsplit("/", 1)[0]):
        with pytest.raises(urllib.error.HTTPError) as refused:
            download(wrong)
        assert refused.value.code == 404
        refused.value.close()


def test_request_headers_are_read_without_a_regex_per_multipart_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    # email's full parser compiles a pattern for each multipart boundary it meets; every upload
    # has its own boundary, so the sandbox would compile one per request (its CPU, shared with
    # the worker a benchmark measures). Its headers class reads the same values without that.
    boundary = "b0undary6a1f"
    block = f"Host: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 9\r\n\r\n".encode()
    compiled: list[str] = []
    original = re.compile

    def spy(pattern: Any, flags: int = 0) -> Any:
        compiled.append(str(pattern))
        return original(pattern, flags)

    monkeypatch.setattr(re, "compile", spy)
    headers = http.client.parse_headers(io.BytesIO(block), _class=_Headers)
    assert headers["Content-Type"] == f"multipart/form-data; boundary={boundary}"
    assert headers["Content-Length"] == "9"
    assert not [p for p in compiled if boundary in p]
    # The control: the default class does compile one, so the spy can see it.
    http.client.parse_headers(io.BytesIO(block), _class=http.client.HTTPMessage)
    assert [p for p in compiled if boundary in p]
