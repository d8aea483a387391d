"""RabbitMQ as the broker, without a RabbitMQ: the app's settings, the wire, owed jobs, confirms, leases, sweep."""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest

from wsupload.config import Settings
from wsupload.config.settings import UPLOAD_TASK_NAME
from wsupload.errors import EnqueueError, PublishError
from wsupload.tasks.enqueue import Enqueuer
from wsupload.tasks.recovery import early_acks
from wsupload.tasks.recovery.early_ack_sweep import OwedSweep, split
from wsupload.tasks.recovery.lease import JobLease, LeaseBook
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import ResultStore
from wsupload.tasks.wire import encode
from wsupload.tasks.wire.amqp_publisher import _Confirms
from wsupload.worker import redis_transport
from wsupload.worker.amqp_leases import AmqpLeases, tag_of
from wsupload.worker.app import HEARTBEAT, create_app

URL = "amqp://guest:pw@rabbit:5672/vh"
SETTINGS = Settings.from_env({"REDIS_URL": "redis://r:6379/0", "WSUPLOAD_BROKER_URL": URL})


# The app


def test_the_app_uses_quorum_queues_confirms_a_heartbeat_and_no_redis_transport_options() -> None:
    app = create_app(SETTINGS)
    conf = app.conf
    queues = {queue.name: queue.queue_arguments for queue in conf.task_queues}
    assert queues == {SETTINGS.queue: {"x-queue-type": "quorum"}, SETTINGS.bulk_queue: {"x-queue-type": "quorum"}}
    assert all(queue.durable for queue in conf.task_queues)
    assert conf.broker_transport_options == {"confirm_publish": True}
    assert conf.broker_heartbeat == HEARTBEAT
    assert conf.worker_detect_quorum_queues is True
    assert (conf.task_acks_late, conf.worker_prefetch_multiplier) == (True, 1)
    with app.connection_for_write() as connection:  # no I/O until a channel is opened
        assert connection.transport_cls in ("amqp", "pyamqp")
        assert not isinstance(connection.transport, redis_transport.Transport)


def test_the_worker_consumer_leaves_out_celerys_native_delayed_delivery() -> None:
    from wsupload.worker.consumer import Consumer

    assert not any(step.endswith(":DelayedDelivery") for step in Consumer.Blueprint.default_steps)
    assert any(step.endswith(":Tasks") for step in Consumer.Blueprint.default_steps)


# The wire


@pytest.mark.parametrize("options", [None, {"dedup": True, "callback_url": "https://hooks.test/x"}])
def test_the_amqp_message_is_what_send_task_publishes(options: dict[str, Any] | None) -> None:
    app = create_app(SETTINGS)
    published: list[tuple[Any, dict[str, Any]]] = []

    class Recorder:  # stands in for kombu's Producer: what Celery asks it to publish
        connection = app.connection_for_write()
        channel = serializer = exchange = None

        def publish(self, body: Any, **kwargs: Any) -> None:
            published.append((body, kwargs))

    kwargs = {"options": options} if options else {}
    recorder: Any = Recorder()
    app.send_task(UPLOAD_TASK_NAME, args=["j1", "/m/a.png"], kwargs=kwargs, task_id="j1", queue="q", producer=recorder)
    ((body, sent),) = published
    ours = encode.amqp_message("j1", "/m/a.png", "q", options)

    assert json.loads(ours.body) == json.loads(json.dumps(body))
    assert (sent["exchange"], sent["routing_key"], sent["serializer"]) == ("", ours.routing_key, "json")
    assert ours.properties["content_type"] == "application/json"
    assert sent["delivery_mode"] == ours.properties["delivery_mode"] == 2
    assert sent["correlation_id"] == ours.properties["correlation_id"] == "j1"
    assert set(ours.properties) >= {"reply_to"}
    for key, value in ours.headers.items():
        assert key in sent["headers"], key
        if key not in {"origin", "argsrepr", "kwargsrepr"}:
            assert value == sent["headers"][key], key


# Owed jobs


def test_early_acknowledgement_comes_at_half_the_consumer_timeout() -> None:
    assert early_acks.early_ack_after(1800) == 900
    assert early_acks.early_ack_after(10) == 5


def test_owed_entries_are_added_renewed_only_while_present_and_claimed_once_due(
    redis_client: fakeredis.FakeRedis,
) -> None:
    book = early_acks.OwedSet(redis_client)
    book.owe({"q": ["a", "b"]}, 0)
    book.owe({"q": ["c"]}, 100)
    book.owe({"q": ["gone"]}, 100, mode="XX")  # renewing what is not owed adds nothing
    assert redis_client.zcard(keys.owed("q")) == 3

    due = book.claim_due("q", grace=50, limit=10)
    assert sorted(due.jobs) == ["a", "b"]
    assert book.claim_due("q", grace=50, limit=10).jobs == []  # moved on: a second sweep does not take them
    book.owe({"q": ["b"]}, 200, mode="XX")  # b's worker renewed it meanwhile: it still runs there
    assert book.remove_if(due, ["a", "b"]) == 1
    assert sorted(redis_client.zrange(keys.owed("q"), 0, -1)) == [b"b", b"c"]


def test_the_early_ack_registry_pops_once() -> None:
    early = early_acks.EarlyAcks()
    early.mark("amqp:j", "j", "q")
    assert early.get("amqp:j") == early_acks.Early("j", "q")
    assert early.pop("amqp:j") == early_acks.Early("j", "q")
    assert early.pop("amqp:j") is None
    assert early.pop(None) is None


# Publisher confirms


class FakeChannel:
    def __init__(self) -> None:
        self.events: dict[str, set[Any]] = {"basic_ack": set(), "basic_nack": set(), "basic_return": set()}
        self.published: list[str] = []

    def confirm_select(self) -> None:
        pass

    def basic_publish(self, message: Any, exchange: str, routing_key: str, mandatory: bool) -> None:
        assert (exchange, mandatory) == ("", True)
        self.published.append(routing_key)


@dataclass
class FakeConnection:
    """Confirms what was published when drained: each ack as RabbitMQ may send them (singles, or ``multiple``)."""

    channel: FakeChannel
    answers: list[tuple[str, int, bool]] = field(default_factory=list)
    frame_writer: Any = None
    transport: Any = None
    frame_max: int = 131072

    def drain_events(self, timeout: float) -> None:
        if not self.answers:
            raise TimeoutError
        kind, tag, multiple = self.answers.pop(0)
        for callback in list(self.channel.events[kind]):
            callback(tag, multiple)


class Sink:
    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1


def confirms(answers: list[tuple[str, int, bool]]) -> tuple[_Confirms, FakeChannel, Sink]:
    channel, sink = FakeChannel(), Sink()
    connection = FakeConnection(channel, answers, transport=sink)
    return _Confirms(connection, channel), channel, sink  # type: ignore[arg-type]


def messages(n: int) -> list[encode.AmqpMessage]:
    return [encode.amqp_message(f"j{i}", f"/m/{i}.png", "q") for i in range(n)]


def test_a_batch_waits_once_for_its_confirms_in_any_grouping() -> None:
    confirmer, channel, sink = confirms([("basic_ack", 2, False), ("basic_ack", 3, True), ("basic_ack", 1, False)])
    confirmer.publish_all(messages(3), batch=3)
    assert channel.published == ["q", "q", "q"]
    assert confirmer.confirmed == 3
    assert sink.writes == 1  # the batch written at once (this fake channel writes no frames of its own)


def test_a_nack_or_a_silent_broker_is_a_publish_error() -> None:
    confirmer, _, _ = confirms([("basic_nack", 1, False)])
    with pytest.raises(PublishError, match="refused"):
        confirmer.publish_all(messages(1), batch=10)
    confirmer, _, _ = confirms([("basic_ack", 1, False)])
    with pytest.raises(PublishError, match="confirmed 1 of 2 messages"):
        confirmer.publish_all(messages(2), batch=10)


# Enqueue


class FakePublisher:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sent: list[encode.AmqpMessage] = []

    def publish(self, sent: list[encode.AmqpMessage]) -> None:
        if self.fail:
            raise PublishError("RabbitMQ: ConnectionRefusedError: [Errno 111] Connection refused")
        self.sent += sent


def owed_in(client: fakeredis.FakeRedis, queue: str) -> list[str]:
    return [job.decode() for job in client.zrange(keys.owed(queue), 0, -1) if isinstance(job, bytes)]


def enqueuer(client: fakeredis.FakeRedis, publisher: FakePublisher) -> Enqueuer:
    made = Enqueuer(SETTINGS, client)
    made.publisher = lambda: publisher  # type: ignore[method-assign,assignment,return-value]
    return made


def test_enqueue_on_rabbitmq_commits_publishes_and_leaves_nothing_owed(redis_client: fakeredis.FakeRedis) -> None:
    publisher = FakePublisher()
    batch = enqueuer(redis_client, publisher).enqueue_batch([f"/m/{i}.png" for i in range(2500)])  # two chunks
    assert [m.headers["id"] for m in publisher.sent] == [job.job_id for job in batch.jobs]
    assert {m.routing_key for m in publisher.sent} == {SETTINGS.bulk_queue}
    assert redis_client.zcard(keys.owed(SETTINGS.bulk_queue)) == 0
    assert redis_client.llen(SETTINGS.bulk_queue) == 0  # no Redis message
    store = ResultStore(redis_client, 3600)
    docs = store.get_many([job.job_id for job in batch.jobs])
    assert all(doc is not None and doc["status"] == "queued" for doc in docs)
    assert redis_client.ttl(keys.result(batch.jobs[0].job_id)) > 900  # the staged chunk made permanent
    assert redis_client.hget(keys.batch(batch.batch_id), "total") == b"2500"


class RenewingPublisher(FakePublisher):
    """A worker takes the first job while the call still publishes, acknowledges it early and owes it anew."""

    def __init__(self, client: fakeredis.FakeRedis) -> None:
        super().__init__()
        self.client = client

    def publish(self, sent: list[encode.AmqpMessage]) -> None:
        super().publish(sent)
        early_acks.OwedSet(self.client).owe({sent[0].routing_key: [str(sent[0].headers["id"])]}, 300)


def test_enqueue_clears_only_its_own_debt_not_a_workers_early_ack(redis_client: fakeredis.FakeRedis) -> None:
    jobs = enqueuer(redis_client, RenewingPublisher(redis_client)).enqueue(["/m/a.png", "/m/b.png"])
    assert owed_in(redis_client, SETTINGS.queue) == [jobs[0].job_id]


def test_a_failed_publish_leaves_the_jobs_queued_and_owed_and_says_so(redis_client: fakeredis.FakeRedis) -> None:
    with pytest.raises(EnqueueError) as caught:
        enqueuer(redis_client, FakePublisher(fail=True)).enqueue(["/m/a.png", "/m/b.png"])
    error = caught.value
    assert error.queued
    assert not error.in_doubt
    assert str(error) == (
        "jobs queued but not published: RabbitMQ: ConnectionRefusedError: [Errno 111] Connection refused; the"
        " workers' sweep publishes 2 jobs within WSUPLOAD_AMQP_PUBLISH_GRACE (60 s) of now"
    )
    assert set(owed_in(redis_client, SETTINGS.queue)) == {job.job_id for job in error.jobs}


# The owed sweep


def test_split_forgets_ended_and_missing_jobs() -> None:
    docs: list[Any] = [None, {"status": "succeeded", "source": "/a"}, {"status": "running", "source": "/b"}]
    ended, live = split(["gone", "done", "live"], docs)
    assert ended == ["gone", "done"]
    assert [job for job, _ in live] == ["live"]


def test_the_sweep_publishes_due_jobs_from_their_documents_and_clears_them(
    redis_client: fakeredis.FakeRedis, recoveries: Callable[[str], float]
) -> None:
    publisher = FakePublisher(fail=True)
    with pytest.raises(EnqueueError):
        enqueuer(redis_client, publisher).enqueue(["/m/a.png"], options={"dedup": True})
    (job,) = owed_in(redis_client, SETTINGS.queue)
    redis_client.zadd(keys.owed(SETTINGS.queue), {job: 0})  # its grace has passed
    store = ResultStore(redis_client, 3600)
    sweep = OwedSweep(redis_client, store, [SETTINGS.queue], lambda: publisher, retry=3, interval=1)  # type: ignore[arg-type,return-value]

    with pytest.raises(PublishError):  # RabbitMQ still away: the job stays owed, due again later
        sweep.sweep()
    assert redis_client.zscore(keys.owed(SETTINGS.queue), job) is not None
    assert recoveries("swept_back") == 0
    redis_client.zadd(keys.owed(SETTINGS.queue), {job: 0})
    redis_client.delete(keys.owed_lock(SETTINGS.queue))
    publisher.fail = False
    report = sweep.sweep()
    assert report is not None
    assert report.published == (job,)
    assert recoveries("swept_back") == 1
    ((message),) = publisher.sent
    assert (message.headers["id"], json.loads(message.body)[1]) == (job, {"options": {"dedup": True}})
    assert redis_client.zcard(keys.owed(SETTINGS.queue)) == 0


# The worker's AMQP leases


@dataclass
class Req:
    id: str
    received_at: float
    name: str = UPLOAD_TASK_NAME
    acknowledged: bool = False
    delivery_info: dict[str, Any] = field(default_factory=lambda: {"routing_key": "q"})
    args: list[Any] = field(default_factory=list)
    """Empty: the job is the task id, as the wire contract has it."""
    kwargs: dict[str, Any] = field(default_factory=dict)

    requeued: bool = False

    def acknowledge(self) -> None:
        self.acknowledged = True

    def reject(self, requeue: bool = False) -> None:
        self.acknowledged, self.requeued = True, requeue


def leases(
    client: fakeredis.FakeRedis,
    requests: list[Req],
    book: LeaseBook,
    now: float,
    starts: early_acks.Starts | None = None,
) -> AmqpLeases:
    return AmqpLeases(
        client,
        1.0,
        lease=6.0,
        early_after=900,
        book=book,
        requests=lambda: requests,
        early=early_acks.EarlyAcks(),
        starts=starts or running(requests),
    )


def running(requests: list[Req]) -> early_acks.Starts:
    """Every request started by a thread (the case of a job running long)."""
    starts = early_acks.Starts()
    for request in requests:
        starts.begin(tag_of(request))
    return starts


def test_a_message_held_half_the_consumer_timeout_is_owed_then_acknowledged(
    redis_client: fakeredis.FakeRedis,
) -> None:
    import time

    now = time.monotonic()
    old, young = Req("old", now - 901), Req("young", now - 10)
    book = LeaseBook()
    renewer = leases(redis_client, [old, young], book, now)
    renewer.renew()
    assert (old.acknowledged, young.acknowledged) == (True, False)
    assert redis_client.zrange(keys.owed("q"), 0, -1) == [b"old"]
    assert renewer.early.get(tag_of(old)) == early_acks.Early("old", "q")
    first = redis_client.zscore(keys.owed("q"), "old")
    renewer.renew()  # still held and waiting (no lease yet): renewed
    assert redis_client.zscore(keys.owed("q"), "old") >= first  # type: ignore[operator]


def test_a_hung_job_is_acknowledged_and_its_owed_entry_left_to_expire(redis_client: fakeredis.FakeRedis) -> None:
    import time

    now = time.monotonic()
    hung = Req("hung", now - 5)
    book = LeaseBook()
    book.add(JobLease("hung", tag_of(hung), grace=1.0, clock=lambda: now - 100))  # silent for ~100 s
    renewer = leases(redis_client, [hung], book, now)
    renewer.renew()
    assert hung.acknowledged
    first = redis_client.zscore(keys.owed("q"), "hung")
    assert first is not None
    renewer.renew()
    assert redis_client.zscore(keys.owed("q"), "hung") == first  # not renewed: the sweep takes it a lease later


def test_a_message_whose_task_id_is_not_its_job_id_is_owed_and_renewed_by_its_job_id(
    redis_client: fakeredis.FakeRedis,
) -> None:
    import time

    from wsupload.tasks.upload import delivery_tag

    now = time.monotonic()
    # Celery's send_task without task_id: a uuid of its own, the job in args[0]
    sent = Req("celery-uuid-1", now - 901, args=["job-1", "/m/a.png"])
    book = LeaseBook()
    book.add(JobLease("job-1", tag_of(sent), grace=6.0))  # running: the task's lease, under the task's key
    renewer = leases(redis_client, [sent], book, now)
    renewer.renew()
    assert sent.acknowledged
    assert redis_client.zrange(keys.owed("q"), 0, -1) == [b"job-1"]  # the sweep looks the document up by it
    assert renewer.early.get(tag_of(sent)) == early_acks.Early("job-1", "q")
    # the task finds its delivery under the same key as the worker's books
    context = type("Context", (), {"id": "celery-uuid-1", "properties": {}})()
    assert delivery_tag(context, "job-1", amqp=True) == tag_of(sent)


def test_two_deliveries_of_one_job_keep_their_own_early_ack_records(redis_client: fakeredis.FakeRedis) -> None:
    import time

    now = time.monotonic()
    first = Req("task-a", now - 901, args=["job-1", "/m/a.png"])
    second = Req("task-b", now - 901, args=["job-1", "/m/a.png"])
    book = LeaseBook()
    renewer = leases(redis_client, [first, second], book, now)
    renewer.renew()
    assert tag_of(first) != tag_of(second)
    assert renewer.early.pop(tag_of(first)) == early_acks.Early("job-1", "q")
    assert renewer.early.get(tag_of(second)) == early_acks.Early("job-1", "q")  # the first one's end left it alone


def test_a_message_still_waiting_for_a_thread_is_handed_back_not_acknowledged_early(
    redis_client: fakeredis.FakeRedis,
) -> None:
    import time

    now = time.monotonic()
    running, waiting = Req("running", now - 901), Req("waiting", now - 901)
    starts = early_acks.Starts()
    assert starts.begin(tag_of(running))  # a thread runs it
    renewer = leases(redis_client, [running, waiting], LeaseBook(), now, starts)
    renewer.renew()
    assert (running.acknowledged, running.requeued) == (True, False)  # acknowledged early, owed
    assert (waiting.acknowledged, waiting.requeued) == (True, True)  # back to its queue
    assert redis_client.zrange(keys.owed("q"), 0, -1) == [b"running"]
    assert renewer.early.get(tag_of(waiting)) is None
    assert not starts.begin(tag_of(waiting))  # when a thread finally takes it, the task skips it
    assert starts.begin(tag_of(waiting))  # once: a later delivery of it runs


CALLBACK = {"callback_url": "https://hooks.test/done", "dedup": True}


def acked_early_then_due(client: fakeredis.FakeRedis, request: Req) -> AmqpLeases:
    import time

    renewer = leases(client, [request], LeaseBook(), time.monotonic())
    renewer.renew()
    assert request.acknowledged
    client.zadd(keys.owed("q"), {request.args[0]: 0})  # its worker died: the entry is past its deadline
    return renewer


def swept(client: fakeredis.FakeRedis) -> tuple[Any, FakePublisher]:
    publisher = FakePublisher()
    sweep = OwedSweep(client, ResultStore(client, 3600), ["q"], lambda: publisher, retry=3, interval=1)  # type: ignore[arg-type,return-value]
    return sweep.sweep(), publisher


@pytest.mark.parametrize("doc", [None, {"job_id": "job-1", "status": "running", "source": "/m/a.png"}])
def test_a_job_from_another_producer_is_swept_back_with_the_options_of_its_message(
    redis_client: fakeredis.FakeRedis, doc: dict[str, Any] | None
) -> None:
    import time

    # The queued document is optional in the wire contract, and holds no options when a producer
    # in another language wrote it: the sweep must rebuild the message from the message itself.
    if doc is not None:
        redis_client.set(keys.result("job-1"), json.dumps(doc))
    request = Req("job-1", time.monotonic() - 901, args=["job-1", "/m/a.png"], kwargs={"options": CALLBACK})
    acked_early_then_due(redis_client, request)
    report, publisher = swept(redis_client)
    assert report is not None
    assert report.published == ("job-1",)
    ((message,),) = [publisher.sent]
    assert json.loads(message.body)[:2] == [["job-1", "/m/a.png"], {"options": CALLBACK}]
    assert redis_client.zcard(keys.owed("q")) == 0
    assert redis_client.exists(keys.owed_calls("q")) == 0  # removed with its entry


def test_the_stored_call_goes_with_its_owed_entry_when_the_job_ends(redis_client: fakeredis.FakeRedis) -> None:
    import time

    request = Req("job-1", time.monotonic() - 901, args=["job-1", "/m/a.png", CALLBACK])
    acked_early_then_due(redis_client, request)
    assert redis_client.hlen(keys.owed_calls("q")) == 1
    early_acks.OwedSet(redis_client).remove("q", ["job-1"])  # tasks.upload.settle_early_ack
    assert redis_client.exists(keys.owed("q"), keys.owed_calls("q")) == 0
