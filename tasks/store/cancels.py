"""Cancelling jobs, the Redis side: the script's keys and arguments, and its reply read back.

No I/O here: the sync producer (``worker.producer``) and the asyncio one run the same script
(``cancel.lua``, via ``tasks.store.lua``) through their own clients, with what ``call``
builds, and read the reply with ``outcomes``. One call ends every named job that has not
ended ``cancelled``, as the producer's fenced final write (``tasks.store.fencing``): the
document, its announcements on ``wsupload:events`` and ``wsupload:ended``, its batch's
``done`` and ``cancelled``, the minute's statistics; and it leaves the request where a
worker finds it, running or not: ``keys.cancel(job_id)`` (kept as long as the document)
and the job id on ``keys.CANCEL_CHANNEL``. The worker side is ``worker.cancel_watch``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from wsupload.errors import Cancelled
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import CANCELLED, JobDoc, decode_doc, isoformat, text

SCRIPT = "cancel"
"""The script's name for ``tasks.store.lua.load`` / ``lua.script`` (``cancel.lua``)."""
CHUNK = 500
"""Jobs per script call: a batch of 100,000 is cancelled in calls that each hold Redis briefly."""
MESSAGE = "cancelled by a producer"

Verdict = Literal["cancelled", "ended", "unknown"]


@dataclass(frozen=True)
class CancelOutcome:
    """What a cancel did to one job."""

    job_id: str
    outcome: Verdict
    """``cancelled``: cancelled now; ``ended``: it had already ended (``status`` says how), left as it
    was; ``unknown``: no document (never enqueued, or expired)."""
    status: str | None
    """The job's status after the call: ``cancelled``, the end it had reached, or None when unknown."""
    doc: JobDoc | None = None
    """The cancelled document, when cancelled now."""

    @property
    def cancelled(self) -> bool:
        return self.outcome == "cancelled"


def error_doc(message: str = MESSAGE) -> dict[str, Any]:
    """The ``error`` of a cancelled document (``Cancelled.to_doc``)."""
    return Cancelled(message).to_doc()


def call(
    job_ids: Sequence[str], ttl: int, now: datetime, unix_time: float, channel: str = keys.CANCEL_CHANNEL
) -> tuple[list[str], list[str | int]]:
    """The script's keys and arguments for ``job_ids`` (at most ``CHUNK``, no repeats), cancelled at ``now``.

    ``unix_time`` places the end in its minute's statistics; ``channel`` is where the request is
    announced (a test passes another, to play a lost announcement).
    """
    minute, second = divmod(int(unix_time), 60)
    script_keys = [keys.EVENTS_CHANNEL, keys.ENDED_CHANNEL, channel, keys.stats(minute)]
    for job_id in job_ids:
        script_keys += [keys.generation(job_id), keys.result(job_id), keys.cancel(job_id)]
    args: list[str | int] = [
        ttl,
        json.dumps(error_doc()),
        isoformat(now),
        second,
        keys.STATS_TTL,
        keys.batch(""),
        *job_ids,
    ]
    return script_keys, args


def outcomes(job_ids: Sequence[str], reply: Sequence[Any], now: datetime) -> list[CancelOutcome]:
    """The script's reply for ``job_ids`` (as passed to ``call``), one outcome each."""
    read: list[CancelOutcome] = []
    for job_id, (code, value) in zip(job_ids, reply, strict=True):
        if int(code) == 1:
            read.append(CancelOutcome(job_id, "cancelled", CANCELLED, decode_doc(value, job_id, now)))
        elif int(code) == 0:
            read.append(CancelOutcome(job_id, "ended", text(value)))
        else:
            read.append(CancelOutcome(job_id, "unknown", None))
    return read


def unique(job_ids: Sequence[str]) -> list[str]:
    """``job_ids`` without repeats, in order: a job named twice is cancelled once."""
    return list(dict.fromkeys(job_ids))


def in_order(job_ids: Sequence[str], found: Sequence[CancelOutcome]) -> list[CancelOutcome]:
    """One outcome per name in ``job_ids`` (repeats included), from the outcomes of its unique ids."""
    by_id = {outcome.job_id: outcome for outcome in found}
    return [by_id[job_id] for job_id in job_ids]
