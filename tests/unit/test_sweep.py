"""The lost-message sweep: places in a queue's line, kept by enqueue and the transport, and the sweep that reads them.

fakeredis runs the scripts with real Lua, and a kombu channel of the worker's
transport runs on it: taking a message is kombu's ``_get`` (an RPOP, as BRPOP takes
from the same end) followed by ``QoS.append``, the two steps a Redis kill or a dying
worker can split. A message "lost" is one taken by the first step only. The sweep's
clock is injected: no test sleeps.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
from collections.abc import Callable, Iterator
from queue import Empty
from typing import Any

import fakeredis
import pytest
import redis
from kombu import Connection
from kombu.transport import redis as kombu_redis

from wsupload.config import Settings
from wsupload.tasks.enqueue import Enqueuer
from wsupload.tasks.recovery import job_index
from wsupload.tasks.recovery.lost_sweep import Candidate, Plan, Report, Sweep, jobs_of, plan
from wsupload.tasks.store import keys, results
from wsupload.tasks.store.results import JobDoc, ResultStore
from wsupload.worker import redis_transport

QUEUE, BULK = "q", "q.bulk"
GRACE, INTERVAL = 6.0, 3.0


# The policy: pure.


def doc(status: str = "queued", source: str = "/m/a.png") -> JobDoc:
    return {**results.new_doc("j", source, results.utcnow()), "status": status}


def candidate(job: str, document: JobDoc | None = None, waiting: bool | None = False) -> Candidate:
    return Candidate(job, QUEUE, 1.0, document if document is not None else doc(), waiting)


def test_the_plan_drops_jobs_that_ended_or_have_no_document() -> None:
    finished = {"status": "succeeded", "result": {"download_url": "https://x/y"}}
    ended = candidate("done", results.coerce_doc(finished, "done", results.utcnow()))
    gone = Candidate("gone", QUEUE, 1.0, None, False)
    nameless = candidate("nameless", doc(source=""))  # a foreign producer's document: no message can be built
    decided = plan([ended, gone, nameless], {"done": 5.0}, now=10.0, grace=GRACE, complete=True)
    assert [c.job_id for c in decided.drop] == ["done", "gone", "nameless"]
    assert (decided.suspect, decided.redeliver, decided.forget) == ([], [], [])


def test_the_plan_suspects_first_then_redelivers_after_the_grace() -> None:
    lost = candidate("lost")
    assert plan([lost], {}, now=100.0, grace=GRACE, complete=True).suspect == ["lost"]
    assert plan([lost], {"lost": 100.0}, now=105.9, grace=GRACE, complete=True).redeliver == []
    assert plan([lost], {"lost": 100.0}, now=106.0, grace=GRACE, complete=True).redeliver == [(lost, 6.0)]
    for status in ("running", "retrying"):  # a worker died with it, its copy was restored, then lost
        assert plan([candidate("lost", doc(status))], {"lost": 0.0}, now=60.0, grace=GRACE, complete=True).redeliver


def test_the_plan_leaves_waiting_jobs_alone_and_forgets_suspects_accounted_for() -> None:
    waiting = candidate("waiting", waiting=True)
    unknown = candidate("unknown", waiting=None)  # the front of its line was too long to read
    suspects = {"waiting": 0.0, "unknown": 0.0, "taken": 0.0}
    decided = plan([waiting, unknown], suspects, now=60.0, grace=GRACE, complete=True)
    assert (decided.drop, decided.suspect, decided.redeliver) == ([], [], [])
    assert sorted(decided.forget) == ["taken", "waiting"]


def test_a_sweep_that_saw_only_part_of_a_line_forgets_no_suspect_it_did_not_meet() -> None:
    decided = plan([candidate("seen")], {"beyond": 0.0}, now=60.0, grace=GRACE, complete=False)
    assert decided.forget == []


def test_a_queued_message_names_its_jobs_only_if_it_is_an_upload() -> None:
    from wsupload.tasks.wire import encode

    assert jobs_of(encode.upload_message("j1", "/a.png", QUEUE)) == ["j1"]
    assert jobs_of(encode.upload_many_message([("j1", "/a.png"), ("j2", "/b.png")], QUEUE)) == ["j1", "j2"]
    other = json.loads(encode.upload_message("j1", "/a.png", QUEUE))
    other["headers"]["task"] = "wsupload.callback"
    assert jobs_of(json.dumps(other)) == []
    forged = json.loads(encode.upload_many_message([("j1", "/a.png")], QUEUE))
    forged["headers"]["wsupload_jobs"] = ["j1", "no spaces allowed"]
    assert jobs_of(json.dumps(forged)) == []
    assert jobs_of(b"garbage{") == []
    assert jobs_of(b"[1, 2]") == []


# Places, sweeps and the transport on one fakeredis server.


class World:
    """A Redis, a producer, a worker's channel, and sweeps with a clock the test turns."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        server = fakeredis.FakeServer()
        self.redis = fakeredis.FakeRedis(server=server)
        settings = Settings.from_env({"WSUPLOAD_QUEUE": QUEUE, "WSUPLOAD_BULK_QUEUE": BULK})
        self.enqueuer = Enqueuer(settings, self.redis)
        self.store = ResultStore(self.redis, 3600)
        self.now = 1_000.0
        # fakeredis cannot read a script's shebang line (allow-oom); the script is the same.
        monkeypatch.setattr(redis_transport, "PUT_BACK", job_index.PUSH)

        class FakeChannel(redis_transport.Channel):
            def _create_client(self, asynchronous: bool = False) -> Any:
                return fakeredis.FakeRedis(server=server)

        class FakeTransport(redis_transport.Transport):
            Channel = FakeChannel

        self.connection = Connection("redis://127.0.0.1:1/0", transport=FakeTransport)
        self.channel: Any = self.connection.channel()

    def sweep(self, at: float | None = None, owner: str = "w1") -> Report | None:
        """One sweep at ``at`` seconds past the start; the lock of the previous one is let go first."""
        self.redis.delete(keys.sweep_lock(QUEUE), keys.sweep_lock(BULK))
        return self.sweeper(owner, at).sweep()

    def sweeper(self, owner: str = "w1", at: float | None = None) -> Sweep:
        now = self.now + (at or 0.0)
        return Sweep(
            self.redis, self.store, (QUEUE, BULK), grace=GRACE, interval=INTERVAL, owner=owner, clock=lambda: now
        )

    def enqueue(self, *names: str) -> list[str]:
        return [job.job_id for job in self.enqueuer.enqueue([f"/m/{name}.png" for name in names])]

    def brpop(self, queue: str = QUEUE) -> Any:
        """The first step of a delivery: the message is off the list, not yet recorded."""
        return self.channel.Message(self.channel._get(queue), channel=self.channel)

    def take(self, queue: str = QUEUE) -> Any:
        """Both steps: off the list and recorded as unacked (and out of the line)."""
        message = self.brpop(queue)
        self.channel.qos.append(message, message.delivery_tag)
        return message

    def line(self, queue: str = QUEUE) -> list[tuple[str, float]]:
        """(job, place) of each message in ``queue``, front first (the order workers take them)."""
        out = []
        for raw in reversed(self.redis.lrange(queue, 0, -1)):
            (job,) = jobs_of(raw)
            place = self.redis.zscore(keys.pending(queue), job)
            assert place is not None, f"job {job} waits in the line without a place"
            out.append((job, place))
        return out

    def tags(self, queue: str = QUEUE) -> list[str]:
        return [json.loads(raw)["properties"]["delivery_tag"] for raw in self.redis.lrange(queue, 0, -1)]

    def pending(self, queue: str = QUEUE) -> dict[str, float]:
        scored: Any = self.redis.zrange(keys.pending(queue), 0, -1, withscores=True)
        return {member.decode(): score for member, score in scored}

    def last_taken(self, queue: str = QUEUE) -> float | None:
        value = self.redis.get(keys.last_taken(queue))
        return None if value is None else float(value)

    def suspects(self) -> set[str]:
        return {results.text(job) for job in self.redis.hkeys(keys.suspects(QUEUE))}

    def finish(self, job_id: str) -> None:
        document = self.store.get(job_id)
        assert document is not None
        self.store.save(results.succeeded(document, {"download_url": "https://x/y", "size": 1}, results.utcnow(), 60))


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    w = World(monkeypatch)
    yield w
    w.connection.release()


def ascending(line: list[tuple[str, float]]) -> bool:
    return all(a[1] < b[1] for a, b in itertools.pairwise(line))


def test_places_ascend_in_the_order_workers_take_jobs_through_restores_and_put_backs(world: World) -> None:
    a, b, c = world.enqueue("a", "b", "c")
    assert world.line() == [(a, 1), (b, 2), (c, 3)]

    first = world.take()
    assert (world.pending(), world.last_taken()) == ({b: 2, c: 3}, 1)
    world.channel.qos.restore_by_tag(first.delivery_tag)  # its delivery expired: back to the front
    assert [job for job, _ in world.line()] == [a, b, c]
    assert ascending(world.line())

    again = world.take()
    world.channel.qos.reject(again.delivery_tag, requeue=True)  # to the back of the line
    assert [job for job, _ in world.line()] == [b, c, a]
    assert ascending(world.line())

    untracked = world.brpop()  # BRPOP took b; Redis would not record it: put back at the front
    world.channel.put_back(untracked._raw)
    (d,) = world.enqueue("d")
    assert [job for job, _ in world.line()] == [b, c, a, d]
    assert ascending(world.line())
    assert world.last_taken() == 1  # the highest place taken; b was never recorded as taken


def test_taking_a_job_from_the_front_never_lowers_the_highest_place_taken(world: World) -> None:
    c = world.enqueue("a", "b", "c")[-1]
    world.take()
    second = world.take()
    world.channel.qos.restore_by_tag(second.delivery_tag)
    world.take()  # b again, from its place at the front, below a's
    assert world.last_taken() == 2
    assert world.line() == [(c, 3)]


def test_a_message_redis_would_not_record_goes_back_to_the_front_with_its_place(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = world.enqueue("a", "b")

    def refused(*args: Any) -> None:
        raise redis.exceptions.ReadOnlyError("You can't write against a read only replica.")

    monkeypatch.setattr(redis_transport.QoS, "_record", refused)
    message = world.brpop()
    with pytest.raises(Empty):  # kombu's "nothing delivered"
        world.channel.qos.append(message, message.delivery_tag)
    assert [job for job, _ in world.line()] == [a, b]
    assert ascending(world.line())
    assert message.delivery_tag not in world.tags()


def test_every_copy_pushed_again_has_a_new_delivery_tag(world: World) -> None:
    world.enqueue("a")
    seen = set(world.tags())
    ways: list[Callable[[Any], None]] = [
        lambda m: world.channel.qos.restore_by_tag(m.delivery_tag),  # an expired delivery
        lambda m: world.channel.qos.reject(m.delivery_tag, requeue=True),  # a requeue
        lambda m: world.channel.put_back(m._raw),  # a message Redis would not record
    ]
    for push_again in ways:
        message = world.take()
        push_again(message)
        (tag,) = world.tags()
        assert tag not in seen
        seen.add(tag)
        assert json.loads(world.redis.lindex(QUEUE, 0) or b"")["headers"]["id"] == message.headers["id"]


def test_other_tasks_are_pushed_and_taken_without_a_place(world: World) -> None:
    world.redis.lpush(QUEUE, other_task_message())
    message = world.take()
    world.channel.qos.restore_by_tag(message.delivery_tag)
    assert world.redis.llen(QUEUE) == 1
    assert world.pending() == {}
    assert world.last_taken() is None


def other_task_message() -> str:
    from wsupload.tasks.wire import encode

    envelope = json.loads(encode.upload_message("cb-1", "/a.png", QUEUE))
    envelope["headers"]["task"] = "wsupload.callback"
    return json.dumps(envelope)


def test_a_message_taken_and_never_recorded_is_back_on_its_queue_after_the_grace_and_only_once(
    world: World, caplog: pytest.LogCaptureFixture, recoveries: Callable[[str], float]
) -> None:
    a, _, c = world.enqueue("a", "b", "c")
    world.redis.rpop(QUEUE)  # a: BRPOP took it, then Redis was killed before the worker recorded it
    world.take()  # b
    caplog.set_level(logging.WARNING)

    assert world.sweep(at=0) == Report(candidates=1, suspected=1)
    assert world.sweep(at=GRACE - 0.1) == Report(candidates=1)
    assert world.sweep(at=GRACE) == Report(candidates=1, redelivered=(a,))
    assert [job for job, _ in world.line()] == [c, a]
    assert ascending(world.line())
    assert world.suspects() == set()
    for later in (GRACE + INTERVAL, 10 * GRACE):
        assert world.sweep(at=later) == Report()
    assert [job for job, _ in world.line()] == [c, a]
    assert recoveries("swept_back") == 1  # the metric operators watch, once

    (line,) = [r for r in caplog.records if r.name == "wsupload.tasks.recovery.lost_sweep"]
    assert line.levelname == "WARNING"
    assert line.getMessage() == (
        f"sweep: job {a} was in no queue, no worker's hands and had no outcome for 6 s or more; it is back on queue q"
    )


def test_a_redelivered_message_is_the_job_as_enqueued(world: World) -> None:
    options = {"callback_url": "https://hooks.example/x"}
    batch = world.enqueuer.enqueue_batch(["/m/a.png", "/m/b.png"], options=options)
    original = world.redis.lindex(BULK, -1)
    world.redis.rpop(BULK)
    world.take(BULK)
    world.sweep(at=0)
    world.sweep(at=GRACE)
    again = world.redis.lindex(BULK, 0)
    assert original is not None
    assert again is not None
    expected = [[batch.jobs[0].job_id, "/m/a.png"], {"options": {"dedup": True, **options}}]
    assert body(again) == body(original) == expected
    assert json.loads(again)["headers"]["id"] == batch.jobs[0].job_id


def body(raw: bytes | str) -> list[Any]:
    args, kwargs, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
    return [args, kwargs]


def test_jobs_waiting_in_the_line_are_never_put_back(world: World) -> None:
    world.enqueue("a", "b", "c")
    world.take()
    behind_the_last_taken = world.line()
    for at in (0, GRACE, 100 * GRACE):
        assert world.sweep(at=at) == Report()
    assert world.line() == behind_the_last_taken


def test_jobs_restored_to_the_front_wait_there_unsuspected(world: World) -> None:
    jobs = world.enqueue(*(str(n) for n in range(30)))
    taken = [world.take() for _ in range(20)]
    world.take()  # the highest place taken is now the 21st
    for message in taken:  # every delivery expired: more at the front than the sweep's first read
        world.channel.qos.restore_by_tag(message.delivery_tag)
    before = world.line()
    assert sorted(job for job, _ in before) == sorted(jobs[:20] + jobs[21:])
    assert ascending(before)
    for at in (0, GRACE, 100 * GRACE):
        report = world.sweep(at=at)
        assert report is not None
        assert (report.candidates, report.suspected, report.redelivered) == (20, 0, ())
    assert world.line() == before
    assert world.suspects() == set()


def test_a_suspect_that_turns_up_taken_is_forgotten(world: World) -> None:
    world.enqueue("a")
    message = world.brpop()  # taken, not recorded yet: the line is empty, every placed job is looked at
    assert world.sweep(at=0) == Report(candidates=1, suspected=1)
    world.channel.qos.append(message, message.delivery_tag)  # recorded after all
    assert world.sweep(at=GRACE) == Report()
    assert world.suspects() == set()
    assert world.redis.llen(QUEUE) == 0


def test_a_lost_job_alone_on_its_queue_is_found_too(world: World) -> None:
    (a,) = world.enqueue("a")
    world.redis.rpop(QUEUE)  # nothing was ever recorded as taken from this queue
    world.sweep(at=0)
    assert world.sweep(at=GRACE) == Report(candidates=1, redelivered=(a,))
    assert world.line() == [(a, 2)]


def test_finished_or_forgotten_jobs_leave_the_records_of_the_line(world: World) -> None:
    a, b, _ = world.enqueue("a", "b", "c")
    world.redis.rpop(QUEUE)
    world.redis.rpop(QUEUE)
    world.take()  # c: a and b were lost
    world.sweep(at=0)
    world.finish(a)  # its worker did finish; only the record of its delivery was lost
    world.redis.delete(results.result_key(b))  # its document expired
    assert world.sweep(at=GRACE) == Report(candidates=2, dropped=2)
    assert (world.pending(), world.suspects(), world.redis.llen(QUEUE)) == ({}, set(), 0)


def test_two_sweepers_never_both_put_a_job_back(world: World) -> None:
    a, _ = world.enqueue("a", "b")
    world.redis.rpop(QUEUE)
    world.take()
    world.sweep(at=0)

    first, second = world.sweeper("w1", at=GRACE), world.sweeper("w2", at=GRACE)
    world.redis.delete(keys.sweep_lock(QUEUE), keys.sweep_lock(BULK))  # the last sweep's interval is over
    assert first.sweep() == Report(candidates=1, redelivered=(a,))
    assert second.sweep() is None  # the lock: one sweep per interval across the fleet
    assert world.redis.get(keys.sweep_lock(QUEUE)) == b"w1"
    assert 0 < world.redis.pttl(keys.sweep_lock(QUEUE)) <= INTERVAL * 1000

    # Sweeps that overlap anyway (the lock expired mid-sweep): the one that read the old place does nothing.
    stale = Candidate(a, QUEUE, 1.0, world.store.get(a), waiting=False)
    assert second._carry_out(QUEUE, Plan(redeliver=[(stale, GRACE)]), world.now, 1) == Report(candidates=1)
    assert [job for job, _ in world.line()] == [a]


def test_a_sweep_handles_at_most_its_limit_per_queue(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("wsupload.tasks.recovery.lost_sweep.LIMIT", 2)
    jobs = world.enqueue("a", "b", "c", "d")
    for _ in jobs:
        world.redis.rpop(QUEUE)
    assert world.sweep(at=0) == Report(candidates=2, suspected=2)


def test_leases_are_stamped_and_judged_by_redis_clock_not_the_workers(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.enqueue("a")
    message = world.take()
    stamped = world.redis.zscore("unacked_index", message.delivery_tag)
    assert stamped is not None
    assert abs(stamped - redis_transport.redis_now(world.redis)) < 60
    # A worker whose clock runs an hour ahead scans for expired leases: kombu would judge by
    # its clock and hand the running job out; the scan reads Redis's clock instead.
    monkeypatch.setattr(kombu_redis, "time", lambda: stamped + 7200)
    world.channel.qos.restore_visible(num=10, interval=1)
    assert world.redis.zscore("unacked_index", message.delivery_tag) == stamped
    assert world.tags() == []  # nothing went back on the queue
    # By Redis's clock the lease does run out: then it is restored.
    monkeypatch.setattr(redis_transport, "redis_now", lambda client: stamped + 7200)  # past its lease (3600 s here)
    world.channel.qos.restore_visible(num=10, interval=1)
    assert world.redis.zscore("unacked_index", message.delivery_tag) is None
    assert len(world.tags()) == 1


def test_a_bulk_messages_jobs_leave_the_line_together_and_a_lost_ones_come_back_each_on_its_own(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsupload.tasks import enqueue as enqueue_module

    monkeypatch.setattr(enqueue_module, "SPREAD", 1)
    env = {"WSUPLOAD_QUEUE": QUEUE, "WSUPLOAD_BULK_QUEUE": BULK, "WSUPLOAD_JOBS_PER_MESSAGE": "2"}
    world.enqueuer.settings = Settings.from_env(env)
    a, b, c, d, e, f = (job.job_id for job in world.enqueuer.enqueue_batch([f"/m/{n}.png" for n in "abcdef"]).jobs)
    assert world.pending(BULK) == {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6}

    first = world.take(BULK)
    assert (world.pending(BULK), world.last_taken(BULK)) == ({c: 3, d: 4, e: 5, f: 6}, 2)
    world.channel.qos.restore_by_tag(first.delivery_tag)  # expired: back to the front, both jobs one place
    assert world.pending(BULK) == {a: 1, b: 1, c: 3, d: 4, e: 5, f: 6}
    assert world.sweep(at=0) is not None
    assert world.redis.hkeys(keys.suspects(BULK)) == []  # waiting at the front: accounted for

    world.take(BULK)
    world.redis.rpop(BULK)  # c and d: BRPOP took their message, Redis was killed before it was recorded
    world.take(BULK)  # e and f
    world.sweep(at=0)
    report = world.sweep(at=GRACE)
    assert report is not None
    assert sorted(report.redelivered) == sorted([c, d])
    assert sorted(job for raw in world.redis.lrange(BULK, 0, -1) for job in jobs_of(raw)) == sorted([c, d])
    assert {json.loads(raw)["headers"]["task"] for raw in world.redis.lrange(BULK, 0, -1)} == {"wsupload.upload"}
