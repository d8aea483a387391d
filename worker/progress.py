"""Live progress for people watching ``wait`` and ``ingest``.

On a terminal: one line, redrawn. Elsewhere (CI logs, pipes): plain lines, so a
log is readable after the fact.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, TextIO

from wsupload.tasks.store import results
from wsupload.tasks.store.results import JobDoc


def finished(status: str) -> bool:
    """Whether a job shown with this status has ended (an end, or ``unknown``)."""
    return results.is_end(status)  # "unknown" is no active status: an end here too


LOG_EVERY = 5.0


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class JobProgress:
    """A summary line on a terminal; one line per finished job otherwise."""

    def __init__(self, job_ids: Sequence[str], stream: TextIO) -> None:
        self.job_ids = list(job_ids)
        self.stream = stream
        self.tty = stream.isatty()
        self.reported: set[str] = set()

    def __call__(self, docs: list[JobDoc | None]) -> None:
        counts: dict[str, int] = {}
        for job_id, doc in zip(self.job_ids, docs, strict=True):
            status = doc["status"] if doc else "unknown"
            counts[status] = counts.get(status, 0) + 1
            if not self.tty and finished(status) and job_id not in self.reported:
                self.reported.add(job_id)
                print(f"{job_id}  {status}", file=self.stream, flush=True)
        if self.tty:
            done = sum(n for s, n in counts.items() if finished(s))
            detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            print(f"\r{done}/{len(self.job_ids)} done ({detail})\033[K", end="", file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.stream)


class BatchProgress:
    """A bar with rate, ETA and failures for a batch's counters."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last_log = 0.0
        self.first_done: int | None = None

    def line(self, info: dict[str, Any]) -> str:
        total, done, failed = info["total"], info["done"], info["failed"]
        elapsed = max(time.monotonic() - self.started, 1e-6)
        if self.first_done is None:
            self.first_done = done  # jobs already done when we started watching
        rate = (done - self.first_done) / elapsed
        eta = duration((total - done) / rate) if rate > 0 and done < total else "-"
        filled = int(self.WIDTH * done / total) if total else self.WIDTH
        bar = "#" * filled + "." * (self.WIDTH - filled)
        cancelled = f" · {info['cancelled']} cancelled" if info.get("cancelled") else ""
        return f"[{bar}] {done}/{total} · {failed} failed{cancelled} · {rate:.1f}/s · ETA {eta}"

    def __call__(self, info: dict[str, Any]) -> None:
        now = time.monotonic()
        if self.tty:
            print(f"\r{self.line(info)}\033[K", end="", file=self.stream, flush=True)
        elif now - self.last_log >= LOG_EVERY or info["done"] >= info["total"]:
            self.last_log = now
            print(self.line(info), file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.stream)


def describe(doc: JobDoc | None, job_id: str) -> str:
    """A job as `wsupload status` and `wait` print it: one line, and its outcome or last error below."""
    if doc is None:
        return f"{job_id}  unknown (never enqueued, or its result expired)"
    line = f"{job_id}  {doc['status']:<9}  attempts={doc['attempts']}  {doc['source']}"
    if doc["status"] == results.SUCCEEDED:
        line += f"\n    -> {doc['result']['download_url']} (expires {doc['expires_at']})"
    elif results.is_end(doc["status"]) and doc.get("error"):  # failed, cancelled, any other end
        error = doc["error"]
        line += f"\n    !! {error['kind']}: {error['message']}"
    elif doc.get("last_error"):
        line += f"\n    .. last error {doc['last_error']['kind']}: {doc['last_error']['message']}"
    return line
