"""The asyncio producer: ``AsyncProducer``, ``Producer``'s twin for FastAPI, Starlette, aiohttp.

Same settings, errors and semantics as ``worker.producer.Producer``, through
``redis.asyncio``. It owns only I/O: what an enqueue writes and what its failures say
is ``tasks.enqueue.push_flow`` (this module performs its steps), the scripts are
``tasks.store.lua``'s files, the waits' rules (an ended message, the re-read turn, the
outage policy of ``tasks.recovery.outage``) are the sync producer's. Its waits and ``updates``
streams share one subscription (``worker.async_events``): a thousand requests awaiting
their jobs hold one connection for it, and each end is parsed once.

It never blocks the event loop: Redis calls are awaited; a call that enqueues more
than ``OFFLOAD_ABOVE`` jobs builds its documents and messages in a thread
(``asyncio.to_thread``), as does every confirmed publish to RabbitMQ (the AMQP
publisher is blocking; it is used one call at a time, from a thread); documents are
read ``READ_CHUNK`` at a time and decoded ``DECODE_CHUNK`` at a time, the loop getting
its turn in between.
Importing it loads neither Celery nor the worker. A TLS refusal raises ``TlsRefused``,
checked at first use, as ``Producer`` does (``worker.tls``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import redis
import redis.asyncio

from wsupload.config.settings import Settings
from wsupload.errors import PublishError, WsuploadError
from wsupload.tasks.enqueue import (
    Batch,
    ClearDebt,
    Clock,
    Commit,
    Committed,
    Flow,
    Job,
    Publish,
    Stage,
    Step,
    Unlink,
    check_expires_in,
    new_batch,
    new_jobs,
    push_flow,
)
from wsupload.tasks.recovery.outage import OUTAGE_LIMIT, REDIS_DOWN, Outage
from wsupload.tasks.sources.discovery import Found
from wsupload.tasks.store import cancels, keys, lua, pauses, results
from wsupload.tasks.store.batches import batch_info, members_key
from wsupload.tasks.store.cancels import CancelOutcome
from wsupload.tasks.store.connections import async_redis_client
from wsupload.tasks.store.results import JobDoc
from wsupload.worker import tls
from wsupload.worker.async_events import Hub, Watch
from wsupload.worker.producer import (
    BATCH_REFRESH,
    RECHECK_SECONDS,
    WAKE_EVERY,
    Rechecks,
    WaitOutcome,
    is_finished,
)

if TYPE_CHECKING:
    from wsupload.tasks.wire.amqp_publisher import Publisher  # kombu loads at the first RabbitMQ publish only

T = TypeVar("T")
__all__ = ["AsyncProducer"]

OFFLOAD_ABOVE = 20
"""A call enqueueing more jobs than this builds their documents and messages in a thread
(20 to 50 µs of CPU a job: 20 jobs hold the loop about a millisecond, 10,000 would hold it
for a fraction of a second). The hop to a thread costs less than the Redis round trip."""
READ_CHUNK = 100
"""Documents read in one ``MGET``."""
DECODE_CHUNK = 25
"""Documents decoded in one go before the loop gets its turn (about half a millisecond)."""


class AsyncProducer:
    """Enqueue uploads, read their status, wait for them and follow them, from asyncio::

    async with AsyncProducer(Settings.from_env()) as producer:
        jobs = await producer.enqueue(["/srv/media/cat.png"])
        outcome = await producer.wait([job.job_id for job in jobs], timeout=60)
    """

    outage_limit = OUTAGE_LIMIT
    """With no timeout, how long (seconds) a wait keeps trying while Redis is unreachable."""

    def __init__(self, settings: Settings, *, client: redis.asyncio.Redis | None = None) -> None:
        self.settings = settings
        self._own_client = client is None
        self.redis: redis.asyncio.Redis = client if client is not None else async_redis_client(settings.redis_url)
        self._commit = self.redis.register_script(lua.load("enqueue_commit"))
        self._clear_debt = self.redis.register_script(lua.load("early_acks_remove_if"))
        self._cancel = self.redis.register_script(lua.load(cancels.SCRIPT))
        self._publisher: Publisher | None = None
        self._hub = Hub(self.redis)
        self._verified = {"redis": False, "amqp": False}
        """Whether this producer's TLS was checked (and verified) yet, per broker: once each, at first use."""

    async def _checked(self, *, publishing: bool = False) -> AbstractContextManager[None]:
        """Around a call: TLS checked at first use; an error a refusal caused raised as ``TlsRefused``."""
        url = self.settings.redis_url
        if not self._verified["redis"] and tls.uses_tls(url):
            self._verified["redis"] = await _answers(self.redis, url)
        if publishing and not self._verified["amqp"] and self.settings.broker_is_amqp:
            broker = self.settings.effective_broker_url
            self._verified["amqp"] = not tls.uses_tls(broker) or await asyncio.to_thread(tls.check_amqp, broker)
        return tls.refusals_raised(self.settings)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections this producer opened: its Redis pool (not a client it was given) and RabbitMQ's."""
        await self._hub.aclose()
        if self._publisher is not None:
            publisher, self._publisher = self._publisher, None
            await asyncio.to_thread(publisher.close)
        if self._own_client:
            await self.redis.aclose()

    # Enqueueing: tasks.enqueue decides, this performs.

    async def enqueue(
        self,
        sources: Sequence[str],
        *,
        bulk: bool = False,
        options: dict[str, Any] | None = None,
        expires_in: float | None = None,
    ) -> list[Job]:
        """One job per source, on the interactive queue unless ``bulk``; all of them or none (``EnqueueError``).

        ``expires_in``: seconds after which a job not started yet ends ``expired``.
        """
        check_expires_in(expires_in)
        offload = len(sources) > OFFLOAD_ABOVE
        jobs = await asyncio.to_thread(new_jobs, sources) if offload else new_jobs(sources)
        if jobs:
            flow = push_flow(self.settings, jobs, bulk=bulk, options=options, expires_in=expires_in)
            await self._drive(flow, offload)
        return jobs

    async def enqueue_batch(
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
        offload = len(sources) > OFFLOAD_ABOVE
        made = (
            await asyncio.to_thread(new_batch, sources, name, options) if offload else new_batch(sources, name, options)
        )
        jobs, records, batch_options = made
        flow = push_flow(self.settings, jobs, bulk=bulk, options=batch_options, batch=records, expires_in=expires_in)
        await self._drive(flow, offload)
        return Batch(records.batch_id, name, jobs)

    async def _drive(self, flow: Flow, offload: bool) -> None:
        """Perform each step of ``flow`` (advanced in a thread when ``offload``), sending back replies and errors."""
        with await self._checked(publishing=True):
            await self._steps(flow, offload)

    async def _steps(self, flow: Flow, offload: bool) -> None:
        reply: Any = None
        error: BaseException | None = None
        while True:
            step = await asyncio.to_thread(_advance, flow, reply, error) if offload else _advance(flow, reply, error)
            if step is None:
                return
            reply, error = None, None
            try:
                reply = await self._perform(step)
            except (redis.RedisError, PublishError) as exc:
                error = exc

    async def _perform(self, step: Step) -> Any:
        match step:
            case Stage():
                pipe = self.redis.pipeline(transaction=step.transaction)
                step.fill(pipe)
                return await pipe.execute()
            case Commit(keys=names, args=args):
                return await self._commit(keys=names, args=args)
            case Committed(marker=marker):
                return await self.redis.exists(marker)
            case Unlink():
                pipe = self.redis.pipeline(transaction=False)
                step.fill(pipe)
                return await pipe.execute()
            case Publish(messages=amqp_messages):
                # kombu's AMQP client blocks: in a thread, one call at a time (Publisher holds a lock).
                return await asyncio.to_thread(self.publisher().publish, amqp_messages)
            case ClearDebt(keys=names, args=args):
                return await self._clear_debt(keys=names, args=args)
            case Clock():
                return await self.redis.time()

    def publisher(self) -> Publisher:
        """This producer's connection to RabbitMQ (opened, in a thread, at its first publish) and kept."""
        if self._publisher is None:
            from wsupload.tasks.wire.amqp_publisher import Publisher

            assert self.settings.broker_url is not None
            self._publisher = Publisher(self.settings.broker_url)
        return self._publisher

    # Reading.

    async def status(self, job_ids: Sequence[str]) -> list[JobDoc | None]:
        """Each job's document (None for a job with none), as ``Producer.status`` reads it."""
        with await self._checked():
            return await self._read(job_ids)

    async def _read(self, job_ids: Sequence[str]) -> list[JobDoc | None]:
        found: list[JobDoc | None] = []
        for chunk in results.chunks(job_ids, READ_CHUNK):
            raw = await self.redis.mget([results.result_key(job_id) for job_id in chunk])
            now = results.utcnow()
            for start in range(0, len(chunk), DECODE_CHUNK):
                if start:
                    # Many waits whose reads come back together each decode a slice per turn of the loop.
                    await asyncio.sleep(0)
                pairs = zip(chunk[start : start + DECODE_CHUNK], raw[start : start + DECODE_CHUNK], strict=True)
                found += [results.decode_doc(value, job_id, now) for job_id, value in pairs]
        return found

    async def batch(self, batch_id: str) -> dict[str, Any] | None:
        """A batch's counters (``BatchStore.get``'s document); None for no such batch."""
        with await self._checked():
            return await self._batch_info(batch_id)

    async def _batch_info(self, batch_id: str) -> dict[str, Any] | None:
        return batch_info(await self.redis.hgetall(results.batch_key(batch_id)))

    async def batch_jobs(self, batch_id: str) -> list[str]:
        """A batch's job ids, in order (``BatchStore.job_ids``)."""
        with await self._checked():
            return [results.text(raw) for raw in await self.redis.lrange(members_key(batch_id), 0, -1)]

    # Pausing queues (tasks.store.pauses).

    async def pause(self, queue: str) -> bool:
        """Pause ``queue`` fleet-wide, as ``Producer.pause``; whether it was running until now."""
        return await self._change(queue, pause=True)

    async def resume(self, queue: str) -> bool:
        """Resume ``queue``, as ``Producer.resume``; whether it was paused until now."""
        return await self._change(queue, pause=False)

    async def paused(self) -> set[str]:
        """The queues paused now."""
        with await self._checked():
            return pauses.read(await self.redis.smembers(keys.PAUSED))

    async def _change(self, queue: str, *, pause: bool) -> bool:
        named = pauses.queue_named(queue, self.settings.queue, self.settings.bulk_queue)
        pipe = self.redis.pipeline(transaction=True)
        pauses.fill_change(pipe, named, pause=pause)
        with await self._checked():
            return pauses.changed(await pipe.execute())

    # Cancelling: tasks.store.cancels decides, this performs.

    async def cancel(self, job_ids: Sequence[str]) -> list[CancelOutcome]:
        """Cancel jobs, as ``Producer.cancel``: each that has not ended ends ``cancelled`` now; one outcome per id.

        The same script and rules (``tasks.store.cancels``): a queued job never runs, a running
        one is stopped by its worker within a second, one that had ended is left as it was
        (``outcome == "ended"``), one with no document is ``unknown``; no worker need be running.
        """
        found: list[CancelOutcome] = []
        with await self._checked():
            for chunk in results.chunks(cancels.unique(job_ids), cancels.CHUNK):
                now = results.utcnow()
                script_keys, args = cancels.call(chunk, self.settings.result_ttl, now, time.time())
                found += cancels.outcomes(chunk, await self._cancel(keys=script_keys, args=args), now)
        return cancels.in_order(job_ids, found)

    async def cancel_batch(self, batch_id: str) -> list[CancelOutcome]:
        """``cancel`` every member of the batch (its id, not its name)."""
        return await self.cancel(await self.batch_jobs(batch_id))

    # Waiting.

    async def wait(self, job_ids: Sequence[str], timeout: float | None = None) -> WaitOutcome:
        """Until every job is terminal (or unknown), or ``timeout`` passes; as ``Producer.wait``.

        Woken by ``wsupload:ended``; rides out a Redis outage (``tasks.recovery.outage``): a
        timeout that passes meanwhile returns the documents last read, marked timed out.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        docs: dict[str, JobDoc | None] = {}
        return await self._riding_out(
            deadline,
            lambda outage: self._wait_jobs(job_ids, docs, deadline, outage),
            lambda: WaitOutcome([docs.get(job_id) for job_id in job_ids], timed_out=True),
        )

    async def _wait_jobs(
        self, job_ids: Sequence[str], docs: dict[str, JobDoc | None], deadline: float | None, outage: Outage
    ) -> WaitOutcome:
        """One connection's worth of ``wait``: ``docs`` keeps what was read for the next one."""
        unread = [job_id for job_id in dict.fromkeys(job_ids) if not (job_id in docs and is_finished(docs[job_id]))]
        # Registered before reading: an end between the two is not lost, and after a
        # reconnect the read finds what ended while Redis was away.
        watch = await self._hub.watch(unread)
        try:
            docs.update(zip(unread, await self._read(unread), strict=True))
            outage.recovered()
            pending = {job_id for job_id in unread if not is_finished(docs[job_id])}
            self._hub.drop(watch, set(unread) - pending)
            last_recheck, last_wake = time.monotonic(), float("-inf")
            rechecks = Rechecks()
            while True:
                if not pending:
                    return WaitOutcome([docs[job_id] for job_id in job_ids], timed_out=False)
                now = time.monotonic()
                left = None if deadline is None else deadline - now
                if left is not None and left <= 0:
                    return WaitOutcome([docs[job_id] for job_id in job_ids], timed_out=True)
                pause = last_wake + WAKE_EVERY - now
                if pause > 0:  # the ends that arrive meanwhile are taken in one go
                    await asyncio.sleep(pause if left is None else min(pause, left))
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                ended, _ = await watch.next(RECHECK_SECONDS if left is None else min(RECHECK_SECONDS, left))
                ended = {job_id: doc for job_id, doc in ended.items() if job_id in pending and is_finished(doc)}
                if ended:
                    last_wake = time.monotonic()
                docs.update(ended)
                pending.difference_update(ended)
                self._hub.drop(watch, ended)
                if pending and time.monotonic() - last_recheck >= RECHECK_SECONDS:
                    refresh = rechecks.next(pending)
                    docs.update(zip(refresh, await self._read(refresh), strict=True))
                    done = {job_id for job_id in refresh if is_finished(docs[job_id])}
                    pending.difference_update(done)
                    self._hub.drop(watch, done)
                    last_recheck = time.monotonic()
        finally:
            watch.close()

    async def wait_batch(self, batch_id: str, timeout: float | None = None) -> tuple[dict[str, Any], bool]:
        """Until every member is terminal; returns (batch info, timed out), as ``Producer.wait_batch``.

        Reads the batch's counters, not its members; woken by ends, at most every 0.2 s.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        known: dict[str, Any] = {}
        return await self._riding_out(
            deadline, lambda outage: self._wait_batch(batch_id, known, deadline, outage), lambda: (dict(known), True)
        )

    async def _wait_batch(
        self, batch_id: str, known: dict[str, Any], deadline: float | None, outage: Outage
    ) -> tuple[dict[str, Any], bool]:
        watch = await self._hub.watch((), every_end=True)  # counters are read after (re)subscribing
        try:
            last_read = 0.0
            while True:
                await asyncio.sleep(max(0.0, last_read + BATCH_REFRESH - time.monotonic()))
                last_read = time.monotonic()
                info = await self._batch_info(batch_id)
                if info is None:
                    raise WsuploadError(f"no batch {batch_id!r} (never created, or expired)")
                known.clear()
                known.update(info)
                outage.recovered()
                if info["done"] >= info["total"]:
                    return info, False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return info, True
                await watch.next(RECHECK_SECONDS if left is None else min(RECHECK_SECONDS, left))
        finally:
            watch.close()

    async def _riding_out(
        self, deadline: float | None, attempt: Callable[[Outage], Awaitable[T]], timed_out: Callable[[], T]
    ) -> T:
        """``attempt`` again after each Redis outage (backing off), until it returns or ``deadline`` passes."""
        with await self._checked():
            return await self._retried(deadline, attempt, timed_out)

    async def _retried(
        self, deadline: float | None, attempt: Callable[[Outage], Awaitable[T]], timed_out: Callable[[], T]
    ) -> T:
        outage = Outage(deadline, self.outage_limit)
        while True:
            try:
                return await attempt(outage)
            except REDIS_DOWN:
                delay = outage.failed(time.monotonic())
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                if deadline is not None and time.monotonic() >= deadline:
                    return timed_out()

    # Following.

    async def updates(self, job_ids: Sequence[str]) -> AsyncGenerator[JobDoc, None]:
        """Each job's document as first read, then again each time it changes, until every job has ended.

        Woken by ``wsupload:events`` and ``wsupload:ended``, it reads the changed documents
        (in one ``MGET`` for a burst), so a document is yielded whole whatever the event
        carried: status changes, and ``progress`` where the worker writes it. Changes that
        follow each other faster than a read may come as the last of them. A job with no
        document (never enqueued, or expired) yields nothing and ends at once. Rides out a
        Redis outage as ``wait`` does, reading every document again after it. A loop left
        early keeps its share of the subscription until the generator is closed: use
        ``contextlib.aclosing`` there.
        """
        ids = list(dict.fromkeys(job_ids))
        seen: dict[str, JobDoc | None] = {}
        pending = set(ids)
        outage = Outage(None, self.outage_limit)
        with await self._checked():
            while True:
                try:
                    async for doc in self._follow(ids, seen, pending, outage):
                        yield doc
                    return
                except REDIS_DOWN:
                    delay = outage.failed(time.monotonic())
                    if delay is None:
                        raise
                    await asyncio.sleep(delay)

    async def _follow(
        self, ids: list[str], seen: dict[str, JobDoc | None], pending: set[str], outage: Outage
    ) -> AsyncIterator[JobDoc]:
        """One connection's worth of ``updates``: ``seen`` holds what was yielded, ``pending`` the jobs not ended."""
        watch = await self._hub.watch(pending, events=True)
        try:
            for doc in await self._changed([job_id for job_id in ids if job_id in pending], seen, pending, watch):
                yield doc
            outage.recovered()
            last_recheck = time.monotonic()
            rechecks = Rechecks()
            while pending:
                _, touched = await watch.next(RECHECK_SECONDS)
                if touched:  # the rest of a burst is given WAKE_EVERY to arrive, to be read in one MGET
                    await asyncio.sleep(WAKE_EVERY)
                    touched |= (await watch.next(0))[1]
                if time.monotonic() - last_recheck >= RECHECK_SECONDS:  # a missed event is caught here
                    touched.update(rechecks.next(pending))
                    last_recheck = time.monotonic()
                changed = await self._changed([job_id for job_id in ids if job_id in touched], seen, pending, watch)
                for doc in changed:
                    yield doc
        finally:
            watch.close()

    async def _changed(
        self, ids: list[str], seen: dict[str, JobDoc | None], pending: set[str], watch: Watch
    ) -> list[JobDoc]:
        """The documents of ``ids`` that differ from those last yielded; the jobs that ended leave ``pending``."""
        changed: list[JobDoc] = []
        done: list[str] = []
        for job_id, doc in zip(ids, await self._read(ids), strict=True):
            if is_finished(doc) and job_id in pending:
                pending.discard(job_id)
                done.append(job_id)
            if doc is not None and (job_id not in seen or seen[job_id] != doc):
                changed.append(doc)
            seen[job_id] = doc
        self._hub.drop(watch, done)
        return changed


async def _answers(client: redis.asyncio.Redis, url: str) -> bool:
    """``tls.check_redis`` through the asyncio client: ``TlsRefused`` for a refusal; whether it answered."""
    for _ in range(2):
        try:
            await client.ping()
            return True
        except redis.RedisError as exc:
            if not tls.closed_at_once(url, exc):
                return False
    tls.raise_closed_twice(url)
    return False


def _advance(flow: Flow, reply: Any, error: BaseException | None) -> Step | None:
    """The flow's next step, given the last one's reply or error; None once it is done.

    (``StopIteration`` cannot cross ``asyncio.to_thread``: a Future refuses it.)
    """
    try:
        return flow.send(reply) if error is None else flow.throw(error)
    except StopIteration:
        return None
