"""A batch that does not fit in Redis is refused whole (issue 9, case 6).

Private redis-servers with ``maxmemory`` and ``noeviction``, as in production: a
5,000-job batch needs about 10 MB. Refused while staging or at the commit, it
leaves no message, document, staging list or batch record, and the error is one
short line; the same batch on a Redis with room is queued whole. No worker is
needed: what matters is what reaches the queue.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import clean_env
from wsupload.config import Settings
from wsupload.errors import EnqueueError
from wsupload.tasks.enqueue import STAGING_TTL
from wsupload.tasks.recovery.lost_sweep import jobs_of
from wsupload.tasks.store import results
from wsupload.tasks.store.batches import members_key
from wsupload.worker.dev.local_services import LocalRedis, start_redis
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration]

QUEUES = {"WSUPLOAD_QUEUE": "faults", "WSUPLOAD_BULK_QUEUE": "faults.bulk"}
SOURCES = [f"/srv/media/incoming/{n:05d}.png" for n in range(5000)]
# Measured with redis-server 7.0, 32 jobs a message: an empty server holds ~950 kB, the whole
# batch ~5,900 kB, so its first chunk (1,984 jobs) stages within ~3,000 kB and the second does not fit.
REFUSED_WHILE_STAGING = "3800kb"


def full_redis(maxmemory: str) -> LocalRedis:
    return start_redis(extra_args=["--maxmemory", maxmemory, "--maxmemory-policy", "noeviction"])


@pytest.fixture
def roomy_redis() -> Iterator[LocalRedis]:
    server = start_redis()
    yield server
    server.stop()


def jobs_waiting(producer: Producer) -> list[str]:
    """The jobs the bulk queue's messages carry, in the order workers take them."""
    return [job for raw in reversed(producer.redis.lrange("faults.bulk", 0, -1)) for job in jobs_of(raw)]


def producer_for(server: LocalRedis) -> Producer:
    return Producer(Settings.from_env({"REDIS_URL": server.url, **QUEUES}))


def ingest(server: LocalRedis, manifest: Path) -> subprocess.CompletedProcess[str]:
    env = {**clean_env(), "REDIS_URL": server.url, **QUEUES}
    return subprocess.run(
        [sys.executable, "-m", "wsupload.worker.cli", "ingest", "--manifest", str(manifest), "--batch", "incoming"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "incoming.txt"
    path.write_text("\n".join(SOURCES) + "\n")
    return path


def fill_up_before(producer: Producer, step: str, call: int) -> None:
    """Make Redis full (``maxmemory`` just under what it uses) right before the ``call``-th ``step``.

    The fault lands exactly where the test names it, whatever the allocator's
    overhead on this machine: a fixed ``maxmemory`` guessed from one machine's
    figures refused at the commit on one run and not on another.
    """
    real = getattr(producer, step)
    calls = [0]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if calls[0] == call:
            used = int(producer.redis.info("memory")["used_memory"])
            producer.redis.config_set("maxmemory", used - 1)
        calls[0] += 1
        return real(*args, **kwargs)

    setattr(producer, step, wrapped)


@pytest.mark.parametrize(
    ("step", "call", "when"),
    [("_stage", 1, "after staging 1993 of 5000 jobs"), ("_commit", 0, "while committing 5000 jobs")],
    ids=["staging", "commit"],
)
def test_a_batch_that_does_not_fit_leaves_nothing_behind(
    roomy_redis: LocalRedis, step: str, call: int, when: str
) -> None:
    producer = producer_for(roomy_redis)
    producer.redis.config_set("maxmemory-policy", "noeviction")
    fill_up_before(producer, step, call)
    with pytest.raises(EnqueueError) as caught:
        producer.enqueue_batch(SOURCES, name="incoming")
    line = str(caught.value)
    assert line == (
        f"batch not enqueued: Redis refused writes {when} "
        "(OOM command not allowed when used memory > 'maxmemory'); nothing was queued"
    )
    assert (len(caught.value.jobs), caught.value.in_doubt) == (5000, False)
    assert producer.redis.llen("faults.bulk") == 0
    assert producer.batches.resolve("incoming") is None
    assert producer.redis.keys("*") == []  # no document, staging list or batch record either
    # What was staged is gone, not merely unreachable: the memory is free for the next job.
    (job,) = producer.enqueue(["/srv/media/one.png"])
    assert producer.status([job.job_id])[0] is not None


def test_ingest_on_a_full_redis_exits_2_with_one_short_line(manifest: Path) -> None:
    server = full_redis(REFUSED_WHILE_STAGING)
    try:
        run = ingest(server, manifest)
        assert run.returncode == 2
        assert run.stdout == ""  # no batch id: there is no batch
        (line,) = run.stderr.splitlines()
        # Where in the batch the refusal lands depends on the allocator; that it is one line does not.
        assert line.startswith("wsupload: batch not enqueued: Redis refused writes ")
        assert line.endswith("; nothing was queued")
        assert len(line) < 300
        assert producer_for(server).redis.keys("*") == []
    finally:
        server.stop()


def test_the_same_batch_on_a_redis_with_room_is_queued_whole(roomy_redis: LocalRedis, manifest: Path) -> None:
    producer = producer_for(roomy_redis)
    batch = producer.enqueue_batch(SOURCES, name="incoming")
    ids = [job.job_id for job in batch.jobs]
    first = json.loads(producer.redis.lindex("faults.bulk", -1))  # type: ignore[arg-type]
    (carried,) = json.loads(base64.b64decode(first["body"]))[0]  # a bulk message: [[job_id, source], …]
    assert carried[0] == [ids[0], SOURCES[0]]  # a worker takes the first job first
    assert jobs_waiting(producer) == ids
    info = producer.batches.get(batch.batch_id)
    assert info is not None
    assert (info["total"], info["done"]) == (5000, 0)
    assert producer.batches.job_ids(batch.batch_id) == ids
    assert all(doc is not None and doc["status"] == "queued" for doc in producer.status(ids))
    assert min(producer.redis.ttl(results.result_key(job_id)) for job_id in (ids[0], ids[2500], ids[-1])) > STAGING_TTL
    assert producer.redis.ttl(members_key(batch.batch_id)) > STAGING_TTL
    assert producer.redis.keys("wsupload:staging:*") == []

    run = ingest(roomy_redis, manifest)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("batch ")
    assert "(incoming): 5000 jobs" in run.stdout
    assert len(jobs_waiting(producer)) == 10000
