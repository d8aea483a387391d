"""Every Redis key and pub/sub channel wsupload owns, built here and nowhere else.

All start with ``KEY_PREFIX`` (``wsupload``), so producers in other languages and
operators can rely on them; docs/wire-contract.md lists the public ones
(results, batches, channels, the dead-letter list). kombu's own keys (the queue
lists, ``unacked``, ``unacked_index``) are kombu's.
"""

from __future__ import annotations

from wsupload.config.names import KEY_PREFIX

EVENTS_CHANNEL = f"{KEY_PREFIX}:events"
"""``{"job_id", "status"}`` on every status change."""
ENDED_CHANNEL = f"{KEY_PREFIX}:ended"
"""Each job's final document, once, when it ends: a waiter wakes once per job, not per change."""
CANCEL_CHANNEL = f"{KEY_PREFIX}:cancel"
"""A job id, each time a producer cancels a job that had not ended: its worker aborts it (``worker.cancel_watch``)."""
PAUSED = f"{KEY_PREFIX}:paused"
"""Queues paused fleet-wide (a set of names, until resumed): workers stop consuming them (``tasks.store.pauses``)."""
PAUSE_CHANNEL = f"{KEY_PREFIX}:pause"
"""A queue name, each time a producer pauses or resumes it: workers look at ``PAUSED`` at once."""
DEAD = f"{KEY_PREFIX}:dead"
"""The dead-letter list (``tasks.store.dead_letters``)."""
BROKER_WRITE_PROBE = f"{KEY_PREFIX}:broker-write-probe"
"""Never created: the worker's ``LPUSHX`` on it is refused exactly like any write (a full or read-only Redis)."""
RATE_TAT = f"{KEY_PREFIX}:ratelimit:tat"
RATE_ACTIVE = f"{KEY_PREFIX}:ratelimit:active"
RATE_PAUSE = f"{KEY_PREFIX}:ratelimit:pause_until"
UNACKED_INDEX = "unacked_index"
"""kombu's (not ours): its default name for the sorted set of delivered messages by delivery time (the leases)."""
WORKERS = f"{KEY_PREFIX}:workers"
"""Names of workers that beat lately (sorted set, score: the unix time of the last beat); records in ``worker``."""
SUPERVISORS = f"{KEY_PREFIX}:supervisors"
"""Names of the parents of ``wsupload worker --processes N`` that beat lately (as ``WORKERS``).

Their records are in ``supervisor``."""


def result(job_id: str) -> str:
    """A job's document (JSON)."""
    return f"{KEY_PREFIX}:result:{job_id}"


def generation(job_id: str) -> str:
    """A job's current delivery, or ``done`` once it ended (``tasks.store.fencing``)."""
    return f"{result(job_id)}:generation"


def cancel(job_id: str) -> str:
    """A job's cancel request (hash: ``at``, and ``callback`` until a worker takes the duty of its callback),
    kept as long as its document: the request outlives any worker that missed its message."""
    return f"{result(job_id)}:cancel"


def batch(batch_id: str) -> str:
    """A batch's counters (hash)."""
    return f"{KEY_PREFIX}:batch:{batch_id}"


def batch_members(batch_id: str) -> str:
    """A batch's job ids, in order (list)."""
    return f"{batch(batch_id)}:jobs"


def batch_name(name: str) -> str:
    """The newest batch of that name (its id)."""
    return f"{KEY_PREFIX}:batch-name:{name}"


def staging(token: str, chunk: int) -> str:
    """Messages of a batch being enqueued, not yet on a queue (``tasks.enqueue``)."""
    return f"{KEY_PREFIX}:staging:{token}:{chunk}"


def callback(job_id: str) -> str:
    """The record of a job's callback delivery."""
    return f"{KEY_PREFIX}:callback:{job_id}"


def dedup(digest: str) -> str:
    """The upload that holds these bytes (by SHA-256)."""
    return f"{KEY_PREFIX}:dedup:{digest}"


def scan_state(name: str) -> str:
    """A schedule's last run (hash)."""
    return f"{KEY_PREFIX}:scan:{name}"


def scan_seen(name: str) -> str:
    """What a schedule has enqueued before: source → version (hash)."""
    return f"{scan_state(name)}:seen"


def scan_lock(name: str) -> str:
    """Held while one run of a schedule goes on."""
    return f"{scan_state(name)}:lock"


def worker(name: str) -> str:
    """A worker's heartbeat record (JSON), gone by itself when the worker stops beating (``worker.heartbeat``)."""
    return f"{KEY_PREFIX}:worker:{name}"


# The lost-message sweep (tasks.recovery.lost_sweep)


def pending(queue: str) -> str:
    """Jobs put on the queue list ``queue`` and not taken yet: job id → its place in the line (sorted set)."""
    return f"{KEY_PREFIX}:sweep:pending:{queue}"


def place_counter(queue: str) -> str:
    """The last place given at the back of ``queue``'s line (a counter)."""
    return f"{KEY_PREFIX}:sweep:counter:{queue}"


def last_taken(queue: str) -> str:
    """The highest place a worker has taken from ``queue``: jobs placed below it and not taken nor waiting were lost."""
    return f"{KEY_PREFIX}:sweep:taken:{queue}"


def suspects(queue: str) -> str:
    """Jobs of ``queue`` the sweep found unaccounted for: job id → since when (unix time, Redis's clock; hash)."""
    return f"{KEY_PREFIX}:sweep:suspects:{queue}"


def sweep_lock(queue: str) -> str:
    """Held for a sweep interval by the worker sweeping ``queue``: one sweep of a queue at a time across the fleet."""
    return f"{KEY_PREFIX}:sweep:lock:{queue}"


# Statistics (worker.stats)

STATS_TTL = 7200
"""Seconds a minute's counters are kept: the longest window ``wsupload stats`` shows (an hour), and as much again."""


def stats(minute: int) -> str:
    """Jobs that ended in that minute (unix time // 60): hash ``<status>:<second of the minute>`` → count."""
    return f"{KEY_PREFIX}:stats:{minute}"


# RabbitMQ as the broker (tasks.recovery.early_acks)


def owed(queue: str) -> str:
    """Jobs of ``queue`` whose safety is in Redis rather than on RabbitMQ: job id → deadline (unix time,
    Redis's clock) after which the sweep publishes the job again unless it has ended (sorted set)."""
    return f"{KEY_PREFIX}:owed:{queue}"


def owed_calls(queue: str) -> str:
    """The calls of ``queue``'s early-acknowledged jobs, as their messages had them: job id → JSON
    ``{"source", "options"}`` (hash), removed with the job's owed entry; the sweep publishes from it."""
    return f"{owed(queue)}:calls"


def owed_lock(queue: str) -> str:
    """Held for a sweep interval by the worker sweeping ``queue``'s owed jobs."""
    return f"{owed(queue)}:lock"


def supervisor(name: str) -> str:
    """A ``wsupload worker`` parent's heartbeat record, with its children's states (JSON, ``worker.worker_records``)."""
    return f"{KEY_PREFIX}:supervisor:{name}"


def entered(queue: str) -> str:
    """RabbitMQ broker: the jobs wsupload put on ``queue`` and that have not ended: job id → the moment (ms,
    Redis's clock) by which its message was on the queue, or the job owed (sorted set; ``tasks.recovery.markers``)."""
    return f"{KEY_PREFIX}:amqp:entered:{queue}"


def marker(queue: str) -> str:
    """RabbitMQ broker: the marker outstanding on ``queue`` (hash ``token``, ``sent_at`` and, once a worker has
    met it, ``seen_at``; ms, Redis's clock; ``tasks.recovery.markers``)."""
    return f"{KEY_PREFIX}:amqp:marker:{queue}"
