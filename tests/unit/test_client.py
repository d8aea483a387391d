"""Interpreting upload answers, and the request the client sends (fake transport; the cookie jar over loopback)."""

import hashlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter

from wsupload.errors import (
    ClientError,
    ConnectionFailed,
    RateLimited,
    Rejected,
    ServerError,
    SourceChanged,
    TooLarge,
    Unauthorized,
    UnexpectedResponse,
    UploadError,
    UploadTimeout,
)
from wsupload.tasks.sources.local_files import open_local
from wsupload.tasks.wavespeed.client import UPLOAD_PATH, UploadClient, interpret_response
from wsupload.tasks.wavespeed.multipart import SENDFILE_MIN, MultipartBody
from wsupload.worker.dev.samples import mp4_bytes, png_bytes
from wsupload.worker.dev.sandbox import SandboxServer

DATA = {"type": "image", "download_url": "https://cdn.example/x.png", "filename": "x.png", "size": 10}


def body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_success_returns_the_documented_data() -> None:
    assert interpret_response(200, {}, body({"code": 200, "message": "success", "data": DATA})) == DATA


@pytest.mark.parametrize(
    ("status", "doc", "error", "needle"),
    [
        (400, {"code": 400, "message": "Invalid file or format not supported"}, Rejected, "format not supported"),
        (401, {"code": 401, "message": "Invalid API key", "error_code": "AUTH"}, Unauthorized, "(error_code AUTH)"),
        (413, {"code": 413, "message": "File too large"}, TooLarge, "File too large"),
        (404, {"message": "no route"}, ClientError, "no route"),
        (503, {"message": "overloaded"}, ServerError, "overloaded"),
    ],
)
def test_error_statuses_carry_the_server_message(status: int, doc: Any, error: type[UploadError], needle: str) -> None:
    with pytest.raises(error) as caught:
        interpret_response(status, {}, body(doc))
    assert caught.value.http_status == status
    assert needle in caught.value.message


def test_a_200_carrying_an_error_code_is_classified_by_that_code() -> None:
    # WaveSpeed's own SDK tests model this answer.
    with pytest.raises(ServerError, match="Upload failed: invalid file type") as caught:
        interpret_response(200, {}, body({"code": 500, "message": "Upload failed: invalid file type"}))
    assert caught.value.http_status == 500
    with pytest.raises(Rejected):
        interpret_response(200, {}, body({"code": 400, "message": "bad"}))


@pytest.mark.parametrize(
    "raw",
    [
        b"<html>oops</html>",
        b"",
        body([1, 2]),
        body({"message": "no code"}),
        body({"code": 200, "message": "success"}),
        body({"code": 200, "data": {**DATA, "download_url": None}}),
        body({"code": 200, "data": {**DATA, "size": "big"}}),
        body({"code": 200, "data": {k: v for k, v in DATA.items() if k != "filename"}}),
    ],
)
def test_a_200_not_of_the_documented_shape_is_an_error(raw: bytes) -> None:
    with pytest.raises(UnexpectedResponse) as caught:
        interpret_response(200, {}, raw)
    assert not caught.value.retryable


def test_rate_limit_carries_retry_after() -> None:
    with pytest.raises(RateLimited) as caught:
        interpret_response(429, {"Retry-After": "12"}, b"")
    assert caught.value.retry_after == 12.0
    assert "HTTP 429 with an empty body" in caught.value.message


def test_redirects_are_not_followed() -> None:
    with pytest.raises(UnexpectedResponse, match="redirect to https://elsewhere"):
        interpret_response(307, {"Location": "https://elsewhere"}, b"")


def test_non_json_error_bodies_are_quoted_and_truncated() -> None:
    with pytest.raises(ServerError) as caught:
        interpret_response(502, {}, b"x" * 10_000)
    assert len(caught.value.message) < 600


class Capture(BaseAdapter):
    def __init__(self, answer: Exception | tuple[int, bytes]) -> None:
        super().__init__()
        self.answer = answer
        self.requests: list[requests.PreparedRequest] = []
        self.read: bytes = b""
        self.settings: dict[str, Any] = {}

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.requests.append(request)
        self.settings = kwargs
        body: Any = request.body
        assert isinstance(body, MultipartBody)  # streamed, not built in memory
        while chunk := body.read(65536):
            self.read += chunk
        if isinstance(self.answer, Exception):
            raise self.answer
        response = requests.Response()
        response.status_code, response._content = self.answer
        return response

    def close(self) -> None:
        pass


def client_with(adapter: Capture) -> UploadClient:
    client = UploadClient(base_url="http://api.test/", api_key="k-123", connect_timeout=1, read_timeout=2)
    client._session.mount("http://", adapter)
    return client


def test_the_request_matches_the_api_page(tmp_path: Path) -> None:
    path = tmp_path / "pic.png"
    path.write_bytes(png_bytes())
    adapter = Capture((200, body({"code": 200, "message": "success", "data": DATA})))
    with open_local(str(path)) as opened:
        assert client_with(adapter).upload(opened) == DATA
    (request,) = adapter.requests
    assert (request.method, request.url) == ("POST", "http://api.test" + UPLOAD_PATH)
    assert request.headers["Authorization"] == "Bearer k-123"
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert int(request.headers["Content-Length"]) == len(adapter.read)
    assert "Transfer-Encoding" not in request.headers
    assert b'name="file"; filename="pic.png"' in adapter.read
    assert path.read_bytes() in adapter.read


def test_each_upload_is_its_own_request_with_the_session_cookies_of_the_moment(tmp_path: Path) -> None:
    """The request is copied from one prepared once: nothing of an upload leaks into the next,
    and cookies the session holds by then (a load balancer's, say) go out as Session.post sends them."""
    path = tmp_path / "pic.png"
    path.write_bytes(png_bytes())
    adapter = Capture((200, body({"code": 200, "message": "success", "data": DATA})))
    client = client_with(adapter)
    with open_local(str(path)) as opened:
        client.upload(opened)
    client._session.cookies.set("lb", "node-2", domain="api.test", path="/")
    with open_local(str(path)) as opened:
        client.upload(opened)
    first, second = adapter.requests
    assert first is not second
    assert first.headers["Content-Type"] != second.headers["Content-Type"]  # each body its own boundary
    assert "Cookie" not in first.headers
    assert second.headers["Cookie"] == "lb=node-2"
    assert [r.headers["Authorization"] for r in (first, second)] == ["Bearer k-123"] * 2


def upload_once(tmp_path: Path) -> Capture:
    path = tmp_path / "pic.png"
    path.write_bytes(png_bytes())
    adapter = Capture((200, body({"code": 200, "message": "success", "data": DATA})))
    with open_local(str(path)) as opened:
        client_with(adapter).upload(opened)
    return adapter


def test_proxy_and_ca_bundle_variables_are_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/corp/ca.pem")
    settings = upload_once(tmp_path).settings
    assert settings["proxies"]["http"] == "http://proxy.test:3128"
    assert settings["verify"] == "/etc/corp/ca.pem"


def test_no_proxy_exempts_the_upload_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", "api.test")
    assert "http" not in upload_once(tmp_path).settings["proxies"]


def test_a_netrc_entry_does_not_replace_the_bearer_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.test login someone password other-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    (request,) = upload_once(tmp_path).requests
    assert request.headers["Authorization"] == "Bearer k-123"


@pytest.mark.parametrize(
    ("raised", "error"),
    [
        (requests.ConnectTimeout("connect timed out"), UploadTimeout),
        (requests.ReadTimeout("read timed out"), UploadTimeout),
        (requests.ConnectionError("Connection reset by peer"), ConnectionFailed),
    ],
)
def test_transport_errors_become_transient_errors(tmp_path: Path, raised: Exception, error: type) -> None:
    path = tmp_path / "pic.png"
    path.write_bytes(png_bytes())
    with open_local(str(path)) as opened, pytest.raises(error) as caught:
        client_with(Capture(raised)).upload(opened)
    assert "k-123" not in str(caught.value)


def test_a_file_changed_mid_upload_raises_source_changed_before_the_body_ends(tmp_path: Path) -> None:
    path = tmp_path / "pic.png"
    path.write_bytes(png_bytes())
    adapter = Capture((200, body({"code": 200, "message": "success", "data": DATA})))
    with open_local(str(path)) as opened:
        with path.open("ab") as more:
            more.write(b"appended after opening")
        with pytest.raises(SourceChanged, match="changed while it was being uploaded"):
            client_with(adapter).upload(opened)
    assert adapter.read == b""  # nothing of the body was handed out: not even a complete file part


def test_cookies_an_answer_sets_go_out_with_the_next_upload(tmp_path: Path) -> None:
    """The client sends through the session's adapter, not Session.send: the jar must still take
    what an answer sets (a load balancer's sticky cookie), as Session.send would. A real HTTP
    exchange on loopback (stdlib server): the fake transport has no raw response to read them from."""
    seen: list[str | None] = []

    class Api(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.headers.get("Cookie"))
            self.rfile.read(int(self.headers["Content-Length"]))
            answer = body({"code": 200, "message": "success", "data": DATA})
            self.send_response(200)
            self.send_header("Set-Cookie", f"lb=node-{len(seen)}; Path=/")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    path = tmp_path / "pic.png"
    path.write_bytes(png_bytes())
    client = UploadClient(
        base_url=f"http://127.0.0.1:{server.server_port}", api_key="k", connect_timeout=5, read_timeout=5
    )
    try:
        for _ in range(2):
            with open_local(str(path)) as opened:
                assert client.upload(opened) == DATA
    finally:
        client.close()
        server.shutdown()
        server.server_close()
    assert seen == [None, "lb=node-1"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with SandboxServer(api_key="k", storage_dir=tmp_path_factory.mktemp("sandbox")) as server:
        yield server


def test_a_large_local_file_goes_out_with_sendfile_over_plain_http(
    tmp_path: Path, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Page cache to socket, and the server gets every byte (its SHA-256 says so)."""
    payload = mp4_bytes(SENDFILE_MIN * 2 + 999)
    path = tmp_path / "clip.mp4"
    path.write_bytes(payload)
    sent: list[int] = []
    real = socket.socket.sendfile

    def counting(sock: socket.socket, file: Any, offset: int = 0, count: int | None = None) -> int:
        sent.append(real(sock, file, offset, count))
        return sent[-1]

    monkeypatch.setattr(socket.socket, "sendfile", counting)
    client = UploadClient(base_url=sandbox.url, api_key=sandbox.api_key, connect_timeout=2, read_timeout=5)
    try:
        with open_local(str(path)) as opened:
            result = client.upload(opened)
    finally:
        client.close()
    assert result["size"] == len(payload)
    # Every block but the last through sendfile; the last is read and checked in hand (multipart.spans).
    assert sum(sent) == 2 * SENDFILE_MIN
    (record,) = sandbox.records
    assert record.sha256 == hashlib.sha256(payload).hexdigest()


def test_the_adapter_looks_at_a_ca_bundle_once_and_answers_as_requests_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests stats a bundle named by path at every request (an http:// one too): the answers are kept."""
    from requests.adapters import HTTPAdapter

    from wsupload.tasks.wavespeed.client import _BlockAdapter

    bundle, folder = tmp_path / "ca.pem", tmp_path / "certs"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    folder.mkdir()
    asked: list[str] = []
    real_isdir, real_exists = os.path.isdir, os.path.exists

    def isdir(path: str) -> bool:
        asked.append(str(path))
        return real_isdir(path)

    def exists(path: str) -> bool:
        asked.append(str(path))
        return real_exists(path)

    monkeypatch.setattr(os.path, "isdir", isdir)
    monkeypatch.setattr(os.path, "exists", exists)
    ours, theirs = _BlockAdapter(), HTTPAdapter()
    for url in ("http://api.example/u", "https://api.example/u"):
        for where in (str(bundle), str(folder)):
            request = requests.Request("POST", url).prepare()
            expected = theirs.build_connection_pool_key_attributes(request, where)
            asked.clear()
            assert [ours.build_connection_pool_key_attributes(request, where) for _ in range(3)] == [expected] * 3
            assert asked == [where]  # the first request only
    verifies: tuple[str | bool, ...] = (str(bundle), str(folder), True)
    for verify in verifies:
        expected_conn = type("Conn", (), {})()
        theirs.cert_verify(expected_conn, "https://api.example/u", verify, None)  # type: ignore[no-untyped-call]
        conns = [type("Conn", (), {})() for _ in range(3)]
        asked.clear()
        for conn in conns:
            ours.cert_verify(conn, "https://api.example/u", verify, None)
            assert vars(conn) == vars(expected_conn)
        assert len(asked) == 2  # requests' exists and isdir, at the first request only
    missing = str(tmp_path / "gone.pem")
    for _ in range(2):  # a missing bundle is an error at every request, as requests says it
        with pytest.raises(OSError, match="CA certificate bundle"):
            ours.cert_verify(type("Conn", (), {})(), "https://api.example/u", missing, None)
