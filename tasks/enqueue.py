"""Putting jobs on the queue: documents and messages, all of a call or none of it.

Each job's ``queued`` document is written with its message, so a poller never sees
"unknown" for a real job. Messages are built by ``tasks.wire.encode``. A call's jobs
go to Redis a chunk at a time, but nothing reaches the queue until the last chunk:
every chunk but the last is *staged* (documents, and the messages in a staging list,
both expiring after ``STAGING_TTL``), and one Lua script (``enqueue_commit.lua``,
the one commit of both brokers) writes the last chunk, moves the staged messages
onto the queue, makes the documents permanent and writes the batch's records,
atomically. So 10,000 jobs still cost a handful of round trips, a single job costs
one, and a Redis that refuses writes (``maxmemory``) or drops the connection leaves
nothing on a queue: the caller gets one ``EnqueueError`` line and the staged records
are removed (``UNLINK`` is allowed even under ``maxmemory``), or expire if Redis
cannot be reached. Interactive jobs go to ``WSUPLOAD_QUEUE``, bulk ones to
``WSUPLOAD_BULK_QUEUE``. Used by the producer API and by scheduled scans, which run
inside workers.

A bulk call (``bulk=True``: batches, ingestion, scheduled runs) on the Redis broker
puts up to ``WSUPLOAD_JOBS_PER_MESSAGE`` jobs in one ``wsupload.upload_many``
message (``message_sizes``): Celery's and kombu's work per message is then
shared by those jobs, while each keeps its own document, lease, generation and
outcome (``tasks.upload``).

The commit also gives each job its place in its queue's line, and the ``queued``
document carries the job's options: with both, the worker's sweep
(``tasks.recovery.lost_sweep``) finds a message Redis lost and puts it back on the queue.

On RabbitMQ (``WSUPLOAD_BROKER_URL=amqp://…``) the documents cannot share a
transaction with the messages. The same commit (its ``OWE`` mode) writes them as
above but, instead of pushing messages, makes every job *owed*
(``tasks.recovery.early_acks``) for ``WSUPLOAD_AMQP_PUBLISH_GRACE``; then the
messages are published with publisher confirms (``tasks.wire.amqp_publisher``); then
the owed entries are removed. ``enqueue`` returns only once RabbitMQ has confirmed
every message. If publishing fails the jobs stay queued and owed, and the caller
gets an ``EnqueueError`` (``queued`` true) saying the workers' sweep publishes them:
rolling back instead could not take back the messages RabbitMQ already has, whose
jobs would then run without a document.

What is written, and what a failure says, is decided once: ``push_flow`` yields the
steps of a call (a ``Stage`` pipeline, the ``Commit``, ...) and its driver performs
them and sends back each reply or throws back each Redis error. ``Enqueuer`` drives
it with redis-py's blocking client; ``worker.async_producer.AsyncProducer`` with
``redis.asyncio``. A driver does I/O only, never decides.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import redis

from wsupload.config.settings import Settings
from wsupload.errors import ConfigError, EnqueueError, InvalidInput, PublishError
from wsupload.tasks.observe.bounds import MAX_SOURCE_CHARS, clip
from wsupload.tasks.recovery import early_acks
from wsupload.tasks.sources.discovery import Found
from wsupload.tasks.store import keys, lua, results
from wsupload.tasks.store.batches import BatchStore, batch_fields, members_key, name_key
from wsupload.tasks.store.results import ResultStore
from wsupload.tasks.wire import encode

if TYPE_CHECKING:
    # kombu and py-amqp load only when a message goes to RabbitMQ: a Redis producer never pays for them.
    from wsupload.tasks.wire.amqp_publisher import Publisher

CHUNK = 2000
"""Jobs per Redis round trip when enqueueing."""
SPREAD = 32
"""A bulk call spreads over a multiple of this many messages (one per thread of a worker at
the default concurrency) before ``WSUPLOAD_JOBS_PER_MESSAGE`` puts several jobs in one."""
STAGING_TTL = 900
"""Seconds staged documents and messages live: what a producer that dies mid-enqueue leaves expires, never delivered."""
REASON_CHARS = 160
"""How much of Redis's own error an ``EnqueueError`` line shows."""
PUSH, OWE = "push", "owe"
"""The commit's modes (``enqueue_commit.lua``): messages onto the Redis queue, or every job owed (RabbitMQ)."""


@dataclass(frozen=True)
class Job:
    job_id: str
    source: str


@dataclass(frozen=True)
class Batch:
    batch_id: str
    name: str | None
    jobs: list[Job]


def normalize_source(source: str, cwd: str | None = None) -> str:
    """Local paths become absolute (the worker has no idea of the producer's cwd), against ``cwd`` if given."""
    source = source.strip()
    if source and "://" not in source:
        return os.path.normpath(os.path.join(cwd, source)) if cwd else os.path.abspath(source)
    return source


def checked_sources(sources: Sequence[str]) -> list[str]:
    """Normalized sources; the first one a worker would refuse as too long stops the call before anything is sent.

    One pass over names only: a file is opened (and its size read) by the worker that uploads it, never here.
    """
    cwd = os.getcwd()  # once, not once per source (``os.path.abspath`` asks the kernel each time)
    normalized = [normalize_source(source, cwd) for source in sources]
    for number, source in enumerate(normalized, 1):
        if len(source) > MAX_SOURCE_CHARS:
            raise InvalidInput(
                f"source {number} of {len(normalized)} is {len(source)} characters long, "
                f"over the limit of {MAX_SOURCE_CHARS}: {clip(source)!r}"
            )
    return normalized


staging_key = keys.staging


def redis_reason(exc: BaseException) -> str:
    """Redis's own words for ``exc``, on one short line (never the command's arguments)."""
    text = str(exc).split("caused error: ", 1)[-1]  # redis-py quotes the failed command before this
    text = re.sub(r"\s*script: [0-9a-f]{40}\b.*", "", text, flags=re.DOTALL)
    text = " ".join(text.split()).rstrip(".")
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        text = f"OOM {text}"
    return clip(text or type(exc).__name__, REASON_CHARS)


def message_sizes(jobs: int, most: int) -> list[int]:
    """How many of a bulk call's ``jobs`` each message carries, in order.

    At most ``most`` a message, sizes differing by one at most, in a number of messages
    that is a multiple of ``SPREAD`` (one job each when there are no more jobs than that):
    each wave of a worker's threads gets messages of about one length, so no thread is
    left with a longer tail than the others.
    """
    if most <= 1 or jobs <= SPREAD:
        return [1] * jobs
    count = -(-jobs // most)
    count = min(jobs, -(-count // SPREAD) * SPREAD)
    small, larger = divmod(jobs, count)
    return [small + 1] * larger + [small] * (count - larger)


def in_messages(jobs: Sequence[Job], sizes: Sequence[int]) -> list[list[Job]]:
    """``jobs`` cut into consecutive messages of ``sizes``."""
    ends = list(itertools.accumulate(sizes))
    return [list(jobs[end - size : end]) for size, end in zip(sizes, ends, strict=True)]


def in_chunks(groups: list[list[Job]], limit: int) -> list[list[list[Job]]]:
    """Consecutive messages, at most ``limit`` jobs a chunk: a message is never cut in two."""
    chunks: list[list[list[Job]]] = [[]]
    held = 0
    for group in groups:
        if held and held + len(group) > limit:
            chunks.append([])
            held = 0
        chunks[-1].append(group)
        held += len(group)
    return chunks


def messages(groups: Sequence[Sequence[Job]], queue: str, options: dict[str, Any] | None) -> list[str]:
    """One message per group of jobs: ``wsupload.upload`` for one job, ``wsupload.upload_many`` for more."""
    return [
        encode.upload_message(group[0].job_id, group[0].source, queue, options)
        if len(group) == 1
        else encode.upload_many_message([(job.job_id, job.source) for job in group], queue, options)
        for group in groups
    ]


def _flat(groups: Sequence[Sequence[Job]]) -> list[Job]:
    return [job for group in groups for job in group]


def _doc(job: Job, now: datetime, batch: _BatchRecords | None, options: dict[str, Any] | None) -> str:
    return json.dumps(results.new_doc(job.job_id, job.source, now, batch.batch_id if batch else None, options))


def _count(jobs: Sequence[Job]) -> str:
    return "1 job" if len(jobs) == 1 else f"{len(jobs)} jobs"


def _happened(exc: BaseException) -> str:
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return "Redis refused writes"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return "the connection to Redis failed"
    return "Redis answered an error"


@dataclass(frozen=True)
class _BatchRecords:
    batch_id: str
    name: str | None
    bytes_total: int


# The steps of an enqueue: what the flow below asks its driver to do in Redis (or RabbitMQ).
# A driver (``Enqueuer`` here, ``worker.async_producer.AsyncProducer`` with ``redis.asyncio``)
# performs each step and sends back its reply, or throws back the ``RedisError`` (or
# ``PublishError``) it raised; the flow alone decides what is written and what an error says.


@dataclass(frozen=True)
class Stage:
    """One chunk ahead of the commit: its documents (and, on the Redis broker, its messages in
    the staging list ``key``), expiring after ``STAGING_TTL`` unless committed. One pipeline."""

    docs: list[tuple[str, str]]
    key: str | None = None
    messages: list[str] | None = None

    @property
    def transaction(self) -> bool:
        return self.key is not None

    def fill(self, pipe: Any) -> None:
        """Queue the stage's commands on ``pipe`` (a sync or an asyncio pipeline: queueing is the same)."""
        for doc_key, doc in self.docs:
            pipe.set(doc_key, doc, ex=STAGING_TTL)
        if self.key is not None:
            # DEL first: a pipeline redis-py resends after a lost reply stages the chunk once, not twice.
            pipe.delete(self.key)
            pipe.rpush(self.key, *(self.messages or []))
            pipe.expire(self.key, STAGING_TTL)


@dataclass(frozen=True)
class Commit:
    """``enqueue_commit.lua`` with these KEYS and ARGV; its reply is sent back."""

    keys: list[str]
    args: list[Any]


@dataclass(frozen=True)
class Committed:
    """``EXISTS marker``: whether a commit whose reply was lost ran; the count is sent back."""

    marker: str


@dataclass(frozen=True)
class Unlink:
    """``UNLINK`` these keys, in one pipeline of commands of ``UNLINK_CHUNK`` keys each."""

    keys: list[str]

    def fill(self, pipe: Any) -> None:
        for chunk in results.chunks(self.keys, UNLINK_CHUNK):
            pipe.unlink(*chunk)


@dataclass(frozen=True)
class Publish:
    """Publish these messages to RabbitMQ with confirms (``tasks.wire.amqp_publisher``)."""

    messages: list[encode.AmqpMessage]


@dataclass(frozen=True)
class ClearDebt:
    """``early_acks_remove_if.lua`` with these KEYS and ARGV (``early_acks.remove_if_call``)."""

    keys: list[str]
    args: list[Any]


@dataclass(frozen=True)
class Clock:
    """``TIME``: Redis's clock, for a deadline (``expires_in``); ``(seconds, microseconds)`` is sent back."""


Step = Stage | Commit | Committed | Unlink | Publish | ClearDebt | Clock
Flow = Generator[Step, Any, None]
UNLINK_CHUNK = 1000


def push_flow(
    settings: Settings,
    jobs: list[Job],
    *,
    bulk: bool,
    options: dict[str, Any] | None,
    batch: _BatchRecords | None = None,
    expires_in: float | None = None,
) -> Flow:
    """Every step of putting ``jobs`` on the queue (see the module docstring), for a driver to perform.

    ``expires_in``: seconds from now (Redis's clock, one ``TIME``) after which a job not started
    ends ``expired``; it travels as the option ``deadline_at`` (``tasks.wire.options``).
    """
    if expires_in is not None:
        options = yield from _with_deadline(jobs, options, expires_in, batch)
    if settings.broker_is_amqp:
        yield from _owe_flow(settings, jobs, bulk=bulk, options=options, batch=batch)
        return
    if not settings.broker_is_results_redis:
        # The commit writes documents and messages in one Redis transaction; messages
        # written to REDIS_URL would never reach workers that consume another Redis.
        raise ConfigError(
            "WSUPLOAD_BROKER_URL: enqueueing needs the broker and the results in one Redis (a job's"
            " document and its message are written in one transaction); unset it, or set it to REDIS_URL"
        )
    queue = settings.bulk_queue if bulk else settings.queue
    sizes = message_sizes(len(jobs), settings.jobs_per_message) if bulk else [1] * len(jobs)
    now = results.utcnow()
    token = batch.batch_id if batch else uuid.uuid4().hex
    *staged, last = in_chunks(in_messages(jobs, sizes), CHUNK)
    stages: list[str] = []
    done = 0
    for chunk in staged:
        stages.append(staging_key(token, len(stages)))
        chunk_jobs = _flat(chunk)
        docs = [(results.result_key(job.job_id), _doc(job, now, batch, options)) for job in chunk_jobs]
        try:
            yield Stage(docs, stages[-1], messages(chunk, queue, options))
        except redis.RedisError as exc:
            error = yield from _abandon(jobs, stages, batch, exc, f"after staging {done} of {len(jobs)} jobs")
            raise error from exc
        done += len(chunk_jobs)
    last_messages = messages(last, queue, options)
    last_jobs = _flat(last)
    names, args = _commit_arguments(settings, PUSH, queue, jobs, last_jobs, stages, last_messages, now, batch, options)
    yield from _commit(names, args, jobs, stages, batch)


def check_expires_in(expires_in: float | None) -> None:
    """``expires_in`` must be a positive number of seconds (``InvalidInput`` otherwise)."""
    if expires_in is None:
        return
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or not 0 < expires_in < 10**9:
        raise InvalidInput(f"expires_in must be a positive number of seconds, got {expires_in!r}")


def deadline_at(redis_time: Sequence[int], expires_in: float) -> str:
    """The ``deadline_at`` option for a job enqueued now (``TIME``'s reply) that may wait ``expires_in`` seconds."""
    seconds, micros = (int(part) for part in redis_time)
    now = datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=micros)
    return results.isoformat(now + timedelta(seconds=expires_in))


def _with_deadline(
    jobs: list[Job], options: dict[str, Any] | None, expires_in: float, batch: _BatchRecords | None
) -> Generator[Step, Any, dict[str, Any]]:
    """``options`` with ``deadline_at``, ``expires_in`` from now on Redis's clock (one ``TIME``)."""
    check_expires_in(expires_in)
    try:
        redis_time = yield Clock()
    except redis.RedisError as exc:
        subject = "batch" if batch else ("job" if len(jobs) == 1 else "jobs")
        raise EnqueueError(
            f"{subject} not enqueued: {_happened(exc)} reading its clock for the deadline ({redis_reason(exc)});"
            " nothing was queued",
            jobs,
            batch_id=batch.batch_id if batch else None,
        ) from exc
    return {**(options or {}), "deadline_at": deadline_at(redis_time, expires_in)}


def _commit(
    names: list[str], args: list[Any], jobs: list[Job], stages: list[str], batch: _BatchRecords | None
) -> Generator[Step, Any, Any]:
    """The commit; returns its reply (None when the reply was lost but its marker, ``names[0]``, shows it ran)."""
    try:
        return (yield Commit(names, args))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # The reply was lost: the commit may have run. Its marker says whether.
        try:
            committed = bool((yield Committed(names[0])))
        except redis.RedisError:
            raise _in_doubt(jobs, batch, exc) from exc
        if not committed:
            error = yield from _abandon(jobs, stages, batch, exc, f"while committing {_count(jobs)}")
            raise error from exc
        return None
    except redis.RedisError as exc:
        error = yield from _abandon(jobs, stages, batch, exc, f"while committing {_count(jobs)}")
        raise error from exc


def _owe_flow(
    settings: Settings, jobs: list[Job], *, bulk: bool, options: dict[str, Any] | None, batch: _BatchRecords | None
) -> Flow:
    """On RabbitMQ: commit the documents with every job owed, publish with confirms, then clear the debt."""
    queue = settings.bulk_queue if bulk else settings.queue
    now = results.utcnow()
    *staged, last = list(results.chunks(jobs, CHUNK)) or [[]]
    done = 0
    for chunk in staged:
        try:
            yield Stage([(results.result_key(job.job_id), _doc(job, now, batch, options)) for job in chunk])
        except redis.RedisError as exc:
            error = yield from _abandon(jobs, [], batch, exc, f"after staging {done} of {len(jobs)} jobs")
            raise error from exc
        done += len(chunk)
    names, args = _commit_arguments(settings, OWE, queue, jobs, last, [], [], now, batch, options)
    owed_until = yield from _commit(names, args, jobs, [], batch)
    try:
        yield Publish([encode.amqp_message(job.job_id, job.source, queue, options) for job in jobs])
    except PublishError as exc:
        subject = "batch" if batch else ("job" if len(jobs) == 1 else "jobs")
        raise EnqueueError(
            f"{subject} queued but not published: {exc}; the workers' sweep publishes {_count(jobs)} within"
            f" WSUPLOAD_AMQP_PUBLISH_GRACE ({settings.amqp_publish_grace} s) of now",
            jobs,
            batch_id=batch.batch_id if batch else None,
            queued=True,
        ) from exc
    # Published and confirmed: the debt is cleared, but only where it is still this call's. A job a
    # worker took meanwhile and acknowledged early is owed again by that worker (a later deadline):
    # its entry stays. Left owed (a lost reply, Redis gone), the sweep publishes again only those
    # not ended by then, and fencing drops a second delivery of one that has.
    if isinstance(owed_until, bytes | str):
        due = early_acks.Due(queue, results.text(owed_until), [])
        for ids in results.chunks([job.job_id for job in jobs], 1000):
            try:
                yield ClearDebt(*early_acks.remove_if_call(due, ids))
            except redis.RedisError:
                return


class Enqueuer:
    """Enqueue through redis-py's blocking client: the driver of ``push_flow`` that performs each step now."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self.store = ResultStore(self.redis, settings.result_ttl)
        self.batches = BatchStore(self.redis, settings.result_ttl)
        self._commit = lua.script(client, "enqueue_commit")
        self._clear_debt = lua.script(client, "early_acks_remove_if")
        self.owed = early_acks.OwedSet(client)
        self._publisher: Publisher | None = None

    def enqueue(
        self,
        sources: Sequence[str],
        *,
        bulk: bool = False,
        options: dict[str, Any] | None = None,
        expires_in: float | None = None,
    ) -> list[Job]:
        """One job per source, on the interactive queue unless ``bulk``; all of them or none.

        ``expires_in``: seconds after which a job not started yet ends ``expired`` (``push_flow``).
        """
        check_expires_in(expires_in)
        jobs = new_jobs(sources)
        if jobs:
            self._drive(push_flow(self.settings, jobs, bulk=bulk, options=options, expires_in=expires_in))
        return jobs

    def enqueue_batch(
        self,
        sources: Sequence[Found | str],
        *,
        name: str | None = None,
        bulk: bool = True,
        options: dict[str, Any] | None = None,
        expires_in: float | None = None,
    ) -> Batch:
        """Many jobs under one batch id; bulk queue and deduplication unless told otherwise."""
        check_expires_in(expires_in)
        jobs, records, batch_options = new_batch(sources, name, options)
        self._drive(
            push_flow(self.settings, jobs, bulk=bulk, options=batch_options, batch=records, expires_in=expires_in)
        )
        return Batch(records.batch_id, name, jobs)

    def _drive(self, flow: Flow) -> None:
        """Perform each step of ``flow``, sending back its reply or throwing back its error."""
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = flow.send(reply) if error is None else flow.throw(error)
            except StopIteration:
                return
            reply, error = None, None
            try:
                reply = self._perform(step)
            except (redis.RedisError, PublishError) as exc:
                error = exc

    def _perform(self, step: Step) -> Any:
        match step:
            case Stage():
                return self._stage(step)
            case Commit(keys=names, args=args):
                return self._commit(keys=names, args=args)
            case Committed(marker=marker):
                return self.redis.exists(marker)
            case Unlink():
                pipe = self.redis.pipeline(transaction=False)
                step.fill(pipe)
                return pipe.execute()
            case Publish(messages=amqp_messages):
                return self.publisher().publish(amqp_messages)
            case ClearDebt(keys=names, args=args):
                return self._clear_debt(keys=names, args=args)
            case Clock():
                return self.redis.time()

    def _stage(self, stage: Stage) -> Any:
        pipe = self.redis.pipeline(transaction=stage.transaction)
        stage.fill(pipe)
        return pipe.execute()

    def close(self) -> None:
        """Close the connection to RabbitMQ, if one was opened (Redis's pool is the client's own)."""
        if self._publisher is not None:
            self._publisher.close()

    def publisher(self) -> Publisher:
        """This enqueuer's connection to RabbitMQ, opened on first use and kept."""
        if self._publisher is None:
            from wsupload.tasks.wire.amqp_publisher import Publisher

            assert self.settings.broker_url is not None
            self._publisher = Publisher(self.settings.broker_url)
        return self._publisher


def new_jobs(sources: Sequence[str]) -> list[Job]:
    """A job (a new id) per source, checked (``checked_sources``) before anything is sent."""
    return [Job(uuid.uuid4().hex, source) for source in checked_sources(sources)]


def new_batch(
    sources: Sequence[Found | str], name: str | None, options: dict[str, Any] | None
) -> tuple[list[Job], _BatchRecords, dict[str, Any]]:
    """A batch's jobs, its records and its options (deduplication unless told otherwise)."""
    found = [item if isinstance(item, Found) else Found(item) for item in sources]
    jobs = new_jobs([item.source for item in found])
    records = _BatchRecords(uuid.uuid4().hex, name, sum(item.size or 0 for item in found))
    return jobs, records, {"dedup": True, **(options or {})}


def _commit_arguments(
    settings: Settings,
    mode: str,
    queue: str,
    jobs: list[Job],
    last: Sequence[Job],
    stages: list[str],
    last_messages: list[str],
    now: datetime,
    batch: _BatchRecords | None,
    options: dict[str, Any] | None,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``enqueue_commit.lua`` (laid out in its head); ``last_messages`` carry ``last``.

    ``mode``: ``PUSH`` puts the messages on ``queue``, ``OWE`` makes the jobs owed instead.
    """
    marker = results.result_key(last[0].job_id) if last else results.batch_key(batch.batch_id if batch else "")
    grace: float | str = ""
    if mode == PUSH:
        names = [marker, queue, keys.pending(queue), keys.place_counter(queue), *stages]
    else:
        names, grace = [marker, keys.owed(queue), keys.entered(queue)], settings.amqp_publish_grace
    names += [results.result_key(job.job_id) for job in jobs]
    fields = batch_fields(batch.batch_id, batch.name, len(jobs), batch.bytes_total) if batch else {}
    args: list[Any] = [mode, len(stages), len(jobs) - len(last), len(last), len(last_messages)]
    args += [settings.result_ttl, len(fields), batch.batch_id if batch else "", grace]
    args += [_doc(job, now, batch, options) for job in last]
    args += last_messages
    args += [job.job_id for job in jobs]
    if batch:
        names += [results.batch_key(batch.batch_id), members_key(batch.batch_id)]
        names += [name_key(batch.name)] if batch.name else []
        args += [item for pair in fields.items() for item in pair]
    return names, args


def _abandon(
    jobs: list[Job], stages: list[str], batch: _BatchRecords | None, exc: BaseException, when: str
) -> Generator[Step, Any, EnqueueError]:
    """Nothing was committed: remove what was staged (or let it expire) and say so."""
    doomed = [results.result_key(job.job_id) for job in jobs] + stages
    if batch:
        doomed += [results.batch_key(batch.batch_id), members_key(batch.batch_id)]
    try:
        yield Unlink(doomed)
        left = ""
    except redis.RedisError:
        left = f"; what was staged expires within {STAGING_TTL // 60} min" if stages else ""
    subject = "batch" if batch else ("job" if len(jobs) == 1 else "jobs")
    message = f"{subject} not enqueued: {_happened(exc)} {when} ({redis_reason(exc)}); nothing was queued{left}"
    return EnqueueError(message, jobs, batch_id=batch.batch_id if batch else None)


def _in_doubt(jobs: list[Job], batch: _BatchRecords | None, exc: BaseException) -> EnqueueError:
    """The commit was sent, its answer lost, and Redis cannot be asked whether it ran."""
    if batch:
        subject, check = "batch", f"`wsupload batch status {batch.batch_id}`"
    else:
        subject, check = ("job" if len(jobs) == 1 else "jobs"), f"`wsupload status {jobs[-1].job_id}`"
    message = (
        f"{subject} in doubt: the connection to Redis failed while committing {_count(jobs)} "
        f"({redis_reason(exc)}); either all were queued or none was, {check} tells which"
    )
    return EnqueueError(message, jobs, in_doubt=True, batch_id=batch.batch_id if batch else None)
