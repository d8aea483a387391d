"""Running one upload job: validate, upload with retries, record the outcome.

Celery-free, so it is unit-tested with fakeredis and a fake client. It always
ends a job in ``succeeded`` or ``failed`` with a readable error, except when
Redis itself is unreachable: then it raises, and the task hands the message back
to the broker rather than lose the job.

Attempts are counted in the job's document, not per delivery: a job whose
worker died mid-upload resumes with what is left of ``WSUPLOAD_MAX_ATTEMPTS``,
so a file that kills workers cannot loop forever.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_before_delay
from tenacity.stop import stop_base

from config.settings import Settings
from tasks import results
from tasks.errors import RetriesExhausted, TransientError, UploadError
from tasks.retry_policy import RetryPolicy, is_transient, next_delay
from tasks.sources import OpenedSource, open_source

log = logging.getLogger(__name__)


class Uploader(Protocol):
    def upload(self, source: OpenedSource) -> dict[str, Any]: ...


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "[redacted]") if secret else text


@dataclass
class _State:
    doc: results.JobDoc


@dataclass
class JobRunner:
    settings: Settings
    store: results.ResultStore
    client: Uploader
    sleep: Callable[[float], None] = time.sleep
    rand: Callable[[], float] = random.random
    policy: RetryPolicy = field(init=False)

    def __post_init__(self) -> None:
        self.policy = RetryPolicy.from_settings(self.settings)

    def run(self, job_id: str, source: str, *, time_budget: float | None = None) -> results.JobDoc:
        """Run the job to a terminal document. ``time_budget`` bounds retry waits."""
        doc = self.store.get(job_id) or results.new_doc(job_id, source, results.utcnow())
        if doc["status"] in results.TERMINAL:
            # A redelivered message for a job that already finished (its ack was
            # lost): uploading again would only waste the bytes.
            log.info("job %s is already %s; not running it again", job_id, doc["status"])
            return doc
        state = _State(results.started(doc, results.utcnow()))
        self.store.save(state.doc)
        try:
            with open_source(
                source, max_bytes=self.settings.max_bytes, allowed_roots=self.settings.allowed_roots
            ) as opened:
                result = self._upload_with_retries(state, opened, time_budget)
            doc = results.succeeded(state.doc, result, results.utcnow(), self.settings.retention)
        except UploadError as error:
            doc = results.failed(state.doc, self._redacted(error), results.utcnow())
        self.store.save(doc)
        self._log_outcome(doc)
        return doc

    def fail(self, job_id: str, source: str, error: UploadError) -> results.JobDoc:
        """Record a failure raised outside ``run`` (a time limit, an internal error)."""
        doc = self.store.get(job_id) or results.new_doc(job_id, source, results.utcnow())
        if doc["status"] not in results.TERMINAL:
            doc = results.failed(doc, self._redacted(error), results.utcnow())
            self.store.save(doc)
            self._log_outcome(doc)
        return doc

    def _upload_with_retries(self, state: _State, opened: OpenedSource, time_budget: float | None) -> dict[str, Any]:
        """Upload under the retry policy; ``state.doc`` follows every attempt."""
        made = state.doc["attempts"]
        remaining = self.policy.max_attempts - made
        if remaining <= 0:
            raise RetriesExhausted(
                f"no attempts left: {made} of {self.policy.max_attempts} were already made "
                "(an earlier worker stopped mid-upload)"
            )

        def attempt() -> dict[str, Any]:
            state.doc = results.attempting(state.doc)
            self.store.save(state.doc)
            return self.client.upload(opened)

        def wait(retry_state: RetryCallState) -> float:
            error = retry_state.outcome.exception() if retry_state.outcome else None
            assert error is not None
            return next_delay(error, state.doc["attempts"], self.policy, self.rand)

        def before_sleep(retry_state: RetryCallState) -> None:
            error = retry_state.outcome.exception() if retry_state.outcome else None
            assert isinstance(error, UploadError)
            delay = retry_state.upcoming_sleep
            log.warning(
                "job %s attempt %d failed (%s); retrying in %.2f s",
                state.doc["job_id"],
                state.doc["attempts"],
                error.kind,
                delay,
            )
            state.doc = results.retrying(state.doc, self._redacted(error), delay, results.utcnow())
            self.store.save(state.doc)

        stop: stop_base = stop_after_attempt(remaining)
        if time_budget is not None:
            stop = stop | stop_before_delay(time_budget)
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop,
            wait=wait,
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except TransientError as error:
            attempts = state.doc["attempts"]
            if attempts < self.policy.max_attempts:
                why = f"gave up after {attempts} attempts: the next wait would pass the task's time limit"
            else:
                why = f"gave up after {attempts} attempts"
            raise RetriesExhausted(f"{why}; last error: {error.message}", error.http_status) from error

    def _redacted(self, error: UploadError) -> UploadError:
        clean = redact(error.message, self.settings.api_key)
        if clean == error.message:
            return error
        return type(error)(clean, error.http_status, error.retry_after)

    @staticmethod
    def _log_outcome(doc: results.JobDoc) -> None:
        if doc["status"] == results.SUCCEEDED:
            log.info(
                "job %s succeeded after %d attempt(s): %s",
                doc["job_id"],
                doc["attempts"],
                doc["result"]["download_url"],
            )
        else:
            error = doc["error"]
            log.warning("job %s failed (%s): %s", doc["job_id"], error["kind"], error["message"])
