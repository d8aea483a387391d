"""Result callbacks: POST a job's final document to the URL it asked for, signed.

Delivered by its own task (``wsupload.callback``), after the outcome is
recorded, so a slow or broken receiver never delays or fails the upload.
Retried with the job's backoff policy up to ``WSUPLOAD_CALLBACK_ATTEMPTS``;
the outcome of delivery is kept at ``wsupload:callback:<job_id>``.

Signature (like Stripe's): header ``X-Wsupload-Signature: t=<unix>,v1=<hex>``
where ``hex = HMAC-SHA256(WSUPLOAD_CALLBACK_SECRET, "<t>." + body)``. Receivers
check it with ``verify_signature`` (or its three lines in their language) and
reject stale timestamps. Without a secret the worker does not send callbacks.
``WSUPLOAD_CALLBACK_HOSTS`` limits the hosts it posts to (redirects are never
followed), so a producer cannot aim the worker at its own network.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis
import requests
from celery import shared_task
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from wsupload.config.settings import CALLBACK_TASK_NAME, Settings
from wsupload.tasks import runtime
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import ResultStore, isoformat, utcnow

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Wsupload-Signature"


callback_key = keys.callback


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(secret: str, body: bytes, header: str, now: float, tolerance: float = 300) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and is at most ``tolerance`` s old."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (ValueError, KeyError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), header)


def host_allowed(url: str, allowed: Sequence[str]) -> bool:
    """Whether ``url``'s host is in ``allowed`` (WSUPLOAD_CALLBACK_HOSTS); an empty list allows any."""
    host = (urlsplit(url).hostname or "").rstrip(".")
    return not allowed or any(
        host.endswith(entry[1:]) if entry.startswith("*.") else host == entry for entry in allowed
    )


class DeliveryFailed(Exception):
    pass


def deliver(
    settings: Settings,
    client: redis.Redis,
    job_id: str,
    url: str,
    *,
    post: Callable[..., Any] = requests.post,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """POST the job's document to ``url``; returns (and stores) the delivery record."""
    record: dict[str, Any] = {"url": url, "attempts": 0, "status": "failed", "http_status": None, "error": None}
    doc = ResultStore(client, settings.result_ttl).get(job_id)
    if settings.callback_secret is None:
        record["error"] = "WSUPLOAD_CALLBACK_SECRET is not set on the worker: callbacks are never sent unsigned"
    elif not host_allowed(url, settings.callback_hosts):
        # Producers choose the URL; the worker's network may reach what they cannot.
        record["error"] = (
            f"the callback's host is not in WSUPLOAD_CALLBACK_HOSTS ({', '.join(settings.callback_hosts)})"
        )
    elif doc is None:
        record["error"] = "the job's document is gone (expired?)"
    else:
        body = json.dumps(doc).encode()

        def attempt() -> None:
            record["attempts"] += 1
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(str(settings.callback_secret), body, int(time.time())),
            }
            try:
                answer = post(
                    url, data=body, headers=headers, timeout=(settings.connect_timeout, 30), allow_redirects=False
                )
            except requests.RequestException as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"[:300]
                raise DeliveryFailed from None
            record["http_status"] = answer.status_code
            if not 200 <= answer.status_code < 300:
                record["error"] = f"the receiver answered HTTP {answer.status_code}"
                raise DeliveryFailed

        retrying = Retrying(
            retry=retry_if_exception_type(DeliveryFailed),
            stop=stop_after_attempt(settings.callback_attempts),
            wait=wait_random_exponential(multiplier=settings.backoff_base, max=settings.backoff_max),
            sleep=sleep,
            reraise=True,
        )
        try:
            retrying(attempt)
            record.update(status="delivered", error=None, delivered_at=isoformat(utcnow()))
        except DeliveryFailed:
            log.warning(
                "job %s: callback to %s failed after %d attempts: %s", job_id, url, record["attempts"], record["error"]
            )
    client.set(callback_key(job_id), json.dumps(record), ex=settings.result_ttl)
    return record


@shared_task(name=CALLBACK_TASK_NAME, ignore_result=True, acks_late=True)
def callback(job_id: str, url: str) -> None:
    here = runtime.current()
    deliver(here.settings, here.redis, job_id, url)
