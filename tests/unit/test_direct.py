"""The direct flow: the pure policy (tickets, what a PUT's answer means) and the client against the sandbox."""

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter

from wsupload.errors import (
    ClientError,
    ConnectionFailed,
    RateLimited,
    ServerError,
    TicketRefused,
    TooLarge,
    Unauthorized,
    UnexpectedResponse,
    UploadError,
)
from wsupload.tasks.sources.media import OpenedSource
from wsupload.tasks.wavespeed import direct
from wsupload.tasks.wavespeed.client import UploadClient, scrub
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer

NOW = datetime(2026, 12, 7, 16, 0, tzinfo=UTC)
DATA = {"type": "image", "download_url": "https://cdn.test/cat.png", "filename": "cat.png", "size": 3}


def upload(**overrides: Any) -> dict[str, Any]:
    doc = {
        "method": "PUT",
        "url": "https://storage.test/o/1?sig=abc",
        "headers": {"Content-Type": "image/png", "If-None-Match": "*"},
        "expires_at": "2026-12-07T16:15:00Z",
    }
    return {**DATA, "upload": {**doc, **overrides}}


def ticket(**overrides: Any) -> direct.Ticket:
    return direct.parse_ticket(upload(**overrides), base_url="https://api.test")


# -- the pure policy ------------------------------------------------------


def test_the_ticket_request_leaves_an_unknown_content_type_out() -> None:
    assert direct.ticket_request("cat.png", 3, "image/png") == {
        "filename": "cat.png",
        "size": 3,
        "content_type": "image/png",
    }
    assert direct.ticket_request("cat.png", 3, None) == {"filename": "cat.png", "size": 3}
    assert direct.ticket_request("cat.png", 3, "application/octet-stream") == {"filename": "cat.png", "size": 3}


def test_a_ticket_is_parsed() -> None:
    parsed = ticket()
    assert parsed.url == "https://storage.test/o/1?sig=abc"
    assert parsed.headers == {"Content-Type": "image/png", "If-None-Match": "*"}
    assert parsed.expires_at == datetime(2026, 12, 7, 16, 15, tzinfo=UTC)
    assert parsed.data == DATA


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"method": "POST"}, "not PUT"),
        ({"method": None}, "not PUT"),
        ({"url": None}, "no upload URL"),
        ({"url": ""}, "no upload URL"),
        ({"url": "http://storage.test/o/1?sig=abc"}, "not https"),
        ({"url": "ftp://storage.test/o/1"}, "not https"),
        ({"url": "https:///nohost"}, "not https"),
        ({"headers": {"Content-Type": 1}}, "object of strings"),
        ({"headers": ["x"]}, "object of strings"),
        ({"headers": {"Authorization": "Bearer x"}}, "Authorization"),
    ],
)
def test_a_ticket_not_as_the_sdks_accept_is_unexpected(overrides: dict[str, Any], why: str) -> None:
    with pytest.raises(UnexpectedResponse, match=why) as caught:
        ticket(**overrides)
    assert "sig=abc" not in caught.value.message  # the signed URL is never quoted


def test_no_upload_object_is_unexpected() -> None:
    with pytest.raises(UnexpectedResponse, match=r"data\.upload"):
        direct.parse_ticket(DATA, base_url="https://api.test")


def test_an_http_url_is_accepted_only_when_the_api_is_http() -> None:
    doc = upload(url="http://127.0.0.1:9/o/1?sig=abc")
    assert direct.parse_ticket(doc, base_url="http://127.0.0.1:8").url == "http://127.0.0.1:9/o/1?sig=abc"
    with pytest.raises(UnexpectedResponse):
        direct.parse_ticket(doc, base_url="https://api.test")


@pytest.mark.parametrize("value", [None, "", "soon", 17])
def test_an_expiry_that_does_not_parse_is_none(value: object) -> None:
    assert direct.parse_expiry(value) is None


def test_a_ticket_is_usable_until_its_expiry_less_the_margin() -> None:
    parsed = ticket()  # expires 16:15
    assert direct.ticket_usable(parsed, NOW + timedelta(minutes=13, seconds=59), margin=60)
    assert not direct.ticket_usable(parsed, NOW + timedelta(minutes=14), margin=60)
    assert not direct.ticket_usable(ticket(expires_at=None), NOW, margin=60)


def test_when_a_new_ticket_is_asked() -> None:
    transfer = direct.Transfer()
    assert direct.wants_new_ticket(transfer, NOW, 60)
    transfer.ticket = ticket(expires_at="2026-12-07T15:00:00Z")  # already expired, never used
    assert not direct.wants_new_ticket(transfer, NOW, 60)  # the storage decides (403 → one new ticket)
    transfer.puts_on_ticket = 1
    assert direct.wants_new_ticket(transfer, NOW, 60)
    transfer.ticket = ticket()
    assert not direct.wants_new_ticket(transfer, NOW, 60)
    assert direct.wants_new_ticket(transfer, NOW + timedelta(minutes=14), 60)


def outcome(transfer: direct.Transfer, status: int, sent: dict[str, str] | None = None, **headers: str) -> Any:
    assert transfer.ticket is not None
    return direct.put_outcome(
        transfer, status, headers, f"HTTP {status}", transfer.ticket.headers if sent is None else sent
    )


def test_any_2xx_is_done() -> None:
    for status in (200, 201, 204):
        assert outcome(direct.Transfer(ticket(), puts_on_ticket=1), status) == DATA


def test_412_is_done_only_on_a_repeat_put_that_carried_if_none_match() -> None:
    assert outcome(direct.Transfer(ticket(), puts_on_ticket=2), 412) == DATA
    with pytest.raises(ClientError):  # the first PUT: someone else's object
        outcome(direct.Transfer(ticket(), puts_on_ticket=1), 412)
    with pytest.raises(ClientError):  # the repeat did not carry it
        outcome(direct.Transfer(ticket(), puts_on_ticket=2), 412, sent={"Content-Type": "image/png"})
    with pytest.raises(ClientError):  # the ticket did not give it
        outcome(direct.Transfer(ticket(headers={"Content-Type": "image/png"}), puts_on_ticket=2), 412)


def test_403_gets_one_new_ticket_then_fails() -> None:
    transfer = direct.Transfer(ticket(), puts_on_ticket=1)
    with pytest.raises(TicketRefused) as first:
        outcome(transfer, 403)
    assert first.value.retryable
    assert transfer.ticket is None
    transfer.ticket, transfer.puts_on_ticket = ticket(), 1
    with pytest.raises(ClientError) as second:
        outcome(transfer, 403)
    assert second.value.http_status == 403
    assert not isinstance(second.value, TicketRefused)


@pytest.mark.parametrize(
    ("status", "error"), [(429, RateLimited), (500, ServerError), (503, ServerError), (408, ServerError)]
)
def test_transient_answers_keep_the_ticket(status: int, error: type[Exception]) -> None:
    transfer = direct.Transfer(ticket(), puts_on_ticket=1)
    with pytest.raises(error):
        outcome(transfer, status, None, **{"Retry-After": "7"})
    assert transfer.ticket is not None


@pytest.mark.parametrize("status", [400, 401, 404, 409, 413])
def test_other_4xx_fail_with_the_storages_answer(status: int) -> None:
    with pytest.raises(ClientError, match=f"HTTP {status}") as caught:
        outcome(direct.Transfer(ticket(), puts_on_ticket=1), status)
    assert caught.value.http_status == status


def test_scrub_takes_the_signed_url_out_of_a_text() -> None:
    url = "https://storage.test/o/1?X-Sig=abc&exp=1"
    text = f"Max retries exceeded with url: /o/1?X-Sig=abc&exp=1 ({url}) X-Sig=abc&exp=1"
    assert "X-Sig" not in scrub(text, url)


def test_scrub_takes_out_a_signature_quoted_alone() -> None:
    url = "https://storage.test/o/1?X-Amz-Signature=0123456789abcdef&X-Amz-Credential=AKIA%2F2026%2Fs3&n=1"
    answer = "<SignatureProvided>0123456789abcdef</SignatureProvided><Credential>AKIA/2026/s3</Credential><n>1</n>"
    clean = scrub(answer, url)
    assert "0123456789abcdef" not in clean
    assert "AKIA/2026/s3" not in clean
    assert "<n>1</n>" in clean  # short values are not secrets, and masking them would mask everything


# -- the client against the sandbox ---------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with SandboxServer(api_key="k", storage_dir=tmp_path_factory.mktemp("sandbox"), max_bytes=100_000) as server:
        yield server


@pytest.fixture
def client(sandbox: SandboxServer) -> Iterator[UploadClient]:
    client = UploadClient(base_url=sandbox.url, api_key="k", connect_timeout=2, read_timeout=5)
    yield client
    client.close()


def opened(data: bytes, filename: str = "cat.png") -> OpenedSource:
    return OpenedSource(
        source=f"/media/{filename}",
        filename=filename,
        size=len(data),
        media_kind="image",
        content_type="image/png",
        open_stream=lambda: io.BytesIO(data),
    )


def download(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as answer:
        return bytes(answer.read())


def test_a_direct_upload_lands(client: UploadClient, sandbox: SandboxServer) -> None:
    data = png_bytes()
    transfer = direct.Transfer()
    result = client.upload_direct(opened(data), transfer)
    assert result["size"] == len(data)
    assert result["filename"] == "cat.png"
    assert download(result["download_url"]) == data
    assert transfer.requests == ["ticket", "put"]
    ticket_record, put_record = sandbox.records
    assert ticket_record.authorized
    assert not put_record.authorization_sent
    assert put_record.sha256 == hashlib.sha256(data).hexdigest()


def test_a_lost_put_answer_is_repeated_on_the_same_ticket_and_412_counts(
    client: UploadClient, sandbox: SandboxServer
) -> None:
    data = png_bytes()
    transfer = direct.Transfer()
    client.upload_direct(opened(data), transfer)  # landed; pretend the answer was lost:
    result = client.upload_direct(opened(data), transfer)
    assert [(r.step, r.status) for r in sandbox.records] == [("ticket", 200), ("put", 200), ("put", 412)]
    assert download(result["download_url"]) == data


def test_a_transient_put_error_keeps_the_ticket(client: UploadClient, sandbox: SandboxServer) -> None:
    sandbox.add_fault(Fault(step="put", reset=True))
    transfer = direct.Transfer()
    with pytest.raises(ConnectionFailed) as caught:
        client.upload_direct(opened(png_bytes()), transfer)
    assert "signature" not in caught.value.message
    client.upload_direct(opened(png_bytes()), transfer)
    assert [r.step for r in sandbox.records] == ["ticket", "put", "put"]


def test_an_expired_ticket_then_a_new_one(client: UploadClient, sandbox: SandboxServer) -> None:
    sandbox.add_fault(Fault(step="ticket", expired=True))
    transfer = direct.Transfer()
    with pytest.raises(TicketRefused) as caught:
        client.upload_direct(opened(png_bytes()), transfer)
    assert "signature=" not in caught.value.message
    client.upload_direct(opened(png_bytes()), transfer)
    assert [(r.step, r.status) for r in sandbox.records] == [
        ("ticket", 200),
        ("put", 403),
        ("ticket", 200),
        ("put", 200),
    ]


@pytest.mark.parametrize(("status", "error"), [(401, Unauthorized), (413, TooLarge)])
def test_ticket_errors_put_nothing(
    client: UploadClient, sandbox: SandboxServer, status: int, error: type[Exception]
) -> None:
    sandbox.add_fault(Fault(step="ticket", status=status))
    with pytest.raises(error):
        client.upload_direct(opened(png_bytes()), direct.Transfer())
    assert [r.step for r in sandbox.records] == ["ticket"]


def test_the_signed_url_is_in_no_log_line_nor_error(
    client: UploadClient, sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    from wsupload.tasks.observe import redaction

    redaction.protect("k-direct-unit")  # a worker always has its key registered
    caplog.set_level(logging.DEBUG)  # urllib3's request lines included
    sandbox.add_fault(Fault(step="ticket", expired=True))
    transfer = direct.Transfer()
    errors = []
    for number in range(5):
        if number == 1:  # after the expired ticket's 403: a 500, then a reset mid-body
            sandbox.add_fault(Fault(step="put", status=500))
            sandbox.add_fault(Fault(step="put", reset=True))
        try:
            client.upload_direct(opened(png_bytes()), transfer)
            break
        except UploadError as error:
            errors.append(error.message)
    assert [(r.step, r.status) for r in sandbox.records] == [
        ("ticket", 200),
        ("put", 403),
        ("ticket", 200),
        ("put", 500),
        ("put", None),
        ("put", 200),
    ]
    text = "\n".join(r.getMessage() for r in caplog.records) + "\n".join(errors)
    assert "PUT /_storage/" in text  # urllib3 logged its request lines
    assert "signature=" not in text
    assert "expires=" not in text


class Answering(BaseAdapter):
    """Answers a ticket for each storage host in turn, then 200 to its PUT; records what was sent."""

    def __init__(self, hosts: list[str]) -> None:
        super().__init__()
        self.hosts = hosts
        self.sent: list[tuple[requests.PreparedRequest, dict[str, Any]]] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.sent.append((request, kwargs))
        response = requests.Response()
        response.status_code = 200
        if request.method == "POST":
            host = self.hosts.pop(0)
            data = {**upload(url=f"https://{host}/o/1?sig=abcdefgh"), "size": 3}
            response._content = json.dumps({"code": 200, "message": "success", "data": data}).encode()
        else:
            response._content = b""
        return response

    def close(self) -> None:
        pass


def test_the_storage_proxy_follows_the_environment_per_storage_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Looked up once per storage origin, NO_PROXY included; the ticket carries the session's cookies."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", "exempt.test")
    adapter = Answering(["storage.test", "exempt.test", "storage.test"])
    client = UploadClient(base_url="https://api.test", api_key="k", connect_timeout=1, read_timeout=1)
    client._session.mount("https://", adapter)
    client._storage.mount("https://", adapter)
    client._session.cookies.set("lb", "node-2", domain="api.test", path="/")
    for _ in range(3):
        client.upload_direct(opened(b"abc"), direct.Transfer())
    tickets = [(r, kw) for r, kw in adapter.sent if r.method == "POST"]
    puts = [kw["proxies"] for r, kw in adapter.sent if r.method == "PUT"]
    assert puts[0]["https"] == "http://proxy.test:3128"
    assert "https" not in puts[1]
    assert puts[2] == puts[0]
    assert [r.headers["Cookie"] for r, _ in tickets] == ["lb=node-2"] * 3
    assert [json.loads(r.body or b"")["size"] for r, _ in tickets] == [3] * 3
    assert all(r.headers["Content-Type"] == "application/json" for r, _ in tickets)
    assert all("Cookie" not in r.headers and "Authorization" not in r.headers for r, _ in adapter.sent[1::2])
