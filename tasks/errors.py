"""The job-failure branches of wsupload's error hierarchy.

    WsuploadError                      (config.errors)
    ├── ConfigError                    bad setting, refused at startup
    ├── JobFailed                      a job ended failed in this delivery: Celery's FAILURE, after the fact
    └── UploadError                    ends up in a job's ``error`` field
        ├── PermanentError             never retried: exactly one request, or none
        │   ├── InvalidInput           invalid_input        bad source, caught before sending
        │   ├── InvalidMessage         invalid_message      a message the worker cannot read as a job
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
            └── ServerError            server_error         HTTP 5xx and 408

Outside ``UploadError``, a delivery that may no longer act for its job stops with
``LeaseLost`` (``tasks.recovery.lease``) or ``Superseded`` (``tasks.store.fencing``): they end the
delivery, never the job.

Celery pickles exceptions across processes, so every constructor passes all of
its arguments to ``super().__init__``. Messages never contain the API key.
"""

from __future__ import annotations

from typing import Any, ClassVar

from wsupload.config.errors import WsuploadError


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


class PermanentError(UploadError):
    """The same request would fail the same way: do not send it again."""


class InvalidInput(PermanentError):
    kind = "invalid_input"


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


class ServerError(TransientError):
    kind = "server_error"


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
