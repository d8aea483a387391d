"""What the job code tells an observer: outcomes, attempts, retries, bytes, waits, lost leases.

A seam, not a metrics library: the job runner, the fleet limiter and the lease
renewer call these functions (one line each), and they do nothing until a
``Sink`` is installed. The worker installs one that feeds Prometheus
(``worker.metrics``) when ``WSUPLOAD_METRICS_PORT`` is set; tests install their
own. This module must never import a metrics library, and an observer must never
fail or slow a job: a sink that raises is logged once and ignored.

What reaches a sink is bounded by construction: an outcome, an error kind (one
of the ``UploadError`` kinds, else ``other``), numbers. Never a job id, a path
or a URL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Protocol

from wsupload import errors
from wsupload.tasks.store.results import EXPIRED, FAILED, SUCCEEDED

log = logging.getLogger(__name__)

NONE = "none"
"""The ``kind`` of a job that succeeded."""
OTHER = "other"
"""Stands for an outcome or kind outside the known sets, so a label never takes an unbounded value."""


def _kinds(cls: type[errors.UploadError]) -> set[str]:
    return {cls.kind}.union(*(_kinds(sub) for sub in cls.__subclasses__()))


_BASE = errors.UploadError.kind  # the abstract classes' kind, never a job's
FAILURE_KINDS = frozenset(_kinds(errors.PermanentError) - {_BASE})
"""Every kind a job ends ``failed`` with (a transient error ends one as ``retries_exhausted``)."""
TRANSIENT_KINDS = frozenset(_kinds(errors.TransientError) - {_BASE})
"""Every kind a retry can be for."""
KINDS = FAILURE_KINDS | TRANSIENT_KINDS | {errors.Expired.kind}
OUTCOMES = (SUCCEEDED, FAILED, EXPIRED)
"""The ends a worker writes (a cancel is the producer's end: a worker never counts one)."""


class Sink(Protocol):
    """Where the observations go (``worker.metrics.WorkerMetrics`` is one)."""

    def job_ended(self, outcome: str, kind: str, duration_s: float | None, latency_s: float | None) -> None: ...
    def attempt(self) -> None: ...
    def retry(self, kind: str) -> None: ...
    def uploaded(self, nbytes: int, flow: str) -> None: ...
    def dedup_hit(self) -> None: ...
    def limiter_wait(self, seconds: float) -> None: ...
    def lease_event(self, event: str) -> None: ...
    def in_flight(self, delta: int) -> None: ...


LEASE_LOST, HANDED_BACK, RESUMED, ACKED_EARLY = "lease_lost", "handed_back", "resumed", "acked_early"
SWEPT_BACK = "swept_back"
LEASE_EVENTS = (LEASE_LOST, HANDED_BACK, RESUMED, ACKED_EARLY, SWEPT_BACK)

_sink: Sink | None = None
_failed = False


def install(sink: Sink | None) -> None:
    """Send observations to ``sink`` from now on (None: back to doing nothing)."""
    global _sink, _failed
    _sink, _failed = sink, False


def installed() -> Sink | None:
    return _sink


def _tell(method: str, *args: Any) -> None:
    global _failed
    sink = _sink
    if sink is None:
        return
    try:
        getattr(sink, method)(*args)
    except Exception:
        if not _failed:  # once: a broken observer must not flood the log either
            _failed = True
            log.exception("telemetry: the sink failed (%s); the job carries on", method)


def outcome_of(doc: dict[str, Any]) -> tuple[str, str]:
    """A terminal document's ``(outcome, kind)`` labels, each from a bounded set."""
    status = doc.get("status")
    outcome = status if status in OUTCOMES else OTHER
    error = doc.get("error")
    if outcome == SUCCEEDED or not isinstance(error, dict):
        return outcome, NONE
    kind = error.get("kind")
    return outcome, kind if kind in KINDS else OTHER


def latency_of(doc: dict[str, Any]) -> float | None:
    """Seconds from ``created_at`` (the producer's clock) to ``finished_at`` (the worker's); never below 0."""
    try:
        created = datetime.fromisoformat(str(doc.get("created_at")).replace("Z", "+00:00"))
        finished = datetime.fromisoformat(str(doc.get("finished_at")).replace("Z", "+00:00"))
        return max(0.0, (finished - created).total_seconds())
    except (TypeError, ValueError):  # a producer's odd created_at (or a naive one) is no reason to fail
        return None


def job_ended(doc: dict[str, Any], duration_s: float | None = None) -> None:
    """A job's terminal document was written; ``duration_s``: how long this delivery took (None: not run here)."""
    if _sink is not None:
        _tell("job_ended", *outcome_of(doc), duration_s, latency_of(doc))


def attempt() -> None:
    """An upload request is about to be sent."""
    _tell("attempt")


def retry(kind: str) -> None:
    """A transient error of ``kind`` is waited out before the next try."""
    _tell("retry", kind if kind in TRANSIENT_KINDS else OTHER)


FLOWS = ("binary", "direct")
"""How a file reached WaveSpeed: the binary endpoint, or a ticket and a PUT (``tasks.wavespeed.direct``)."""


def uploaded(nbytes: int, flow: str = "binary") -> None:
    """An upload succeeded with this many bytes sent, through ``flow``."""
    _tell("uploaded", nbytes, flow if flow in FLOWS else OTHER)


def dedup_hit() -> None:
    """A job reused an earlier upload of the same bytes instead of uploading."""
    _tell("dedup_hit")


def limiter_wait(seconds: float) -> None:
    """A request waited this long for a slot under the fleet's rate or concurrency limit."""
    _tell("limiter_wait", seconds)


def lease_lost() -> None:
    """This worker found a job's lease gone: another worker has the job now."""
    _tell("lease_event", LEASE_LOST)


def handed_back() -> None:
    """A job still running after the stop grace went back to its queue."""
    _tell("lease_event", HANDED_BACK)


def acked_early() -> None:
    """RabbitMQ: a job held half the consumer_timeout (or hung) was made owed in Redis, its message acknowledged."""
    _tell("lease_event", ACKED_EARLY)


def swept_back() -> None:
    """A sweep published a job again: in no queue and no one's hands (Redis), owed past its deadline or
    dropped by the broker (RabbitMQ)."""
    _tell("lease_event", SWEPT_BACK)


def resumed() -> None:
    """This worker took up a job that an earlier delivery left unfinished (its worker died, hung or stopped)."""
    _tell("lease_event", RESUMED)


@contextmanager
def running() -> Iterator[None]:
    """A job runs here for the duration (``in_flight`` +1, then -1)."""
    _tell("in_flight", 1)
    try:
        yield
    finally:
        _tell("in_flight", -1)
