"""The sandbox's direct flow: signed, expiring PUT URLs, the ticket's headers, faults per step.

The signing functions are tested as pure functions; the rest talks to an in-process
sandbox over loopback, as the worker does.
"""

import hashlib
import http.client
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import (
    TICKET_PATH,
    Fault,
    SandboxServer,
    check_signature,
    sign,
    signed_query,
)

KEY = b"k" * 32


def test_a_signed_query_admits_its_object_until_it_expires() -> None:
    query = signed_query(KEY, "7", 1000)
    assert check_signature(KEY, "7", query, now=999.0) is None
    assert check_signature(KEY, "7", query, now=1000.0) == "the URL has expired"


@pytest.mark.parametrize(
    ("obj", "query", "why"),
    [
        ("8", signed_query(KEY, "7", 1000), "the signature does not match"),  # another object's URL
        ("7", signed_query(b"x" * 32, "7", 1000), "the signature does not match"),  # another key
        ("7", f"expires=2000&signature={sign(KEY, '7', 1000)}", "the signature does not match"),  # extended
        ("7", "expires=1000", "the URL is not signed"),
        ("7", "", "the URL is not signed"),
        ("7", "expires=soon&signature=x", "the URL is not signed"),
    ],
)
def test_a_query_that_is_not_the_signed_one_is_refused(obj: str, query: str, why: str) -> None:
    assert check_signature(KEY, obj, query, now=0.0) == why


def test_a_fault_names_a_step() -> None:
    assert Fault().applies_to("binary")
    assert Fault().applies_to("ticket")
    assert not Fault().applies_to("put")
    assert Fault(step="put").applies_to("put")
    assert not Fault(step="put").applies_to("ticket")
    with pytest.raises(ValueError, match="step"):
        Fault(step="upload")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with SandboxServer(api_key="k", storage_dir=tmp_path_factory.mktemp("sandbox"), max_bytes=10_000) as server:
        yield server


def ticket(sandbox: SandboxServer, doc: dict[str, Any], key: str = "k") -> tuple[int, dict[str, Any]]:
    answer = requests.post(sandbox.url + TICKET_PATH, json=doc, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return answer.status_code, answer.json()


def put(upload: dict[str, Any], data: bytes, **headers: str) -> int:
    return requests.put(upload["url"], data=data, headers={**upload["headers"], **headers}, timeout=10).status_code


def test_ticket_then_put_then_download(sandbox: SandboxServer) -> None:
    data = png_bytes()
    status, doc = ticket(sandbox, {"filename": "cat.png", "size": len(data), "content_type": "image/png"})
    assert (status, doc["code"]) == (200, 200), doc
    upload = doc["data"]["upload"]
    assert upload["method"] == "PUT"
    assert upload["headers"] == {"Content-Type": "image/png", "If-None-Match": "*"}
    assert upload["expires_at"].endswith("Z")
    assert {k: doc["data"][k] for k in ("type", "filename", "size")} == {
        "type": "image",
        "filename": "cat.png",
        "size": len(data),
    }
    assert requests.get(doc["data"]["download_url"], timeout=10).status_code == 404  # nothing PUT yet
    assert put(upload, data) == 200
    assert requests.get(doc["data"]["download_url"], timeout=10).content == data
    ticket_record, put_record = sandbox.records
    assert (ticket_record.step, ticket_record.authorized) == ("ticket", True)
    assert (put_record.step, put_record.status, put_record.authorization_sent) == ("put", 200, False)
    assert put_record.sha256 == hashlib.sha256(data).hexdigest()


def test_a_second_put_under_if_none_match_is_412_and_keeps_the_first(sandbox: SandboxServer) -> None:
    _, doc = ticket(sandbox, {"filename": "cat.png", "size": 3})
    upload = doc["data"]["upload"]
    assert upload["headers"]["Content-Type"] == "application/octet-stream"  # none was given
    assert put(upload, b"abc") == 200
    assert put(upload, b"xyz") == 412
    assert requests.get(doc["data"]["download_url"], timeout=10).content == b"abc"


def test_a_put_records_an_authorization_header(sandbox: SandboxServer) -> None:
    _, doc = ticket(sandbox, {"filename": "cat.png", "size": 3})
    assert put(doc["data"]["upload"], b"abc", Authorization="Bearer k") == 200
    assert sandbox.records[-1].authorization_sent


@pytest.mark.parametrize(
    "spoil",
    [
        lambda u: {**u, "url": u["url"].replace("signature=", "signature=0")},
        lambda u: {**u, "url": u["url"].split("?")[0]},
        lambda u: {**u, "headers": {**u["headers"], "Content-Type": "image/gif"}},
        lambda u: {**u, "headers": {"Content-Type": u["headers"]["Content-Type"]}},
    ],
    ids=["signature", "unsigned", "content-type", "no-if-none-match"],
)
def test_a_put_not_as_signed_is_403(sandbox: SandboxServer, spoil: Any) -> None:
    _, doc = ticket(sandbox, {"filename": "cat.png", "size": 3, "content_type": "image/png"})
    assert put(spoil(doc["data"]["upload"]), b"abc") == 403
    assert requests.get(doc["data"]["download_url"], timeout=10).status_code == 404


def test_a_put_of_another_size_than_the_ticket_is_403(sandbox: SandboxServer) -> None:
    _, doc = ticket(sandbox, {"filename": "cat.png", "size": 3})
    assert put(doc["data"]["upload"], b"abcd") == 403


def test_an_expired_ticket_fault(sandbox: SandboxServer) -> None:
    sandbox.add_fault(Fault(step="ticket", expired=True))
    _, doc = ticket(sandbox, {"filename": "cat.png", "size": 3})
    assert put(doc["data"]["upload"], b"abc") == 403
    _, doc = ticket(sandbox, {"filename": "cat.png", "size": 3})
    assert put(doc["data"]["upload"], b"abc") == 200


@pytest.mark.parametrize(
    ("doc", "key", "status"),
    [
        ({"filename": "cat.png", "size": 3}, "wrong", 401),
        ({"filename": "cat.png", "size": 10_001}, "k", 413),
        ({"filename": "cat.txt", "size": 3}, "k", 400),
        ({"filename": "cat.png"}, "k", 400),
        ({"filename": "cat.png", "size": "3"}, "k", 400),
    ],
)
def test_ticket_errors(sandbox: SandboxServer, doc: dict[str, Any], key: str, status: int) -> None:
    answer_status, answer = ticket(sandbox, doc, key)
    assert (answer_status, answer["code"]) == (status, status)
    assert not [r for r in sandbox.records if r.step == "put"]


def test_faults_per_step(sandbox: SandboxServer) -> None:
    sandbox.add_fault(Fault(step="put", status=500))
    sandbox.add_fault(Fault(step="ticket", status=429, retry_after="3"))
    assert ticket(sandbox, {"filename": "cat.png", "size": 3})[0] == 429
    _, doc = ticket(sandbox, {"filename": "cat.png", "size": 3})
    assert put(doc["data"]["upload"], b"abc") == 500
    assert put(doc["data"]["upload"], b"abc") == 200
    assert [(r.step, r.status) for r in sandbox.records] == [
        ("ticket", 429),
        ("ticket", 200),
        ("put", 500),
        ("put", 200),
    ]


def test_a_put_reset_takes_part_of_the_body_then_drops(sandbox: SandboxServer) -> None:
    sandbox.add_fault(Fault(step="put", reset=True))
    _, doc = ticket(sandbox, {"filename": "cat.png", "size": 3})
    with pytest.raises(requests.ConnectionError):
        put(doc["data"]["upload"], b"abc")
    assert sandbox.records[-1].status is None
    assert put(doc["data"]["upload"], b"abc") == 200


def test_without_the_direct_flow_the_ticket_endpoint_is_404(sandbox: SandboxServer) -> None:
    sandbox.direct = False
    assert ticket(sandbox, {"filename": "cat.png", "size": 3})[0] == 404


def test_the_put_target_takes_only_put(sandbox: SandboxServer) -> None:
    _, doc = ticket(sandbox, {"filename": "cat.png", "size": 3})
    parts = urlsplit(doc["data"]["upload"]["url"])
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request("POST", f"{parts.path}?{parts.query}", body=b"abc")
        assert connection.getresponse().status == 404
    finally:
        connection.close()
