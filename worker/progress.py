"""Live progress for people watching ``wait``, ``batch wait`` and ``ingest``.

On a terminal: one line, redrawn. Elsewhere (CI logs, pipes): plain lines, so a
log is readable after the fact, and never more than one every ``LOG_EVERY``
seconds per job or batch. Large uploads show their bytes (``12.0/48.0 MiB``):
``wait`` from the documents it re-reads, ``batch wait`` from the progress events
its members publish (``InFlight``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import redis

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


def bytes_of(sent: int, total: int) -> str:
    """``12.0/48.0 MiB``: how far an upload is, in the unit its size reads best in."""
    unit, scale = ("GiB", 2**30) if total >= 2**30 else ("MiB", 2**20)
    return f"{sent / scale:.1f}/{total / scale:.1f} {unit}"


def progress_of(doc: JobDoc | None) -> tuple[int, int] | None:
    """A running document's ``(bytes_sent, bytes_total)``, if it carries them (a large upload)."""
    progress = doc.get("progress") if doc and doc.get("status") == results.RUNNING else None
    if not isinstance(progress, dict):
        return None
    sent, total = progress.get("bytes_sent"), progress.get("bytes_total")
    if type(sent) is not int or type(total) is not int or total <= 0:
        return None
    return sent, total


def in_flight(progress: Sequence[tuple[int, int]]) -> str:
    """The bytes of large uploads running now, summed: `` · 12.0/48.0 MiB`` (empty for none)."""
    if not progress:
        return ""
    sent, total = sum(p[0] for p in progress), sum(p[1] for p in progress)
    files = "" if len(progress) == 1 else f" in {len(progress)} files"
    return f" · {bytes_of(sent, total)}{files}"


class JobProgress:
    """A summary line on a terminal; otherwise one line per finished job, and a large upload's
    bytes at most every ``LOG_EVERY`` seconds while they move."""

    def __init__(self, job_ids: Sequence[str], stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.job_ids = list(job_ids)
        self.stream = stream
        self.tty = stream.isatty()
        self.clock = clock
        self.reported: set[str] = set()
        self.bytes_said: dict[str, tuple[float, int]] = {}
        """Per job: when its bytes were last printed (non-TTY), and how many."""

    def __call__(self, docs: list[JobDoc | None]) -> None:
        counts: dict[str, int] = {}
        moving: list[tuple[int, int]] = []
        for job_id, doc in zip(self.job_ids, docs, strict=True):
            status = doc["status"] if doc else "unknown"
            counts[status] = counts.get(status, 0) + 1
            progress = progress_of(doc)
            if progress is not None:
                moving.append(progress)
                if not self.tty:
                    self._say_bytes(job_id, *progress)
            if not self.tty and finished(status) and job_id not in self.reported:
                self.reported.add(job_id)
                print(f"{job_id}  {status}", file=self.stream, flush=True)
        if self.tty:
            done = sum(n for s, n in counts.items() if finished(s))
            detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            line = f"{done}/{len(self.job_ids)} done ({detail}){in_flight(moving)}"
            print(f"\r{line}\033[K", end="", file=self.stream, flush=True)

    def _say_bytes(self, job_id: str, sent: int, total: int) -> None:
        now = self.clock()
        last = self.bytes_said.get(job_id)
        if last is not None and (now - last[0] < LOG_EVERY or last[1] == sent):
            return
        self.bytes_said[job_id] = (now, sent)
        print(f"{job_id}  running  {bytes_of(sent, total)}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.stream)


class InFlight:
    """A batch's large uploads while they run, from the progress events on ``wsupload:events``.

    An event names its job, not its batch: the first event of each job costs one read of its
    document (``batch_of``), and jobs of other batches are remembered as such. Best effort: a
    Redis error shows nothing until the connection is back.
    """

    def __init__(self, client: redis.Redis, batch_id: str, batch_of: Callable[[str], str | None]) -> None:
        self.batch_id = batch_id
        self.batch_of = batch_of
        self.pubsub = client.pubsub()  # type: ignore[no-untyped-call]
        self.pubsub.subscribe(results.EVENTS_CHANNEL)
        self.members: dict[str, bool] = {}
        self.running: dict[str, tuple[int, int]] = {}

    def read(self) -> list[tuple[int, int]]:
        """The events that came since the last call taken in; the ``(bytes_sent, bytes_total)`` of each upload."""
        try:
            # Subscription answers are messages too (not skipped by redis-py, which would return None for one).
            while (message := self.pubsub.get_message(timeout=0)) is not None:
                if message["type"] == "message":
                    self.take(message["data"])
        except redis.RedisError:
            self.running.clear()  # redis-py subscribes again on its next call
        return list(self.running.values())

    def take(self, data: bytes | str) -> None:
        try:
            event = json.loads(data)
            job_id = event["job_id"]
        except (ValueError, KeyError, TypeError):
            return
        progress = progress_of(event) if isinstance(event, dict) else None
        if progress is None:
            self.running.pop(job_id, None)  # any other change: that attempt's bytes are no longer moving
            return
        if job_id not in self.members:
            self.members[job_id] = self.batch_of(job_id) == self.batch_id
        if self.members[job_id]:
            self.running[job_id] = progress

    def close(self) -> None:
        self.pubsub.close()


class BatchProgress:
    """A bar with rate, ETA and failures for a batch's counters, and the bytes of its large uploads running."""

    WIDTH = 30

    def __init__(self, stream: TextIO, in_flight: InFlight | None = None) -> None:
        self.in_flight = in_flight
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last_log = 0.0
        self.first_done: int | None = None
        self.moving: list[tuple[int, int]] = []

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
        return f"[{bar}] {done}/{total} · {failed} failed{cancelled} · {rate:.1f}/s · ETA {eta}{in_flight(self.moving)}"

    def __call__(self, info: dict[str, Any]) -> None:
        now = time.monotonic()
        if self.in_flight is not None:
            self.moving = self.in_flight.read()  # at every update, printed or not: the events do not pile up
        if self.tty:
            print(f"\r{self.line(info)}\033[K", end="", file=self.stream, flush=True)
        elif now - self.last_log >= LOG_EVERY or info["done"] >= info["total"]:
            self.last_log = now
            print(self.line(info), file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.stream)
        if self.in_flight is not None:
            self.in_flight.close()


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
    progress = progress_of(doc)
    if progress is not None:
        line += f"\n    .. sent {bytes_of(*progress)}"
    return line
