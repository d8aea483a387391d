"""The marker sweep (RabbitMQ), without a RabbitMQ: its policy, the entered sets, one round after another."""

import json
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest

from tests.unit.test_amqp import SETTINGS, FakePublisher, enqueuer
from wsupload.config.settings import MARKER_TASK_NAME
from wsupload.tasks.recovery import early_acks, markers
from wsupload.tasks.recovery.markers import JUDGE, NOTHING, REPLACE, REPLACE_IF_EMPTY, SEND, WAIT, Entry, Marker
from wsupload.tasks.store import keys
from wsupload.tasks.store.fencing import ClaimAsk
from wsupload.tasks.store.results import ResultStore, cancelled, started, utcnow
from wsupload.tasks.wire import encode

Q = SETTINGS.queue
TIMING = markers.Timing(age=60_000, settle=5_000, timeout=3_600_000)
NOW = 10_000_000


# The policy


@pytest.mark.parametrize(
    ("marker", "oldest", "step"),
    [
        (None, None, NOTHING),  # nothing entered
        (None, NOW - 59_999, NOTHING),  # nothing old enough yet
        (None, NOW - 60_000, SEND),
        (Marker("t", NOW - 1_000), NOW - 90_000, WAIT),  # sent, not met yet
        (Marker("t", NOW - 60_000), NOW - 90_000, REPLACE_IF_EMPTY),  # unmet a while: lost, if the queue is empty
        (Marker("t", NOW - 3_600_000), NOW - 90_000, REPLACE),  # unmet for the timeout: replaced whatever waits
        (Marker("t", NOW - 9_000, seen_at=NOW - 4_999), NOW - 90_000, WAIT),  # met: settling
        (Marker("t", NOW - 9_000, seen_at=NOW - 5_000), NOW - 90_000, JUDGE),
        (Marker("t", NOW - 9_000, seen_at=NOW - 5_000), None, JUDGE),  # judged even if the set emptied since
    ],
)
def test_the_next_step_of_a_queue(marker: Marker | None, oldest: int | None, step: str) -> None:
    assert markers.next_step(marker, oldest, NOW, TIMING) == step


def doc(status: str, worker: str = "w@h", source: str | None = "/m/a.png") -> Any:
    return {"job_id": "j", "status": status, "source": source, "worker": worker}


def test_judge_publishes_only_what_no_one_holds() -> None:
    verdict = markers.judge(
        [
            Entry("queued", doc("queued")),
            Entry("orphan", doc("running"), holder_alive=False),  # its worker's heartbeat record is gone
            Entry("running", doc("running"), holder_alive=True),
            Entry("retrying", doc("retrying"), holder_alive=True),
            Entry("owed", doc("queued"), owed=True),  # the owed sweep's
            Entry("waiting", doc("queued"), in_hand=True),  # in a live worker's prefetch, waiting for a thread
            Entry("ended", doc("succeeded")),
            Entry("cancelled", doc("cancelled")),
            Entry("gone", None),  # document expired
            Entry("sourceless", doc("queued", source=None)),  # nothing to publish it from
        ]
    )
    assert [job for job, _ in verdict.lost] == ["queued", "orphan"]
    assert verdict.held == ["running", "retrying", "owed", "waiting"]
    assert verdict.drop == ["ended", "cancelled", "gone", "sourceless"]


def test_a_marker_hash_is_read_or_is_none() -> None:
    assert markers.read_marker({}) is None
    assert markers.read_marker({b"token": b"t"}) is None
    assert markers.read_marker({b"token": b"t", b"sent_at": b"12"}) == Marker("t", 12)
    assert markers.read_marker({b"token": b"t", b"sent_at": b"12", b"seen_at": b"15"}) == Marker("t", 12, 15)


def test_the_marker_message_is_a_celery_message_of_the_marker_task() -> None:
    message = encode.marker_message(Q, "tok")
    assert (message.routing_key, message.headers["task"], message.headers["id"]) == (Q, MARKER_TASK_NAME, "tok")
    assert json.loads(message.body)[:2] == [[Q, "tok"], {}]


# The entered sets


def entered(client: fakeredis.FakeRedis, queue: str = Q) -> dict[str, float]:
    pairs: list[tuple[bytes, float]] = client.zrange(keys.entered(queue), 0, -1, withscores=True)  # type: ignore[assignment]
    return {job.decode(): score for job, score in pairs}


def test_enqueue_enters_each_job_at_its_publish_deadline_and_its_end_takes_it_out(
    redis_client: fakeredis.FakeRedis,
) -> None:
    publisher = FakePublisher()
    before = redis_client.time()[0]
    jobs = enqueuer(redis_client, publisher).enqueue(["/m/a.png", "/m/b.png"])
    scores = entered(redis_client)
    assert set(scores) == {job.job_id for job in jobs}
    for score in scores.values():  # by when it is on the queue: the owed deadline (WSUPLOAD_AMQP_PUBLISH_GRACE)
        assert (
            (before + SETTINGS.amqp_publish_grace) * 1000 <= score <= (before + 1 + SETTINGS.amqp_publish_grace) * 1000
        )

    store = ResultStore(redis_client, 3600, entered=[keys.entered(Q), keys.entered(SETTINGS.bulk_queue)])
    first = store.get(jobs[0].job_id)
    assert first is not None
    store.save(started(first, utcnow()))  # not an end: it stays
    assert set(entered(redis_client)) == {job.job_id for job in jobs}
    store.save(cancelled(first, utcnow()))
    assert set(entered(redis_client)) == {jobs[1].job_id}


def test_a_terminal_write_that_claims_the_next_job_takes_it_out_too(redis_client: fakeredis.FakeRedis) -> None:
    jobs = enqueuer(redis_client, FakePublisher()).enqueue(["/m/a.png", "/m/b.png"])
    store = ResultStore(redis_client, 3600, entered=[keys.entered(Q)])
    claim = store.claim(jobs[0].job_id)
    first = store.get(jobs[0].job_id)
    assert first is not None
    after = store.save_then_claim(cancelled(first, utcnow()), claim.generation, ClaimAsk(jobs[1].job_id))
    assert after is not None
    assert after.generation == 1
    assert set(entered(redis_client)) == {jobs[1].job_id}


# Rounds


class Rig:
    """A marker sweep over fakeredis with a fake RabbitMQ: what it publishes, and the queue's ready count."""

    def __init__(self, client: fakeredis.FakeRedis) -> None:
        self.client = client
        self.publisher = FakePublisher()
        self.ready = 0
        self.store = ResultStore(client, 3600)
        self.sweep = markers.MarkerSweep(client, self.store, lambda: self.publisher, lambda q: self.ready, TIMING)  # type: ignore[arg-type,return-value]

    def age_entries(self) -> None:
        """Every entry entered long ago."""
        for job in entered(self.client):
            self.client.zadd(keys.entered(Q), {job: 1})

    def marker(self) -> Marker | None:
        return markers.read_marker(self.client.hgetall(keys.marker(Q)))

    def backdate(self, field: str, ms: int) -> None:
        marker = self.marker()
        assert marker is not None
        at = getattr(marker, field)
        self.client.hset(keys.marker(Q), field, str(at - ms))

    def sent_markers(self) -> list[str]:
        return [str(m.headers["id"]) for m in self.publisher.sent if m.headers["task"] == MARKER_TASK_NAME]

    def sent_jobs(self) -> list[str]:
        return [str(m.headers["id"]) for m in self.publisher.sent if m.headers["task"] != MARKER_TASK_NAME]


def test_a_met_marker_publishes_again_what_entered_before_it_and_no_one_holds(
    redis_client: fakeredis.FakeRedis, recoveries: Callable[[str], float]
) -> None:
    rig = Rig(redis_client)
    queued, orphan, held, done, owed, waiting = (
        job.job_id for job in enqueuer(redis_client, FakePublisher()).enqueue([f"/m/{n}.png" for n in range(6)])
    )
    for job, worker in ((orphan, "dead@h"), (held, "alive@h")):
        current = rig.store.get(job)
        assert current is not None
        rig.store.save({**current, "status": "running", "worker": worker})
    # The live worker's heartbeat record: it runs one job and holds another waiting for a thread.
    redis_client.zadd(keys.WORKERS, {"alive@h": 1, "dead@h": 1})  # the dead one's record has expired
    redis_client.set(keys.worker("alive@h"), json.dumps({"name": "alive@h", "jobs": [held], "waiting": [waiting]}))
    current = rig.store.get(done)
    assert current is not None
    rig.store.save(cancelled(current, utcnow()))  # a store without entered sets: as a producer's cancel
    early_acks.OwedSet(redis_client).owe({Q: [owed]}, 300)

    assert rig.sweep.sweep([Q]).sent == ()  # nothing old enough yet
    rig.age_entries()
    assert rig.sweep.sweep([Q]).sent == (Q,)
    (token,) = rig.sent_markers()
    assert rig.sweep.sweep([Q]).sent == ()  # one outstanding at a time
    assert rig.sweep.seen(Q, "another") is False  # a replaced marker's token is ignored
    assert rig.sweep.seen(Q, token) is True
    assert rig.sweep.seen(Q, token) is False  # met once
    assert rig.sweep.sweep([Q]).published == ()  # settling
    rig.backdate("seen_at", TIMING.settle)

    report = rig.sweep.sweep([Q])
    assert sorted(report.published) == sorted([queued, orphan])
    assert sorted(rig.sent_jobs()) == sorted([queued, orphan])
    assert recoveries("swept_back") == 2
    assert report.dropped == 1
    assert rig.marker() is None  # judged: the next round may send another
    scores = entered(redis_client)
    assert set(scores) == {queued, orphan, held, owed, waiting}
    assert min(scores[queued], scores[orphan]) > 1  # re-scored: entered again now
    assert scores[held] == scores[owed] == scores[waiting] == 1


def test_an_unmet_marker_is_replaced_only_when_its_queue_is_empty_or_after_the_timeout(
    redis_client: fakeredis.FakeRedis,
) -> None:
    rig = Rig(redis_client)
    enqueuer(redis_client, FakePublisher()).enqueue(["/m/a.png"])
    rig.age_entries()
    rig.sweep.sweep([Q])
    rig.backdate("sent_at", TIMING.age)
    rig.ready = 100_000  # a backlog ahead of it: it waits among them
    for _ in range(3):
        assert rig.sweep.sweep([Q]) == markers.Report()
    assert len(rig.sent_markers()) == 1
    assert rig.sent_jobs() == []
    rig.ready = 0  # the queue is empty and the marker unmet: it was dropped too
    assert rig.sweep.sweep([Q]).sent == (Q,)
    assert len(rig.sent_markers()) == 2
    rig.ready = 100_000
    rig.backdate("sent_at", TIMING.timeout)
    assert rig.sweep.sweep([Q]).sent == (Q,)
    assert len(set(rig.sent_markers())) == 3
    assert rig.sent_jobs() == []


def test_a_paused_queue_gets_no_marker(redis_client: fakeredis.FakeRedis) -> None:
    rig = Rig(redis_client)
    enqueuer(redis_client, FakePublisher()).enqueue(["/m/a.png"])
    rig.age_entries()
    redis_client.sadd(keys.PAUSED, Q)
    assert rig.sweep.sweep([Q]) == markers.Report()
    redis_client.srem(keys.PAUSED, Q)
    assert rig.sweep.sweep([Q]).sent == (Q,)
