"""A running job's lease, as the process that runs it sees it: alive, bounded, lost or handed back.

kombu records each delivered message in its ``unacked_index`` with the time of
delivery and hands it to another worker once that is older than the visibility
timeout, which wsupload sets to ``WSUPLOAD_LEASE`` (a few seconds). The worker's
renewer (``worker.renewer``) moves the entries of the messages it holds forward
every third of a lease, but a running job's only while that job shows signs of
life within its own bounds. ``JobLease`` is where a job shows them:

- ``tick()`` — bytes are moving (the upload body calls it for every block it
  hands to the socket): the job is alive for ``grace`` more seconds, the longest
  a healthy request may then stay silent (connect or read timeout, plus a lease);
- ``allow(seconds)`` — a bounded wait starts (a retry's backoff, a fleet slot);
- ``check()`` — at each of those points the job stops if its lease was lost
  (kombu gave the message to another worker: its generation now rules the
  document), if it was handed back on shutdown, if it was cancelled, or if
  ``WSUPLOAD_JOB_TIMEOUT`` ran out.

A cancel (``worker.cancel_watch``, from another thread) also cuts what the job is
waiting on: ``sleep`` (a retry's backoff, a fleet slot) returns at once, and the
request in flight, registered with ``abort_with`` (``tasks.wavespeed.client``), has its
socket shut down. The job then raises ``Cancelled`` and writes nothing: the producer
wrote its end.

A job that hangs (a deadlocked read, a stuck thread) shows no sign of life, is
no longer renewed and goes to another worker; fencing (``tasks.store.fencing``) keeps
the hung one from writing if it ever wakes. The policy (``renewable``) is pure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from wsupload.errors import Cancelled, LeaseLost, TimeLimitExceeded


@dataclass
class JobLease:
    job_id: str
    tag: str | None
    """kombu's delivery tag of the message being run (None when run outside a worker)."""
    grace: float
    """Seconds one sign of life keeps the job renewable."""
    deadline: float | None = None
    """``clock()`` time the delivery must end by (``WSUPLOAD_JOB_TIMEOUT``), or None."""
    clock: Callable[[], float] = time.monotonic
    alive_until: float = field(init=False)
    lost: bool = False
    handed_back: bool = False
    slot: str | None = None
    """The fleet limiter's token while the job holds an upload slot (renewed with its lease)."""
    cancelled: bool = False
    """The job was cancelled (``cancel``): it stops at its next check, writing nothing."""
    _wake: threading.Event = field(init=False, repr=False)
    _abort: Callable[[], None] | None = field(default=None, init=False, repr=False)
    _abort_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.alive_until = self.clock() + self.grace
        self._wake = threading.Event()

    def rearm(self, job_id: str, grace: float, deadline: float | None) -> None:
        """The next job of a bulk message runs under this lease: its id, grace and deadline.

        A lost or handed-back mark stays: it is the message's, and stops every job after it.
        """
        self.check_held()
        with self._abort_lock:  # a cancel is the job's, not the message's: one meant for the last job misses this one
            self.job_id, self.cancelled, self._abort = job_id, False, None
            self._wake = threading.Event()
        self.grace, self.deadline, self.slot = grace, deadline, None
        self.alive_until = self.clock() + grace

    def allow(self, seconds: float) -> None:
        """Alive for at least ``seconds`` more (a bounded wait begins)."""
        self.check()
        self.alive_until = max(self.alive_until, self.clock() + max(0.0, seconds))

    def tick(self) -> None:
        """Progress: alive for ``grace`` more seconds."""
        self.allow(self.grace)

    def check(self) -> None:
        """Raise if this delivery must stop now."""
        self.check_held()
        self.check_cancelled()
        if self.deadline is not None and self.clock() > self.deadline:
            raise TimeLimitExceeded("the job did not finish within WSUPLOAD_JOB_TIMEOUT")

    def check_held(self) -> None:
        """Raise ``LeaseLost`` if this delivery no longer holds its message."""
        if self.lost:
            raise LeaseLost(f"job {self.job_id}: its lease expired and the job went to another worker")
        if self.handed_back:
            raise LeaseLost(f"job {self.job_id}: handed back to the queue as this worker stops")

    def check_cancelled(self) -> None:
        """Raise ``Cancelled`` if the job was cancelled."""
        if self.cancelled:
            raise Cancelled(f"job {self.job_id}: cancelled by a producer; this delivery stops")

    def cancel(self, job_id: str | None = None) -> bool:
        """Cancel the job (from any thread): wake its wait, cut its request in flight.

        ``job_id``: only if the lease still runs that job (a bulk message's lease moves on to
        its next one). Returns whether it was cancelled now.
        """
        with self._abort_lock:
            if self.cancelled or (job_id is not None and job_id != self.job_id):
                return False
            self.cancelled = True
            self._wake.set()
            abort, self._abort = self._abort, None
        if abort is not None:
            abort()
        return True

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the job is cancelled meanwhile (then raise ``Cancelled``)."""
        self._wake.wait(max(0.0, seconds))
        self.check_cancelled()

    def abort_with(self, abort: Callable[[], None] | None) -> None:
        """What ``cancel`` calls to cut the wait in progress (None: nothing now); raises if already cancelled."""
        with self._abort_lock:
            self._abort = abort
            if abort is not None and self.cancelled:
                self._abort = None
                raise Cancelled(f"job {self.job_id}: cancelled by a producer; this delivery stops")


def renewable(lease: JobLease, now: float) -> bool:
    """Whether the renewer may extend this job's lease at ``now`` (the lease's own clock)."""
    return not lease.lost and not lease.handed_back and now <= lease.alive_until


class LeaseBook:
    """The leases of the jobs running in this process, by delivery tag (thread-safe)."""

    def __init__(self) -> None:
        self._leases: dict[str, JobLease] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def add(self, lease: JobLease) -> None:
        if lease.tag is not None:
            with self._lock:
                self._leases[lease.tag] = lease

    def remove(self, lease: JobLease) -> None:
        if lease.tag is not None:
            with self._lock:
                if self._leases.get(lease.tag) is lease:
                    del self._leases[lease.tag]
                self._changed.notify_all()

    def get(self, tag: str) -> JobLease | None:
        with self._lock:
            return self._leases.get(tag)

    def all(self) -> list[JobLease]:
        with self._lock:
            return list(self._leases.values())

    def wait_empty(self, timeout: float) -> bool:
        """Wait until no job runs here, or ``timeout`` passes; True if none runs."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._leases:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True


BOOK = LeaseBook()
"""This process's running jobs (the renewer and the stop handler read it)."""

_local = threading.local()


@contextmanager
def holding(lease: JobLease, book: LeaseBook = BOOK) -> Iterator[JobLease]:
    """Run the job under ``lease``: in the book for the renewer, current for ``tick()`` on this thread."""
    previous = getattr(_local, "lease", None)
    _local.lease = lease
    book.add(lease)
    try:
        yield lease
    finally:
        book.remove(lease)
        _local.lease = previous


def current() -> JobLease | None:
    """The lease of the job this thread runs, if any."""
    lease: JobLease | None = getattr(_local, "lease", None)
    return lease


def tick() -> None:
    """Progress on this thread's job, if it runs under a lease (the upload body calls this per block)."""
    lease = current()
    if lease is not None:
        lease.tick()


def allow(seconds: float) -> None:
    """A bounded wait on this thread's job, if it runs under a lease."""
    lease = current()
    if lease is not None:
        lease.allow(seconds)


def sleep(seconds: float) -> None:
    """Wait ``seconds``; on a thread running a job, cut short by its cancel (``Cancelled``)."""
    lease = current()
    if lease is None:
        time.sleep(seconds)
    else:
        lease.sleep(seconds)


def check_cancelled() -> None:
    """Raise ``Cancelled`` if this thread's job was cancelled."""
    lease = current()
    if lease is not None:
        lease.check_cancelled()


def abort_with(abort: Callable[[], None] | None) -> None:
    """Register how a cancel cuts this thread's wait in progress (None: clear it); see ``JobLease.abort_with``."""
    lease = current()
    if lease is not None:
        lease.abort_with(abort)
