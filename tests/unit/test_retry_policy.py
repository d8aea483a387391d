"""The retry policy: classification, backoff and Retry-After, without I/O or sleeping."""

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from tenacity import RetryCallState, Retrying, wait_exponential, wait_random_exponential

from wsupload.errors import (
    ConnectionFailed,
    PermanentError,
    RateLimited,
    ServerError,
    TransientError,
    UploadTimeout,
)
from wsupload.tasks.wavespeed.retry_policy import (
    RetryPolicy,
    compute_backoff,
    error_for_status,
    is_transient,
    next_delay,
    parse_retry_after,
)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "rejected"), (401, "unauthorized"), (413, "too_large"), (403, "client_error"), (404, "client_error")],
)
def test_permanent_statuses(status: int, kind: str) -> None:
    error = error_for_status(status, "msg")
    assert isinstance(error, PermanentError)
    assert not is_transient(error)
    assert (error.kind, error.http_status, error.retryable) == (kind, status, False)


@pytest.mark.parametrize(("status", "kind"), [(408, "server_error"), (429, "rate_limited"), (500, "server_error")])
def test_transient_statuses(status: int, kind: str) -> None:
    error = error_for_status(status, "msg")
    assert isinstance(error, TransientError)
    assert is_transient(error)
    assert (error.kind, error.retryable) == (kind, True)


@pytest.mark.parametrize("status", [502, 503, 504, 599])
def test_every_5xx_is_transient(status: int) -> None:
    assert is_transient(error_for_status(status, "x"))


def test_network_errors_are_transient() -> None:
    assert is_transient(ConnectionFailed("reset"))
    assert is_transient(UploadTimeout("stalled"))


def test_retry_after_seconds_and_dates() -> None:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == 90.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=90), usegmt=True), now) == 0.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    ceilings = [compute_backoff(n, base=1.0, maximum=10.0, rand=lambda: 1.0) for n in range(1, 7)]
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_is_full_jitter() -> None:
    assert compute_backoff(3, base=1.0, maximum=10.0, rand=lambda: 0.0) == 0.0
    assert compute_backoff(3, base=1.0, maximum=10.0, rand=lambda: 0.5) == 2.0


def test_retry_after_is_honoured_beyond_the_backoff_ceiling() -> None:
    policy = RetryPolicy(backoff_base=0.1, backoff_max=0.2, retry_after_max=120)
    assert next_delay(RateLimited("slow down", 429, 45.0), 1, policy, rand=lambda: 1.0) == 45.0


def test_retry_after_is_capped_by_its_own_limit() -> None:
    policy = RetryPolicy(retry_after_max=60)
    assert next_delay(ServerError("busy", 503, 3600.0), 1, policy) == 60.0


def test_without_retry_after_the_backoff_applies() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=30.0)
    assert next_delay(ServerError("busy", 503), 3, policy, rand=lambda: 1.0) == 4.0


@pytest.mark.parametrize("attempt", range(1, 10))
def test_the_backoff_is_tenacitys_full_jitter(attempt: int) -> None:
    # The job's attempt count comes from its document (across redeliveries), not from
    # tenacity's state, so the runner computes the wait itself: with tenacity's formula.
    state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    tenacity_ceiling = wait_exponential(multiplier=1.5, max=30)(state)
    assert compute_backoff(attempt, base=1.5, maximum=30, rand=lambda: 1.0) == tenacity_ceiling
    assert 0 <= wait_random_exponential(multiplier=1.5, max=30)(state) <= tenacity_ceiling
