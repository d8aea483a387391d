"""Enqueueing is all or nothing: staging, the one-step commit, clean-up, and the error line.

fakeredis runs the commit script with real Lua; tests/integration/test_enqueue_faults.py
does the same against a redis-server that is out of memory.
"""

import base64
import json
import pickle
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
import redis

from wsupload.config import ConfigError, Settings
from wsupload.errors import EnqueueError, InvalidInput
from wsupload.tasks import enqueue as enqueue_module
from wsupload.tasks.enqueue import STAGING_TTL, Enqueuer, Job, redis_reason
from wsupload.tasks.observe.bounds import MAX_SOURCE_CHARS
from wsupload.tasks.store import keys, results

QUEUE, BULK = "q1", "q1.bulk"
RESULT_TTL = 3600
OOM = "command not allowed when used memory > 'maxmemory'. script: " + "ab" * 20 + ", on @user_script:12."


@pytest.fixture
def enqueuer(redis_client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch) -> Enqueuer:
    monkeypatch.setattr(enqueue_module, "CHUNK", 2)  # 5 jobs: two staged chunks and a last one
    settings = Settings.from_env({"WSUPLOAD_QUEUE": QUEUE, "WSUPLOAD_BULK_QUEUE": BULK, "WSUPLOAD_RESULT_TTL": "1h"})
    return Enqueuer(settings, redis_client)


def queued_ids(client: fakeredis.FakeRedis, queue: str) -> list[str]:
    """Job ids in the order a worker (BRPOP, from the right) takes them."""
    ids = []
    for raw in reversed(client.lrange(queue, 0, -1)):
        args, _, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
        ids.append(args[0])
    return ids


def leftovers(client: fakeredis.FakeRedis) -> list[Any]:
    return sorted(client.keys("*"))


def fail_commit(enqueuer: Enqueuer, error: Exception, *, run_first: bool = False) -> None:
    """The commit raises ``error``; with ``run_first`` it ran in Redis and only its reply was lost."""
    real = enqueuer._commit

    def commit(**kwargs: Any) -> Any:
        if run_first:
            real(**kwargs)
        raise error

    enqueuer._commit = commit  # type: ignore[assignment]


def fail_pipeline(client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch, number: int, error: Exception) -> None:
    """The ``number``-th pipeline from now fails when executed, having written nothing."""
    real = client.pipeline
    calls = [0]

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real(*args, **kwargs)
        calls[0] += 1
        if calls[0] == number:
            pipe.execute = lambda *a, **k: (_ for _ in ()).throw(error)  # type: ignore[method-assign]
        return pipe

    monkeypatch.setattr(client, "pipeline", pipeline)


def test_many_chunks_reach_the_queue_in_order_with_permanent_documents(
    enqueuer: Enqueuer, redis_client: fakeredis.FakeRedis
) -> None:
    jobs = enqueuer.enqueue([f"/m/{n}.png" for n in range(5)])
    assert queued_ids(redis_client, QUEUE) == [j.job_id for j in jobs]
    for job in jobs:
        assert 3500 < redis_client.ttl(results.result_key(job.job_id)) <= RESULT_TTL
    assert redis_client.keys("wsupload:staging:*") == []


def test_a_batch_is_written_with_its_last_chunk(enqueuer: Enqueuer, redis_client: fakeredis.FakeRedis) -> None:
    batch = enqueuer.enqueue_batch([f"/m/{n}.png" for n in range(5)], name="nightly")
    assert queued_ids(redis_client, BULK) == [j.job_id for j in batch.jobs]
    info = enqueuer.batches.get(batch.batch_id)
    assert info is not None
    assert (info["total"], info["done"], info["name"]) == (5, 0, "nightly")
    assert enqueuer.batches.job_ids(batch.batch_id) == [j.job_id for j in batch.jobs]
    assert enqueuer.batches.resolve("nightly") == batch.batch_id
    for key in (
        results.batch_key(batch.batch_id),
        f"{results.batch_key(batch.batch_id)}:jobs",
        "wsupload:batch-name:nightly",
    ):
        assert 3500 < redis_client.ttl(key) <= RESULT_TTL


def places(client: fakeredis.FakeRedis, queue: str) -> dict[str, float]:
    scored: Any = client.zrange(keys.pending(queue), 0, -1, withscores=True)
    return {member.decode(): score for member, score in scored}


def test_each_job_gets_its_place_in_the_line_in_the_order_workers_take_them(
    enqueuer: Enqueuer, redis_client: fakeredis.FakeRedis
) -> None:
    # tasks.recovery.lost_sweep reads these places: a job placed below one a worker took, and not waiting, was lost.
    first = enqueuer.enqueue([f"/m/{n}.png" for n in range(5)])  # two staged chunks and a last one
    second = enqueuer.enqueue(["/m/late.png"])
    jobs = first + second
    assert queued_ids(redis_client, QUEUE) == [j.job_id for j in jobs]
    assert places(redis_client, QUEUE) == {j.job_id: n for n, j in enumerate(jobs, 1)}
    assert redis_client.get(keys.place_counter(QUEUE)) == b"6"
    assert places(redis_client, BULK) == {}


def test_a_bulk_call_puts_several_jobs_in_a_message_each_with_its_document_and_place(
    redis_client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(enqueue_module, "CHUNK", 5)  # staged chunks of whole messages: 2+2, then 2+1+1, then 1
    monkeypatch.setattr(enqueue_module, "SPREAD", 2)
    env = {"WSUPLOAD_QUEUE": QUEUE, "WSUPLOAD_BULK_QUEUE": BULK, "WSUPLOAD_JOBS_PER_MESSAGE": "2"}
    enqueuer = Enqueuer(Settings.from_env(env), redis_client)
    batch = enqueuer.enqueue_batch([f"/m/{n}.png" for n in range(9)], options={"callback_url": "https://cb/x"})
    messages = [json.loads(raw) for raw in reversed(redis_client.lrange(BULK, 0, -1))]  # in the order taken
    bodies = [json.loads(base64.b64decode(m["body"])) for m in messages]
    ids = [j.job_id for j in batch.jobs]
    bulk, single = messages[:3], messages[3:]  # 9 jobs: 6 messages (a multiple of SPREAD) of 2 or 1
    carried = [body[0][0] for body in bodies[:3]]
    assert [[job for job, _ in jobs] for jobs in carried] == [ids[0:2], ids[2:4], ids[4:6]]
    assert [m["headers"]["wsupload_jobs"] for m in bulk] == [ids[0:2], ids[2:4], ids[4:6]]
    assert {m["headers"]["task"] for m in bulk} == {"wsupload.upload_many"}
    assert [(m["headers"]["task"], body[0][0]) for m, body in zip(single, bodies[3:], strict=True)] == [
        ("wsupload.upload", job) for job in ids[6:]
    ]
    assert all(body[1]["options"]["callback_url"] == "https://cb/x" for body in bodies)
    assert places(redis_client, BULK) == {job: n for n, job in enumerate(ids, 1)}
    assert [doc and doc["status"] for doc in enqueuer.store.get_many(ids)] == ["queued"] * 9
    assert redis_client.ttl(results.result_key(ids[0])) > STAGING_TTL  # committed, not staged
    assert redis_client.hget(results.batch_key(batch.batch_id), "total") == b"9"


@pytest.mark.parametrize(
    ("jobs", "most", "sizes"),
    [
        (1, 32, [1]),
        (32, 32, [1] * 32),
        (33, 32, [2] + [1] * 31),  # 32 messages: one per thread of a worker
        (1000, 32, [32] * 8 + [31] * 24),  # not 32 of 31 and a short 33rd
        (10_000, 32, [32] * 80 + [31] * 240),  # 320 messages: ten waves of 32
        (10_000, 1, [1] * 10_000),
    ],
)
def test_a_bulk_call_splits_into_even_messages_a_multiple_of_a_workers_threads(
    jobs: int, most: int, sizes: list[int]
) -> None:
    assert enqueue_module.message_sizes(jobs, most) == sizes


def test_interactive_jobs_go_one_to_a_message(
    redis_client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(enqueue_module, "SPREAD", 2)
    enqueuer = Enqueuer(Settings.from_env({"WSUPLOAD_QUEUE": QUEUE, "WSUPLOAD_BULK_QUEUE": BULK}), redis_client)
    jobs = enqueuer.enqueue([f"/m/{n}.png" for n in range(9)])
    assert queued_ids(redis_client, QUEUE) == [j.job_id for j in jobs]


def test_documents_carry_the_options_their_messages_carry(enqueuer: Enqueuer) -> None:
    sources = [f"/m/{n}.png" for n in range(5)]  # staged and committed alike
    batch = enqueuer.enqueue_batch(sources, options={"callback_url": "https://hooks.example/x"})
    for job in batch.jobs:
        doc = enqueuer.store.get(job.job_id)
        assert doc is not None
        assert doc["options"] == {"dedup": True, "callback_url": "https://hooks.example/x"}
    (plain,) = enqueuer.enqueue(["/m/c.png"])
    assert "options" not in (enqueuer.store.get(plain.job_id) or {})


def test_an_empty_batch_still_exists(enqueuer: Enqueuer) -> None:
    batch = enqueuer.enqueue_batch([])
    info = enqueuer.batches.get(batch.batch_id)
    assert info is not None
    assert (info["total"], enqueuer.batches.job_ids(batch.batch_id)) == (0, [])


def test_one_job_is_one_round_trip(
    enqueuer: Enqueuer, redis_client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    enqueuer.enqueue(["/m/warm.png"])  # loads the script once
    commands: list[Any] = []
    real: Callable[..., Any] = redis_client.execute_command

    def counted(*args: Any, **kwargs: Any) -> Any:
        commands.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(redis_client, "execute_command", counted)
    monkeypatch.setattr(redis_client, "pipeline", lambda *a, **k: pytest.fail("no pipeline for one job"))
    enqueuer.enqueue(["/m/a.png"])
    assert commands == ["EVALSHA"]


def test_a_refused_staging_chunk_leaves_nothing(
    enqueuer: Enqueuer, redis_client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_pipeline(redis_client, monkeypatch, 2, redis.exceptions.OutOfMemoryError(OOM))
    with pytest.raises(EnqueueError) as caught:
        enqueuer.enqueue_batch([f"/m/{n}.png" for n in range(5)], name="nightly")
    assert str(caught.value) == (
        "batch not enqueued: Redis refused writes after staging 2 of 5 jobs "
        "(OOM command not allowed when used memory > 'maxmemory'); nothing was queued"
    )
    assert len(caught.value.jobs) == 5
    assert not caught.value.in_doubt
    assert leftovers(redis_client) == []


def test_a_refused_commit_leaves_nothing(enqueuer: Enqueuer, redis_client: fakeredis.FakeRedis) -> None:
    redis_client.set("wsupload:batch-name:nightly", "the-previous-batch")
    fail_commit(enqueuer, redis.exceptions.OutOfMemoryError(OOM))
    with pytest.raises(EnqueueError, match=r"^batch not enqueued: Redis refused writes while committing 5 jobs \(OOM"):
        enqueuer.enqueue_batch([f"/m/{n}.png" for n in range(5)], name="nightly")
    assert leftovers(redis_client) == [b"wsupload:batch-name:nightly"]
    assert redis_client.get("wsupload:batch-name:nightly") == b"the-previous-batch"


def test_a_commit_whose_reply_was_lost_is_found_done(enqueuer: Enqueuer, redis_client: fakeredis.FakeRedis) -> None:
    fail_commit(enqueuer, redis.ConnectionError("Connection reset by peer"), run_first=True)
    jobs = enqueuer.enqueue([f"/m/{n}.png" for n in range(5)])
    assert queued_ids(redis_client, QUEUE) == [j.job_id for j in jobs]


def test_a_commit_lost_before_it_ran_leaves_nothing(enqueuer: Enqueuer, redis_client: fakeredis.FakeRedis) -> None:
    fail_commit(enqueuer, redis.ConnectionError("Connection reset by peer"))
    with pytest.raises(EnqueueError, match=r"^jobs not enqueued: the connection to Redis failed while committing 5"):
        enqueuer.enqueue([f"/m/{n}.png" for n in range(5)])
    assert leftovers(redis_client) == []


def test_a_commit_lost_with_redis_gone_is_in_doubt_and_staging_expires(
    enqueuer: Enqueuer, redis_client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = redis.ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")
    fail_commit(enqueuer, gone)
    monkeypatch.setattr(redis_client, "exists", lambda *a: (_ for _ in ()).throw(gone))
    with pytest.raises(EnqueueError) as caught:
        enqueuer.enqueue([f"/m/{n}.png" for n in range(5)])
    error = caught.value
    assert error.in_doubt
    assert str(error) == (
        "jobs in doubt: the connection to Redis failed while committing 5 jobs (Error 111 connecting to "
        "127.0.0.1:6390. Connection refused); either all were queued or none was, "
        f"`wsupload status {error.jobs[-1].job_id}` tells which"
    )
    # Nothing was deleted (the commit may have run), nothing is queued, and what was staged expires.
    assert redis_client.llen(QUEUE) == 0
    staged = leftovers(redis_client)
    assert len(staged) == 2 + 4  # two staging lists, four staged documents
    assert all(0 < redis_client.ttl(key) <= STAGING_TTL for key in staged)


def test_a_resent_commit_queues_nothing_twice(enqueuer: Enqueuer, redis_client: fakeredis.FakeRedis) -> None:
    sent: list[dict[str, Any]] = []
    real = enqueuer._commit

    def commit(**kwargs: Any) -> Any:
        sent.append(kwargs)
        return real(**kwargs)

    enqueuer._commit = commit  # type: ignore[assignment]
    jobs = enqueuer.enqueue_batch([f"/m/{n}.png" for n in range(5)]).jobs
    assert real(**sent[0]) == 0  # what redis-py does when a reply is lost: send it again
    assert queued_ids(redis_client, BULK) == [j.job_id for j in jobs]
    assert places(redis_client, BULK) == {j.job_id: n for n, j in enumerate(jobs, 1)}


def test_staging_that_expired_is_never_committed(enqueuer: Enqueuer, redis_client: fakeredis.FakeRedis) -> None:
    real = enqueuer._commit

    def commit(**kwargs: Any) -> Any:
        first = next(key for key in kwargs["keys"] if key.startswith("wsupload:staging:"))
        redis_client.delete(first)  # the first staging list, expired
        return real(**kwargs)

    enqueuer._commit = commit  # type: ignore[assignment]
    with pytest.raises(EnqueueError, match=r"Redis answered an error while committing 5 jobs \(the staged messages"):
        enqueuer.enqueue([f"/m/{n}.png" for n in range(5)])
    assert leftovers(redis_client) == []


def test_a_queue_key_of_another_type_is_refused_before_any_write(
    enqueuer: Enqueuer, redis_client: fakeredis.FakeRedis
) -> None:
    redis_client.set(QUEUE, "not a list")
    with pytest.raises(EnqueueError, match="the queue key holds a string, not a list"):
        enqueuer.enqueue(["/m/a.png"])
    assert leftovers(redis_client) == [QUEUE.encode()]


def test_a_producer_that_dies_before_the_commit_leaves_only_expiring_keys(
    enqueuer: Enqueuer, redis_client: fakeredis.FakeRedis
) -> None:
    def crash(**kwargs: Any) -> Any:
        raise KeyboardInterrupt

    enqueuer._commit = crash  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        enqueuer.enqueue_batch([f"/m/{n}.png" for n in range(5)])
    assert redis_client.llen(BULK) == 0
    assert redis_client.keys("wsupload:batch:*") == []
    assert all(0 < redis_client.ttl(key) <= STAGING_TTL for key in leftovers(redis_client))


def test_the_error_line_is_short_whatever_the_batch(enqueuer: Enqueuer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(enqueue_module, "CHUNK", 2000)
    long_reason = redis.ResponseError(
        "Command # 1 (SET wsupload:result:x {...}) of pipeline caused error: " + "x" * 5000
    )
    fail_commit(enqueuer, long_reason)
    with pytest.raises(EnqueueError) as caught:
        enqueuer.enqueue_batch([f"/srv/media/{n:06d}.png" for n in range(5000)])
    line = str(caught.value)
    assert "\n" not in line
    assert len(line) < 300
    assert "SET wsupload" not in line
    assert line.startswith("batch not enqueued: Redis answered an error while committing 5000 jobs (" + "x" * 100)
    copy = pickle.loads(pickle.dumps(caught.value))  # noqa: S301  (Celery pickles exceptions)
    assert (str(copy), len(copy.jobs), copy.batch_id) == (line, 5000, caught.value.batch_id)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (redis.exceptions.OutOfMemoryError(OOM), "OOM command not allowed when used memory > 'maxmemory'"),
        (redis.ConnectionError("Connection closed by server."), "Connection closed by server"),
        (redis.exceptions.BusyLoadingError("Redis is loading\nthe dataset in memory"), "Redis is loading the dataset"),
        (redis.ResponseError(""), "ResponseError"),
    ],
)
def test_redis_reason_is_one_line(error: Exception, reason: str) -> None:
    assert redis_reason(error).startswith(reason)
    assert "\n" not in redis_reason(error)


@pytest.mark.parametrize("call", [lambda e, s: e.enqueue(s), lambda e, s: e.enqueue_batch(s)])
def test_an_over_long_source_is_refused_before_anything_is_sent(
    enqueuer: Enqueuer, redis_client: fakeredis.FakeRedis, call: Callable[[Enqueuer, list[str]], Any]
) -> None:
    sources = [f"/srv/{n}.png" for n in range(5000)]
    sources[16] = "/srv/" + "a" * (10 * 1024 * 1024 - 5)
    with pytest.raises(InvalidInput) as caught:
        call(enqueuer, sources)
    assert str(caught.value) == (
        f"source 17 of 5000 is 10485760 characters long, over the limit of {MAX_SOURCE_CHARS}: "
        f"'/srv/{'a' * 195}…[10485560 more characters]'"
    )
    assert leftovers(redis_client) == []


def test_a_source_at_the_limit_is_accepted_and_newlines_stay_on_one_line(enqueuer: Enqueuer) -> None:
    (job,) = enqueuer.enqueue(["/" + "a" * (MAX_SOURCE_CHARS - 1)])
    assert len(job.source) == MAX_SOURCE_CHARS
    with pytest.raises(InvalidInput) as caught:
        enqueuer.enqueue(["/x\n" * MAX_SOURCE_CHARS])
    assert "\n" not in str(caught.value)


def test_enqueue_error_keeps_its_fields() -> None:
    jobs = [Job("j1", "/a.png")]
    error = EnqueueError("jobs not enqueued: …", jobs, in_doubt=True, batch_id="b1")
    assert (str(error), error.jobs, error.in_doubt, error.batch_id) == ("jobs not enqueued: …", jobs, True, "b1")


def test_enqueueing_with_a_broker_apart_from_the_results_is_refused_not_lost(redis_client: Any) -> None:
    settings = Settings.from_env(
        {"REDIS_URL": "redis://results:6379/0", "WSUPLOAD_BROKER_URL": "redis://broker:6379/0"}
    )
    with pytest.raises(ConfigError, match="WSUPLOAD_BROKER_URL: enqueueing needs the broker and the results in one"):
        Enqueuer(settings, redis_client).enqueue(["/m/a.png"])
    assert redis_client.keys("*") == []
