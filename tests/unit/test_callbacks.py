"""Callback signing and delivery with a fake receiver (no network)."""

import json
import time
from typing import Any

import fakeredis
import pytest
import requests

from wsupload.config import Settings
from wsupload.errors import Rejected
from wsupload.tasks.callbacks import SIGNATURE_HEADER, callback_key, deliver, sign, verify_signature
from wsupload.tasks.store import results
from wsupload.tasks.store.results import ResultStore

SECRET = "whsec-unit"


def test_signatures_verify_and_expire() -> None:
    body = b'{"job_id": "j"}'
    header = sign(SECRET, body, 1_000_000)
    assert verify_signature(SECRET, body, header, now=1_000_100)
    assert not verify_signature(SECRET, body + b" ", header, now=1_000_100)
    assert not verify_signature("other", body, header, now=1_000_100)
    assert not verify_signature(SECRET, body, header, now=1_000_000 + 301)  # replayed too late
    assert not verify_signature(SECRET, body, "garbage", now=1_000_000)


class Receiver:
    def __init__(self, *statuses: int | Exception) -> None:
        self.statuses = list(statuses)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, url: str, *, data: bytes, headers: dict[str, str], **kwargs: Any) -> Any:
        self.calls.append({"url": url, "body": data, "headers": headers})
        outcome = self.statuses.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        answer = requests.Response()
        answer.status_code = outcome
        return answer


@pytest.fixture
def finished_job(redis_client: fakeredis.FakeRedis) -> str:
    doc = results.failed(
        results.new_doc("j1", "/a.png", results.utcnow()), Rejected("HTTP 400: bad", 400), results.utcnow()
    )
    ResultStore(redis_client, 60).save(doc)
    return "j1"


def settings(**env: str) -> Settings:
    return Settings.from_env({"WSUPLOAD_CALLBACK_SECRET": SECRET, "WSUPLOAD_CALLBACK_ATTEMPTS": "3", **env})


def test_the_final_document_is_posted_signed(redis_client: fakeredis.FakeRedis, finished_job: str) -> None:
    receiver = Receiver(200)
    record = deliver(
        settings(), redis_client, finished_job, "https://hooks.test/in", post=receiver, sleep=lambda _: None
    )
    (call,) = receiver.calls
    assert json.loads(call["body"])["error"]["kind"] == "rejected"
    assert verify_signature(SECRET, call["body"], call["headers"][SIGNATURE_HEADER], now=time.time())
    assert (record["status"], record["attempts"], record["http_status"]) == ("delivered", 1, 200)
    assert json.loads(redis_client.get(callback_key("j1")) or b"{}")["status"] == "delivered"


def test_failures_are_retried_then_given_up(redis_client: fakeredis.FakeRedis, finished_job: str) -> None:
    receiver = Receiver(500, requests.ConnectionError("refused"), 200)
    record = deliver(
        settings(), redis_client, finished_job, "https://hooks.test/in", post=receiver, sleep=lambda _: None
    )
    assert (record["status"], record["attempts"]) == ("delivered", 3)
    receiver = Receiver(503, 503, 503)
    record = deliver(
        settings(), redis_client, finished_job, "https://hooks.test/in", post=receiver, sleep=lambda _: None
    )
    assert (record["status"], record["attempts"], record["error"]) == ("failed", 3, "the receiver answered HTTP 503")


def test_no_secret_no_callback(redis_client: fakeredis.FakeRedis, finished_job: str) -> None:
    receiver = Receiver()
    plain = Settings.from_env({})
    record = deliver(plain, redis_client, finished_job, "https://hooks.test/in", post=receiver, sleep=lambda _: None)
    assert receiver.calls == []
    assert "never sent unsigned" in record["error"]


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("https://hooks.test/in", True),
        ("https://HOOKS.test./in", True),
        ("https://a.partner.test/in", True),
        ("https://partner.test/in", False),
        ("http://169.254.169.254/latest/meta-data", False),
        ("http://localhost:6379/", False),
        ("http://[fd00::7]:8080/in", True),
        ("http://[fd00::8]/in", False),
    ],
)
def test_callbacks_go_only_to_allowed_hosts(
    redis_client: fakeredis.FakeRedis, finished_job: str, url: str, sent: bool
) -> None:
    receiver = Receiver(200)
    allowed = settings(WSUPLOAD_CALLBACK_HOSTS="hooks.test, *.partner.test, [fd00::7]")
    record = deliver(allowed, redis_client, finished_job, url, post=receiver, sleep=lambda _: None)
    assert bool(receiver.calls) is sent
    assert record["status"] == ("delivered" if sent else "failed")
    if not sent:
        assert record["error"].startswith("the callback's host is not in WSUPLOAD_CALLBACK_HOSTS")
