"""wsupload's one error hierarchy: every class it raises on purpose, drawn whole.

    WsuploadError                      the root: ``except WsuploadError`` catches all of them
    ├── ConfigError                    bad setting, refused at startup
    │   └── TlsRefused                 a TLS certificate or hostname that does not verify, at startup
    ├── EnqueueError                   a producer call queued none of its jobs (or, on RabbitMQ, not all published)
    ├── PublishError                   RabbitMQ did not confirm every message of a publish
    ├── JobFailed                      a job ended failed in this delivery: Celery's FAILURE, after the fact
    ├── JobError                       a job ended without success: what AsyncResult.get() raises (wsupload+redis://)
    ├── LeaseLost                      this delivery may no longer act for its job: another worker has it
    ├── Superseded                     a write was refused: another delivery holds the job, or it has ended
    └── UploadError                    ends up in a job's ``error`` field
        ├── Cancelled                  cancelled            cancelled by a producer, queued or running
        ├── Expired                    expired              its deadline (``expires_in``) passed before it could end
        ├── PermanentError             never retried: exactly one request, or none
        │   ├── InvalidInput           invalid_input        bad source, caught before sending
        │   │   └── SourceNotAllowed   invalid_input        … outside the allowed roots or buckets (check_source)
        │   ├── InvalidMessage         invalid_message      a message the worker cannot read as a job
        │   │   └── NoJobId            invalid_message      … and it names no job to record that in
        │   ├── SourceUnavailable      source_unavailable   object store: no bucket/object, access denied
        │   ├── TooLarge               too_large            over WSUPLOAD_MAX_BYTES, or HTTP 413
        │   ├── Rejected               rejected             HTTP 400
        │   ├── Unauthorized           unauthorized         HTTP 401
        │   ├── ClientError            client_error         any other 4xx but 408/429
        │   ├── UnexpectedResponse     unexpected_response  3xx, or a body not of the documented shape
        │   ├── RetriesExhausted       retries_exhausted    the last transient error, out of attempts
        │   ├── TimeLimitExceeded      time_limit           WSUPLOAD_JOB_TIMEOUT ran out
        │   ├── TooManyDeliveries      too_many_deliveries  WSUPLOAD_MAX_DELIVERIES workers took it and none ended it
        │   └── InternalError          internal_error       a bug in wsupload, logged with its traceback
        └── TransientError             retried with backoff
            ├── ConnectionFailed       connection_error     refused, reset, DNS, broken pipe
            ├── UploadTimeout          timeout              connect or read stall
            ├── RateLimited            rate_limited         HTTP 429
            ├── StoreError             store_error          object store: timeout, 5xx, throttling
            ├── SourceChanged          source_changed       the file changed while it was sent
            ├── TicketRefused          ticket_refused       direct flow: the storage refused a PUT (403), once
            └── ServerError            server_error         HTTP 5xx and 408

The second column is the ``error.kind`` a result document carries. ``LeaseLost`` and
``Superseded`` end a delivery, never the job. ``Cancelled`` is the error of a job ended
``cancelled`` and, raised inside a worker, stops the delivery that runs it (the producer
wrote the end: the delivery writes nothing more). ``Expired`` is the error of a job ended
``expired``: a worker met it after its ``deadline_at`` (never retried, nothing sent).
``tests/unit/test_error_tree.py`` keeps this drawing equal to the real class tree.

This module imports nothing of wsupload's, so every layer (``config`` first) can
import it. Celery pickles exceptions across processes, so every constructor passes
all of its arguments to ``super().__init__``. Messages never contain the API key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from wsupload.tasks.enqueue import Job


class WsuploadError(Exception):
    """Base class of every error wsupload raises on purpose."""


class ConfigError(WsuploadError):
    """Invalid configuration, found at startup. Each problem is one line that
    names the variable, so the CLI can print it without a traceback."""

    def __init__(self, problems: list[str] | str) -> None:
        if isinstance(problems, str):
            problems = [problems]
        super().__init__(problems)
        self.problems: list[str] = list(problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


class TlsRefused(ConfigError):
    """At start, a server's TLS certificate or hostname (or the client's certificate) did not
    verify, or a certificate file could not be read (``worker.tls``): one line, no secret."""


class UploadError(WsuploadError):
    kind: ClassVar[str] = "upload_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, http_status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, http_status, retry_after)
        self.message = message
        self.http_status = http_status
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message

    def to_doc(self) -> dict[str, Any]:
        """The ``error`` object of a result document."""
        return {
            "kind": self.kind,
            "http_status": self.http_status,
            "message": self.message,
            "retryable": self.retryable,
        }


class Cancelled(UploadError):
    """The job was cancelled (``status: cancelled``): by a producer, before or while it ran."""

    kind = "cancelled"


class Expired(UploadError):
    """The job's deadline (``deadline_at``, from the producer's ``expires_in``) passed before it ended
    (``status: expired``): a worker met it late, or at the attempt after a retry's wait; nothing sent."""

    kind = "expired"


class PermanentError(UploadError):
    """The same request would fail the same way: do not send it again."""


class InvalidInput(PermanentError):
    kind = "invalid_input"


class SourceNotAllowed(InvalidInput):
    """A source outside ``WSUPLOAD_ALLOWED_ROOTS`` or ``WSUPLOAD_ALLOWED_BUCKETS``, refused before it is enqueued."""


class InvalidMessage(PermanentError):
    """The message's arguments are not ``[job_id, source]`` (+ ``options``), or it cannot be decoded."""

    kind = "invalid_message"


class SourceUnavailable(PermanentError):
    kind = "source_unavailable"


class TooLarge(PermanentError):
    kind = "too_large"


class Rejected(PermanentError):
    kind = "rejected"


class Unauthorized(PermanentError):
    kind = "unauthorized"


class ClientError(PermanentError):
    kind = "client_error"


class UnexpectedResponse(PermanentError):
    kind = "unexpected_response"


class RetriesExhausted(PermanentError):
    kind = "retries_exhausted"
    # The cause was transient: the same job submitted later may well succeed.
    retryable = True


class TimeLimitExceeded(PermanentError):
    kind = "time_limit"


class TooManyDeliveries(PermanentError):
    kind = "too_many_deliveries"


class InternalError(PermanentError):
    kind = "internal_error"


class TransientError(UploadError):
    """A later attempt may succeed; ``retry_after`` is the server's own wish, if any."""

    retryable = True


class ConnectionFailed(TransientError):
    kind = "connection_error"


class UploadTimeout(TransientError):
    kind = "timeout"


class RateLimited(TransientError):
    kind = "rate_limited"


class StoreError(TransientError):
    kind = "store_error"


class SourceChanged(TransientError):
    """The source's size or modification time moved during the upload: the bytes sent are not the file."""

    kind = "source_changed"


class TicketRefused(TransientError):
    """The storage refused a direct upload's PUT (403: an expired or refused signature).

    Retried once, with a new ticket; a second refusal is a ``ClientError``.
    """

    kind = "ticket_refused"


class ServerError(TransientError):
    kind = "server_error"


class JobError(WsuploadError):
    """A job ended without success, as a Celery client sees it: ``AsyncResult(job_id).get()`` raises it.

    Raised by wsupload's Celery result backend (``wsupload.celery_backend``) for a job whose
    document ended ``failed`` (state FAILURE) or ``cancelled``/``expired`` (state REVOKED), or
    any other end that is not ``succeeded``. ``error`` is the document's error object
    (``{"kind", "http_status", "message", "retryable"}``; a document without one gets
    ``{"kind": <status>}``), ``status`` the document's status and ``doc`` the whole document.
    """

    def __init__(self, job_id: str, status: str, error: dict[str, Any], doc: dict[str, Any] | None = None) -> None:
        super().__init__(job_id, status, error, doc)
        self.job_id = job_id
        self.status = status
        self.error = error
        self.doc = doc if doc is not None else {}

    @property
    def kind(self) -> str:
        return str(self.error.get("kind") or self.status)

    def __str__(self) -> str:
        message = self.error.get("message")
        return f"job {self.job_id} {self.status} ({self.kind})" + (f": {message}" if message else "")


class JobFailed(WsuploadError):
    """Raised by ``wsupload.upload`` once the job it ran has ended ``failed``, outcome recorded.

    Not a job error but Celery's view of one: the task ends in FAILURE (Flower,
    ``celery events``) with the job's readable, already redacted error as its text,
    while its message is acknowledged (``task_acks_on_failure_or_timeout``) and never
    retried. Declared in the task's ``throws``, so Celery logs it as one line, no traceback.
    """

    def __init__(self, job_id: str, kind: str, message: str) -> None:
        super().__init__(job_id, kind, message)
        self.job_id = job_id
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    def __repr__(self) -> str:
        # What Celery puts in the task-failed event (Flower's "exception"): the readable error.
        return f"{type(self).__name__}({str(self)!r})"


class NoJobId(InvalidMessage):
    """The message names no job: there is nothing to record its failure in."""


class LeaseLost(WsuploadError):
    """This delivery may no longer act for its job: another worker has it, or it was handed back."""


class Superseded(WsuploadError):
    """A write was refused: another delivery holds the job now, or it has ended."""


class PublishError(WsuploadError):
    """RabbitMQ did not confirm every message (refused, unreachable, or closed the channel)."""


class EnqueueError(WsuploadError):
    """Jobs were not enqueued, all of them: a call is queued whole or not at all.

    ``str()`` is one readable line. ``jobs`` are the jobs the call would have
    queued. ``in_doubt`` is true only when the connection failed during the
    commit and Redis could not be asked afterwards: then either every one of
    ``jobs`` is queued or none is (``status`` tells which once Redis answers).
    ``queued`` is true when, on RabbitMQ, the jobs were committed but not all
    their messages confirmed: they are queued, and the workers' sweep publishes them.
    """

    def __init__(
        self,
        message: str,
        jobs: list[Job],
        in_doubt: bool = False,
        batch_id: str | None = None,
        queued: bool = False,
    ) -> None:
        super().__init__(message, jobs, in_doubt, batch_id, queued)
        self.message = message
        self.jobs = jobs
        self.in_doubt = in_doubt
        self.batch_id = batch_id
        self.queued = queued

    def __str__(self) -> str:
        return self.message
