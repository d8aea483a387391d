"""Running one upload job: validate the source, upload with retries, record the outcome.

Celery-free, so it is unit-tested with fakeredis and a fake client. It always
ends a job in ``succeeded`` or ``failed`` with a readable error (or ``expired``: a job
met after its ``deadline_at``, or whose deadline passed while it waited to retry, ends
so at that attempt instead of sending; a request already sending is not cut), except when
Redis itself is unreachable: then it raises, and the task hands the message back
to the broker rather than lose the job; and except when the job is cancelled
while it runs (``tasks.recovery.lease``): the producer wrote its end, and the
delivery raises ``Cancelled`` having written nothing more.

One retry policy covers both phases: opening the source (an object store may
time out or throttle) and uploading it. ``attempts`` counts upload attempts
and lives in the job's document, not per delivery: a job whose worker died
mid-upload resumes with what is left of ``WSUPLOAD_MAX_ATTEMPTS``, so a file
that kills workers cannot loop forever.

A source that changed while an attempt sent it (``SourceChanged``) is opened
and validated again before the next attempt, so the retry sends what it holds
now, at its new size; a file that never settles spends the same budget.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

import redis
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_before_delay
from tenacity.stop import stop_base

from wsupload.config.settings import LOG_FORMATS, Settings
from wsupload.errors import (
    Cancelled,
    ClientError,
    Expired,
    InternalError,
    LeaseLost,
    RateLimited,
    RetriesExhausted,
    SourceChanged,
    Superseded,
    TooLarge,
    TooManyDeliveries,
    TransientError,
    UploadError,
)
from wsupload.tasks.observe import redaction, telemetry, upload_progress
from wsupload.tasks.observe.log_fields import outcome_fields, retry_fields
from wsupload.tasks.recovery import lease
from wsupload.tasks.sources.media import OpenedSource
from wsupload.tasks.sources.opener import SourceOpener, scheme_of
from wsupload.tasks.store import results
from wsupload.tasks.store.dedup import DedupStore, content_digest
from wsupload.tasks.store.fencing import Claim, ClaimAsk, FirstAttempt
from wsupload.tasks.wavespeed.direct import Transfer
from wsupload.tasks.wavespeed.rate_limit import SLOT_LEASES, FleetLimiter, RateLimitTimeout
from wsupload.tasks.wavespeed.retry_policy import RetryPolicy, is_transient, next_delay
from wsupload.tasks.wire.options import JobOptions

log = logging.getLogger(__name__)
_, JSON_LOGS = LOG_FORMATS
T = TypeVar("T")
NO_OPTIONS = JobOptions()


class Uploader(Protocol):
    def upload(self, source: OpenedSource) -> dict[str, Any]: ...


@runtime_checkable
class DirectUploader(Uploader, Protocol):
    """A client that also speaks the direct flow (``tasks.wavespeed.direct``)."""

    def upload_direct(self, source: OpenedSource, transfer: Transfer) -> dict[str, Any]: ...


def _changed(error: BaseException) -> bool:
    return isinstance(error, SourceChanged)


def _retried_in_place(error: BaseException) -> bool:
    """Transient, and the same opened source can be sent again."""
    return is_transient(error) and not _changed(error)


def _at_once(source: str, options: JobOptions) -> bool:
    """Whether the source opens at once (a local file, no content hash first)."""
    return not options.dedup and scheme_of(source) in ("", "file")


class _stop_when(stop_base):
    """Stop once ``done()``: an upload budget is counted in the job's document, not by the loop."""

    def __init__(self, done: Callable[[], bool]) -> None:
        self.done = done

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.done()


@dataclass
class _State:
    doc: results.JobDoc
    deadline: float | None
    generation: int | None = None
    began: float = field(default_factory=time.monotonic)
    attempt_written: bool = False
    """The claim already wrote the first attempt's document (``attempting(doc)``): that attempt skips its write."""
    then: Callable[[datetime], ClaimAsk | None] | None = None
    """Asked as the job ends (with the time): the claim to make in the same call as its terminal write, if any."""
    next_claim: Ahead | None = None
    """The claim made with the terminal write."""


@dataclass(frozen=True)
class Ahead:
    """A job's claim made before its delivery began, with the outcome of the job before it."""

    claim: Claim
    at: datetime
    """When it was made: the delivery's start (its ``started_at``, if the claim wrote the first attempt)."""


@dataclass(frozen=True)
class Outcome:
    """How one delivery left its job: the document, and whether this delivery ended the job."""

    doc: results.JobDoc
    ended_here: bool
    """This delivery wrote the terminal document (False: the job had ended before it)."""
    next_claim: Ahead | None = None
    """The claim ``run_delivery``'s ``then`` asked for, made with the terminal write; None if none was made."""

    @property
    def failed_here(self) -> bool:
        return self.ended_here and self.doc["status"] == results.FAILED


@dataclass
class JobRunner:
    settings: Settings
    store: results.ResultStore
    client: Uploader
    sleep: Callable[[float], None] = lease.sleep
    """A retry's backoff; by default cut short by the job's cancel."""
    rand: Callable[[], float] = random.random
    progress_clock: Callable[[], float] = time.monotonic
    """Seconds, for the once-a-second byte progress of large uploads (``tasks.observe.upload_progress``)."""
    opener: SourceOpener = field(init=False)
    policy: RetryPolicy = field(init=False)
    dedup: DedupStore = field(init=False)
    limiter: FleetLimiter | None = None
    ticket_endpoint_missing: bool = False
    """``auto``: the ticket endpoint answered 404 or 405 once; this process uses the binary endpoint."""

    def __post_init__(self) -> None:
        # The runner holds the secrets, so it makes sure they are masked wherever it writes.
        redaction.protect(self.settings.api_key, self.settings.callback_secret)
        if self.limiter is None:
            self.limiter = FleetLimiter(
                self.store.redis,
                per_second=self.settings.rate_limit,
                max_concurrent=self.settings.max_concurrent_uploads,
                # Renewed with the job's lease (worker.renewer): a dead worker's slots come free soon.
                lease_seconds=SLOT_LEASES * self.settings.lease,
            )
        self.policy = RetryPolicy.from_settings(self.settings)
        self.opener = SourceOpener(self.settings)
        self.dedup = DedupStore(self.store.redis, self.settings.dedup_margin)

    def run(
        self,
        job_id: str,
        source: str,
        options: JobOptions = NO_OPTIONS,
        *,
        time_budget: float | None = None,
        worker: str | None = None,
        tag: str | None = None,
    ) -> results.JobDoc:
        """``run_delivery``, for callers that need only the terminal document."""
        return self.run_delivery(job_id, source, options, time_budget=time_budget, worker=worker, tag=tag).doc

    def run_delivery(
        self,
        job_id: str,
        source: str,
        options: JobOptions = NO_OPTIONS,
        *,
        time_budget: float | None = None,
        worker: str | None = None,
        tag: str | None = None,
        held: lease.JobLease | None = None,
        claimed: Ahead | None = None,
        then: Callable[[datetime], ClaimAsk | None] | None = None,
    ) -> Outcome:
        """Run one delivery of the job to a terminal document.

        The delivery first claims the job (``tasks.store.fencing``): every write it makes
        holds that generation, and it stops with ``Superseded`` or ``LeaseLost``
        (nothing more written) once another delivery holds the job. ``time_budget``
        (default ``WSUPLOAD_JOB_TIMEOUT``) bounds the delivery, waits included;
        ``worker`` is shown in the document; ``tag`` is the message's delivery tag,
        whose lease the worker renews while the job shows signs of life. ``held``: the
        lease of a bulk message whose next job this is (the caller keeps it in the book,
        with that tag): the job runs under it instead of a lease of its own, so a lease
        lost during one job stops the jobs after it.

        Where the broker is the results Redis, the claim takes the job only while the
        delivery's lease is in kombu's index; once it is gone (another delivery may run the
        message) this raises ``LeaseLost`` having claimed nothing.

        A bulk message's next job is claimed in the same call as this job's terminal write:
        ``then``, asked as the job ends (with the time), names that claim (``ask``; None for
        none), and ``Outcome.next_claim`` carries it to that job's delivery as ``claimed``.
        """
        at_once = _at_once(source, options)
        if held is not None:
            held.check_held()
        if claimed is None:
            now = results.utcnow()
            ask = self.ask(job_id, source, options, worker=worker, tag=tag, now=now)
            claim = self.store.claim(job_id, ask.first, ask.lease_tag)
        else:
            claim, now = claimed.claim, claimed.at
        if claim.lease_gone:
            raise LeaseLost(f"job {job_id}: its message's lease expired before the job was claimed; not run here")
        doc = results.decode_doc(claim.stored, job_id, now) or results.new_doc(job_id, source, now)
        if claim.ended or results.is_end(doc["status"]):
            # A redelivered message for a job that already finished (its ack was
            # lost): uploading again would only waste the bytes.
            log.info("job %s has already ended (%s); not running it again", job_id, doc["status"])
            return Outcome(doc, ended_here=False)
        if options.expired(time.time()):
            # Met after its deadline (no worker ran, a backlog, a redelivery): it ends without a request.
            late = _State(doc, None, claim.generation, then=then)
            message = f"its deadline {options.deadline_at} passed before a worker started it; nothing was sent"
            doc = self._end(late, results.expired(doc, results.utcnow(), message))
            return Outcome(doc, ended_here=True, next_claim=late.next_claim)
        budget = self.settings.job_timeout if time_budget is None else time_budget
        deadline = time.monotonic() + budget
        state = _State(results.started(doc, now, claim.generation, worker), deadline, claim.generation, then=then)
        # What the claim wrote must be what the first attempt would write; if not, that attempt writes its own.
        written = claim.written
        state.attempt_written = written is not None and results.stored_as(written, results.attempting(state.doc))
        if claim.too_many(self.settings.max_deliveries):
            error = TooManyDeliveries(
                f"delivered {claim.generation} times without ending: each worker that took it died, hung "
                f"or stopped with it (WSUPLOAD_MAX_DELIVERIES={self.settings.max_deliveries})"
            )
            doc = self._end(state, results.failed(state.doc, error, results.utcnow()))
            return Outcome(doc, ended_here=True, next_claim=state.next_claim)
        if claim.generation > 1:
            telemetry.resumed()
        grace = self.settings.connect_timeout + self.settings.read_timeout + self.settings.lease
        if held is not None:
            held.rearm(job_id, grace, deadline)
        own = lease.holding(lease.JobLease(job_id, tag, grace, deadline)) if held is None else contextlib.nullcontext()
        with own, telemetry.running():
            if not at_once:
                # Opening may take a while (a store's HEAD and GET, hashing): say "running" now.
                # A local file opens in microseconds: its first attempt's write says it instead.
                self._save(state)
            try:
                # The loop for SourceChanged only: every other error is retried (or not) inside,
                # where the opened source stays the same. Both spend the document's attempts.
                doc = self._retrying(state, lambda: self._open_and_deliver(state, source, options), retry=_changed)
            except Cancelled:
                log.info("job %s: cancelled by a producer while it ran; this delivery stops", job_id)
                raise  # the producer wrote the end: nothing more to write
            except Expired as error:
                doc = results.expired(state.doc, results.utcnow(), error.message)
            except UploadError as error:
                doc = results.failed(state.doc, self._redacted(error), results.utcnow())
            except (LeaseLost, Superseded, redis.RedisError):
                raise  # this delivery stops (or, Redis away, its message goes back): nothing to record
            except Exception as exc:
                log.exception("job %s: internal error", job_id)
                internal = InternalError(f"internal error: {type(exc).__name__}: {exc}")
                doc = results.failed(state.doc, self._redacted(internal), results.utcnow())
        doc = self._end(state, doc)
        return Outcome(doc, ended_here=True, next_claim=state.next_claim)

    def ask(
        self,
        job_id: str,
        source: str,
        options: JobOptions = NO_OPTIONS,
        *,
        worker: str | None = None,
        tag: str | None = None,
        now: datetime,
    ) -> ClaimAsk:
        """The claim a delivery of this job starts with (``run_delivery``'s arguments).

        A local file opens in microseconds and, with no fleet limit to wait for, its first
        attempt starts at once: the claim writes that attempt's document in the same round
        trip. Anything slower says "running" on its own first (``run_delivery``).
        """
        first = None
        late = options.expired(now.timestamp())  # it ends at once: its claim writes no attempt
        if _at_once(source, options) and not late and not (self.limiter is not None and self.limiter.active):
            first = FirstAttempt(
                self.settings.max_deliveries,
                self.policy.max_attempts,
                results.isoformat(now),
                worker or "unknown",
            )
        # kombu's lease index lives in the broker's Redis: checked only where that is the results Redis.
        return ClaimAsk(job_id, first, tag if tag and self.settings.broker_is_results_redis else "")

    def _save(self, state: _State) -> None:
        state.attempt_written = False  # what the claim wrote is replaced
        self.store.save(state.doc, state.generation)

    def _end(self, state: _State, doc: results.JobDoc) -> results.JobDoc:
        state.doc = doc
        now = results.utcnow()
        ask = state.then(now) if state.then is not None and state.generation is not None else None
        if ask is None:
            self._save(state)
        else:
            assert state.generation is not None
            state.attempt_written = False
            claim = self.store.save_then_claim(state.doc, state.generation, ask)
            state.next_claim = None if claim is None else Ahead(claim, now)
        telemetry.job_ended(doc, time.monotonic() - state.began)
        self._log_outcome(doc)
        return doc

    def fail(self, job_id: str, source: str, error: UploadError) -> Outcome:
        """Record a failure raised outside ``run`` (a message that cannot run, an internal error)."""
        doc = self.store.get(job_id) or results.new_doc(job_id, source, results.utcnow())
        if results.is_end(doc["status"]):
            return Outcome(doc, ended_here=False)
        doc = results.failed(doc, self._redacted(error), results.utcnow())
        if not self.store.save(doc):  # it ended meanwhile: that ending stands
            return Outcome(self.store.get(job_id) or doc, ended_here=False)
        telemetry.job_ended(doc)
        self._log_outcome(doc)
        return Outcome(doc, ended_here=True)

    def _open_and_deliver(self, state: _State, source: str, options: JobOptions) -> results.JobDoc:
        """Open (and validate) the source, then deliver it; called again after ``SourceChanged``."""
        opened = self._retrying(state, lambda: self.opener.open(source), self.policy.max_attempts)
        with opened:
            return self._deliver(state, opened, options)

    def _deliver(self, state: _State, opened: OpenedSource, options: JobOptions) -> results.JobDoc:
        """Upload the source; or reuse an earlier upload of the same bytes (``dedup``);
        or hand out a presigned URL when it is too large and that is allowed."""
        limit = self.settings.max_bytes
        if opened.size > limit:
            message = f"{opened.source!r} is {opened.size} bytes, over the limit of {limit} bytes (WSUPLOAD_MAX_BYTES)"
            if self.settings.oversize_policy != "presign":
                raise TooLarge(message)
            presign = opened.presign
            if presign is None:
                raise TooLarge(f"{message}; its store cannot presign a URL (WSUPLOAD_OVERSIZE_POLICY=presign)")
            ttl = self.settings.presign_ttl
            url = self._retrying(state, lambda: presign(ttl), self.policy.max_attempts)
            return results.presigned(state.doc, opened, url, results.utcnow(), ttl)

        digest = None
        if options.dedup:
            digest = self._retrying(state, lambda: content_digest(opened), self.policy.max_attempts)
            earlier = self.dedup.find(digest, results.utcnow())
            if earlier is not None:
                telemetry.dedup_hit()
                return results.reused(state.doc, earlier, results.utcnow())

        made = state.doc["attempts"]
        if made >= self.policy.max_attempts:
            raise RetriesExhausted(
                f"no attempts left: {made} of {self.policy.max_attempts} were already made "
                "(an earlier worker stopped mid-upload)"
            )

        flow = options.upload_flow or self.settings.upload_flow
        transfer = Transfer()  # the direct flow's ticket, kept across this source's attempts

        def send() -> tuple[dict[str, Any], str]:
            """One request (or a ticket and its PUT): the result, and the flow that made it."""
            if flow == "binary" or (flow == "auto" and self.ticket_endpoint_missing):
                return self.client.upload(opened), "binary"
            if not isinstance(self.client, DirectUploader):
                raise InternalError("this worker's client has no direct flow")
            try:
                return self.client.upload_direct(opened, transfer), "direct"
            except ClientError as error:
                missing = error.http_status in (404, 405) and transfer.requests[-1:] == ["ticket"]
                if flow != "auto" or not missing:
                    raise
                self._ticket_endpoint_missing(error)
                return self.client.upload(opened), "binary"

        def attempt() -> tuple[dict[str, Any], str]:
            assert self.limiter is not None
            try:
                with self.limiter.slot(state.deadline):
                    lease.tick()
                    if options.expired(time.time()):
                        # Its deadline passed during a retry's wait (or a fleet slot's): no more attempts.
                        raise Expired(
                            f"its deadline {options.deadline_at} passed after {state.doc['attempts']} attempt(s);"
                            " not retried"
                        )
                    state.doc = results.attempting(state.doc)
                    if state.attempt_written:
                        state.attempt_written = False  # the claim wrote this document
                    else:
                        self._save(state)
                    telemetry.attempt()
                    reporter = self._progress(state, opened.size)
                    try:
                        if reporter is None:
                            return send()
                        with upload_progress.reporting(reporter):
                            return send()
                    except Exception:
                        lease.check_cancelled()  # a request cut by a cancel: the cancel, not its error
                        raise
            except RateLimitTimeout as exc:
                raise RetriesExhausted(f"{exc} (WSUPLOAD_RATE_LIMIT / WSUPLOAD_MAX_CONCURRENT_UPLOADS)") from None

        # SourceChanged passes through to run()'s loop, which opens the source again.
        result, used = self._retrying(state, attempt, retry=_retried_in_place)
        telemetry.uploaded(opened.size, "direct" if used == "direct" else "binary")
        now = results.utcnow()
        doc = results.succeeded(
            state.doc, result, now, self.settings.retention, "direct" if used == "direct" else "upload"
        )
        if digest is not None:
            self.dedup.remember(digest, doc["job_id"], doc["result"], doc["expires_at"], now)
        return doc

    def _progress(self, state: _State, size: int) -> upload_progress.Reporter | None:
        """An attempt's byte progress, for a file over ``WSUPLOAD_PROGRESS_THRESHOLD``: through the fenced save."""
        if not upload_progress.tracked(size, self.settings.progress_threshold):
            return None

        def write(bytes_sent: int, bytes_total: int) -> None:
            self.store.save(results.with_progress(state.doc, bytes_sent, bytes_total), state.generation)

        return upload_progress.Reporter(write, self.progress_clock)

    def _ticket_endpoint_missing(self, error: ClientError) -> None:
        if not self.ticket_endpoint_missing:
            self.ticket_endpoint_missing = True
            log.warning(
                "the ticket endpoint answered HTTP %s (%s): WSUPLOAD_UPLOAD_FLOW=auto uses the binary endpoint "
                "for the rest of this process",
                error.http_status,
                error.message,
            )

    def _retrying(
        self,
        state: _State,
        work: Callable[[], T],
        attempts: int | None = None,
        *,
        retry: Callable[[BaseException], bool] = is_transient,
    ) -> T:
        """Call ``work`` under the retry policy, recording each wait in the document.

        ``attempts``: how many calls at most. None: each call makes upload
        attempts (counted in the document), and the budget is what the document
        has left of ``WSUPLOAD_MAX_ATTEMPTS``. ``retry``: the transient errors
        this loop retries; any other error passes through it unchanged.
        """
        tries = [0]
        limit = self.policy.max_attempts if attempts is None else attempts

        def spent() -> bool:
            uploads_spent = attempts is None and state.doc["attempts"] >= self.policy.max_attempts
            return uploads_spent or tries[0] >= limit

        def counted() -> T:
            tries[0] += 1
            return work()

        def wait(retry_state: RetryCallState) -> float:
            error = retry_state.outcome.exception() if retry_state.outcome else None
            assert error is not None
            return next_delay(error, max(tries[0], state.doc["attempts"]), self.policy, self.rand)

        def before_sleep(retry_state: RetryCallState) -> None:
            error = retry_state.outcome.exception() if retry_state.outcome else None
            assert isinstance(error, UploadError)
            delay = retry_state.upcoming_sleep
            if isinstance(error, RateLimited) and self.limiter is not None:
                self.limiter.pause(delay)  # the whole fleet backs off, not just this job
            log.warning(
                "job %s: %s (%s); retrying in %.2f s",
                state.doc["job_id"],
                error.message,
                error.kind,
                delay,
                extra=retry_fields(state.doc, error, delay) if self.settings.log_format == JSON_LOGS else None,
            )
            telemetry.retry(error.kind)
            lease.allow(delay + self.settings.lease)
            state.doc = results.retrying(state.doc, self._redacted(error), delay, results.utcnow())
            self._save(state)

        try:
            # Nearly every call succeeds at once: make the first try here, and build tenacity's
            # loop (a Retrying, its stop and its per-try bookkeeping: ~15 us, three times a job)
            # only once a try has failed with an error this loop retries.
            try:
                return counted()
            except Exception as error:
                if not retry(error):
                    raise
                failed: list[BaseException] = [error]

            def resumed() -> T:
                """The loop's first try is the one that just failed: it is replayed, not made again."""
                if failed:
                    raise failed.pop()
                return counted()

            stop: stop_base = _stop_when(spent)
            if state.deadline is not None:
                stop = stop | stop_before_delay(max(0.0, state.deadline - time.monotonic()))
            retrying = Retrying(
                retry=retry_if_exception(retry),
                stop=stop,
                wait=wait,
                sleep=self.sleep,
                before_sleep=before_sleep,
                reraise=True,
            )
            return retrying(resumed)
        except TransientError as error:
            if not retry(error):
                raise  # not this loop's to retry
            made = state.doc["attempts"] if attempts is None else tries[0]
            why = f"gave up after {made} attempts"
            if not spent():
                why += ": the next wait would pass the task's time limit"
            elif _changed(error):
                why += ": the file kept changing while it was uploaded"
            raise RetriesExhausted(f"{why}; last error: {error.message}", error.http_status) from error

    def _redacted(self, error: UploadError) -> UploadError:
        clean = redaction.redact(error.message)
        if clean == error.message:
            return error
        return type(error)(clean, error.http_status, error.retry_after)

    def _log_outcome(self, doc: results.JobDoc) -> None:
        # The job's fields are for machines (WSUPLOAD_LOG_FORMAT=json): the text shows none, so
        # a text line is spared reading them from the document (parsing its two times among them).
        fields = outcome_fields(doc) if self.settings.log_format == JSON_LOGS else None
        if doc["status"] == results.SUCCEEDED:
            log.info(
                "job %s succeeded after %d attempt(s) (%s): %s",
                doc["job_id"],
                doc["attempts"],
                doc["result"].get("method", "upload"),
                doc["result"]["download_url"],
                extra=fields,
            )
        else:
            error = doc["error"]
            status = doc["status"]  # failed, or expired
            log.warning("job %s %s (%s): %s", doc["job_id"], status, error["kind"], error["message"], extra=fields)
