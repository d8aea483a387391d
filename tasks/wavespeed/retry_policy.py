"""Retry policy as pure functions: which answers are retried, and how long to wait.

Nothing here does I/O or sleeps, so the whole policy is unit-tested directly.
The upload task feeds these into tenacity.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from wsupload.config.settings import Settings
from wsupload.errors import (
    ClientError,
    RateLimited,
    Rejected,
    ServerError,
    TooLarge,
    TransientError,
    Unauthorized,
    UnexpectedResponse,
    UploadError,
)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    retry_after_max: float = 120.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            backoff_base=settings.backoff_base,
            backoff_max=settings.backoff_max,
            retry_after_max=settings.retry_after_max,
        )


def error_for_status(status: int, message: str, retry_after: float | None = None) -> UploadError:
    """The error an HTTP status (or a body ``code``) stands for.

    Unlike urllib3's defaults, 413 is permanent: the same bytes stay too large.
    """
    if status == 400:
        return Rejected(message, status)
    if status == 401:
        return Unauthorized(message, status)
    if status == 413:
        return TooLarge(message, status)
    if status == 429:
        return RateLimited(message, status, retry_after)
    if status == 408 or 500 <= status <= 599:
        return ServerError(message, status, retry_after)
    if 400 <= status <= 499:
        return ClientError(message, status)
    return UnexpectedResponse(message, status)


def is_transient(error: BaseException) -> bool:
    return isinstance(error, TransientError)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    Returns None when absent or unparseable; a date in the past means 0.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def compute_backoff(attempt: int, *, base: float, maximum: float, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with full jitter (the AWS SDK's standard mode).

    ``attempt`` is the number of attempts made so far (1 after the first).
    Full jitter spreads a fleet's retries so an outage does not end in a stampede.
    """
    ceiling = min(maximum, base * 2.0 ** max(0, attempt - 1))
    return rand() * ceiling


def next_delay(
    error: BaseException,
    attempt: int,
    policy: RetryPolicy,
    rand: Callable[[], float] = random.random,
) -> float:
    """How long to wait before the next attempt.

    A server's ``Retry-After`` is honoured as asked, not clipped to the backoff
    ceiling, only to its own cap ``retry_after_max``.
    """
    retry_after: float | None = getattr(error, "retry_after", None)
    if retry_after is not None:
        return min(float(retry_after), policy.retry_after_max)
    return compute_backoff(attempt, base=policy.backoff_base, maximum=policy.backoff_max, rand=rand)
