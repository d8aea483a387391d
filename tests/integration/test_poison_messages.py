"""No message on the queue stops a worker; each one it cannot run is moved aside, none is lost.

Raw bytes are pushed onto the queue list with redis-py, as a broken producer
(or an attacker with Redis access) would. The worker is started after the
poison is already waiting, the way every restart met it before.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Fleet
from wsupload.config import UPLOAD_TASK_NAME
from wsupload.tasks.store.dead_letters import DEAD_KEY, DeadLetter, DeadLetterStore
from wsupload.tasks.store.results import TERMINAL, JobDoc, new_doc, utcnow
from wsupload.tasks.wire import encode
from wsupload.worker.cli import main as cli_main
from wsupload.worker.dev.local_services import wait_until
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.producer import Producer

pytestmark = pytest.mark.integration


def envelope(queue: str, *, body: str, headers: dict[str, Any], content_type: str = "application/json") -> str:
    return json.dumps(
        {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": headers,
            "properties": {
                "delivery_tag": uuid.uuid4().hex,
                "body_encoding": "base64",
                "delivery_info": {"exchange": "", "routing_key": queue},
            },
        }
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def poison(queue: str, job_ids: dict[str, str]) -> dict[str, bytes]:
    """Messages no worker can run, by name; ``job_ids`` names the job some of them carry."""
    upload = {"task": UPLOAD_TASK_NAME, "lang": "py"}
    return {
        # The message: the envelope says base64, the body is not.
        "body-not-base64": envelope(queue, body="!!!", headers={**upload, "id": job_ids["body-not-base64"]}).encode(),
        "not-json": b"garbage{",
        "json-list": b"[1,2,3]",
        "json-string": b'"x"',
        "not-utf8": b"\xff\xfe\x00binary",
        "no-properties": json.dumps({"body": "", "headers": {}}).encode(),
        "unknown-task": envelope(
            queue, body=b64(b"[[], {}, {}]"), headers={"task": "no.such.task", "id": "t1"}
        ).encode(),
        "no-task-header": envelope(queue, body=b64(b"[[], {}, {}]"), headers={"id": "t2"}).encode(),
        "body-not-json": envelope(
            queue, body=b64(b"{not json"), headers={**upload, "id": job_ids["body-not-json"]}
        ).encode(),
        "pickle-refused": envelope(
            queue,
            body=b64(b"\x80\x04K\x01."),
            headers={**upload, "id": job_ids["pickle-refused"]},
            content_type="application/x-python-serialize",
        ).encode(),
        "body-not-protocol-2": envelope(
            queue, body=b64(b'{"args": []}'), headers={**upload, "id": job_ids["body-not-protocol-2"]}
        ).encode(),
        "args-name-no-job": envelope(queue, body=b64(b"[[], {}, {}]"), headers={**upload, "id": "!!"}).encode(),
        "task-header-a-list": envelope(queue, body=b64(b"[[], {}, {}]"), headers={"task": ["x"], "id": "t3"}).encode(),
    }


WITH_JOB = ("body-not-base64", "body-not-json", "pickle-refused", "body-not-protocol-2")


def dead_for(producer: Producer, queue: str) -> list[DeadLetter]:
    return [entry for entry in DeadLetterStore(producer.redis).entries() if entry.queue == queue]


def finished(producer: Producer, job_id: str) -> JobDoc | None:
    doc = producer.status([job_id])[0]
    return doc if doc and doc["status"] in TERMINAL else None


def test_poison_messages_are_moved_aside_and_the_jobs_behind_them_run(
    fleet: Fleet, media_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    queue = "poison-" + uuid.uuid4().hex[:8]
    own_queues = {"WSUPLOAD_QUEUE": queue, "WSUPLOAD_BULK_QUEUE": queue + ".bulk"}
    producer = fleet(count=0, **own_queues).producer  # no worker yet: the poison goes first
    job_ids = {name: uuid.uuid4().hex for name in WITH_JOB}
    messages = poison(queue, job_ids)
    now = utcnow()
    producer.store.create(new_doc(job_id, "/media/x.png", now) for job_id in job_ids.values())
    for raw in messages.values():
        producer.redis.lpush(queue, raw)
    png = media_root / f"after-poison-{uuid.uuid4().hex[:6]}.png"
    png.write_bytes(png_bytes())
    good = uuid.uuid4().hex
    producer.store.create([new_doc(good, str(png), now)])
    producer.redis.lpush(queue, encode.upload_message(good, str(png), queue))

    handle = fleet(count=1, **own_queues)
    (worker,) = handle.workers
    doc: JobDoc = wait_until(lambda: finished(producer, good), 60, what="the good job behind the poison")
    assert doc["status"] == "succeeded"

    # Every poison message is on the dead-letter list, as it was sent; none is left on the queue.
    dead = wait_until(lambda: (d := dead_for(producer, queue)) and len(d) >= len(messages) and d, 30, what="entries")
    assert sorted(entry.message() for entry in dead) == sorted(messages.values())
    assert producer.redis.llen(queue) == 0
    assert all(entry.reason for entry in dead)
    # Its jobs ended failed, published like any outcome: a waiter returns.
    outcome = producer.wait(list(job_ids.values()), timeout=30)
    assert not outcome.timed_out
    for ended in outcome.docs:
        assert ended is not None
        assert (ended["status"], ended["error"]["kind"]) == ("failed", "invalid_message")
        assert "dead-letter entry" in ended["error"]["message"]
    by_job = {entry.job_id: entry for entry in dead if entry.job_id}
    assert set(job_ids.values()) <= set(by_job)

    # The worker never stopped.
    assert worker.process is not None
    assert worker.process.poll() is None
    assert "Unrecoverable error" not in worker.log_path.read_text()

    # `wsupload dead` lists, requeues and purges them.
    env_keys = {"REDIS_URL": producer.settings.redis_url}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env_keys.items():
            patch.setenv(key, value)
        assert cli_main(["dead", "list", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert {e["id"] for e in listed} >= {e.id for e in dead}
        target = by_job[job_ids["body-not-json"]]
        assert cli_main(["dead", "purge", target.id]) == 0
        assert "purged 1" in capsys.readouterr().out
        assert target.id not in {e.id for e in dead_for(producer, queue)}


def test_a_requeued_dead_letter_goes_back_on_its_queue(producer: Producer) -> None:
    queue = "requeue-" + uuid.uuid4().hex[:8]
    store = DeadLetterStore(producer.redis)
    entry = store.add(b"garbage{", "test", queue=queue)
    done, refused = store.requeue([entry.id], default_queue="unused")
    assert (done, refused) == (1, [])
    assert producer.redis.lrange(queue, 0, -1) == [b"garbage{"]
    assert entry.id not in {e.id for e in store.entries()}
    producer.redis.delete(queue)


def test_the_dead_letter_list_is_bounded(producer: Producer) -> None:
    store = DeadLetterStore(producer.redis, max_entries=3)
    before = producer.redis.lrange(DEAD_KEY, 0, -1)
    try:
        for n in range(5):
            store.add(f"m{n}".encode() * 100_000, "big", queue="bounded")
        entries = store.entries()
        assert len(entries) == 3
        assert [e.raw[:2] for e in entries] == ["m4", "m3", "m2"]  # newest first
        assert all(e.truncated and e.raw_bytes == 200_000 and len(e.raw) == 64 * 1024 for e in entries)
    finally:
        producer.redis.delete(DEAD_KEY)
        if before:
            producer.redis.rpush(DEAD_KEY, *before)
