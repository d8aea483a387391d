"""Callbacks through the real worker: signed, retried, and never holding up the upload."""

import json
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Fleet, Hooks
from wsupload.tasks.callbacks import callback_key, verify_signature
from wsupload.worker.dev.local_services import wait_until
from wsupload.worker.dev.samples import png_bytes

pytestmark = pytest.mark.integration
SECRET = "whsec-integration"


def test_a_callback_is_signed_retried_and_delivered(fleet: Fleet, hooks: Hooks, media_root: Path) -> None:
    png = media_root / "hooked.png"
    png.write_bytes(png_bytes(9, 9))
    workers = fleet(WSUPLOAD_CALLBACK_SECRET=SECRET, WSUPLOAD_CALLBACK_ATTEMPTS="4")
    hooks.statuses = [500, 503]  # the receiver is down for the first two tries
    (job,) = workers.producer.enqueue([str(png)], options={"callback_url": hooks.url})
    wait_until(lambda: workers.producer.redis.get(callback_key(job.job_id)), 60, what="the callback's outcome")
    record = json.loads(workers.producer.redis.get(callback_key(job.job_id)) or b"{}")
    assert (record["status"], record["attempts"]) == ("delivered", 3)
    assert len(hooks.received) == 3
    last = hooks.received[-1]
    assert verify_signature(SECRET, last["body"], last["signature"], now=time.time())
    delivered = json.loads(last["body"])
    assert delivered == workers.producer.status([job.job_id])[0]
    assert delivered["status"] == "succeeded"


def test_a_dead_receiver_does_not_hold_up_the_upload(fleet: Fleet, hooks: Hooks, media_root: Path) -> None:
    png = media_root / "unhooked.png"
    png.write_bytes(png_bytes(9, 8))
    workers = fleet(WSUPLOAD_CALLBACK_SECRET=SECRET, WSUPLOAD_CALLBACK_ATTEMPTS="2")
    hooks.statuses = [500, 500]
    (job,) = workers.producer.enqueue([str(png)], options={"callback_url": hooks.url})
    outcome = workers.producer.wait([job.job_id], timeout=60)
    assert outcome.all_succeeded
    wait_until(lambda: workers.producer.redis.get(callback_key(job.job_id)), 60, what="the callback's outcome")
    record = json.loads(workers.producer.redis.get(callback_key(job.job_id)) or b"{}")
    assert (record["status"], record["error"]) == ("failed", "the receiver answered HTTP 500")
