"""Fencing: each delivery of a job gets a generation, and only the current one writes.

A worker claims a job when it starts running it: ``INCR`` on the job's
generation key (``keys.generation``), one Lua call. Every later write of the
job's document and its batch's counters (``ResultStore.save``) is one Lua call
that first checks the key still holds the writer's generation. So a worker that
was paused past its lease (SIGSTOP, a long GC, a partition) and wakes up after
another worker claimed the job cannot overwrite that worker's outcome, and a
batch never counts a job twice: the first terminal write also sets the key to
``done``, after which nothing writes and no one claims.

A delivery on the Redis broker, when that is the results Redis, claims only while its
message's lease is still in kombu's unacked index: once its lease has expired (its worker was paused, or cut off)
the message may be running elsewhere, and a late claim would take the job from
under that delivery and then stop, leaving the job held by no one.

The generation counts deliveries that reached the job: one that reaches
``WSUPLOAD_MAX_DELIVERIES`` more than the limit ends the job ``failed`` with
``too_many_deliveries`` (its workers keep dying, hanging or being stopped with it).
Writes outside a delivery (a message that names a job but cannot run) pass no
generation: they write unless the job has ended.

A delivery that will start uploading at once (a local file, no fleet limit to wait
for) asks its claim to write the first attempt's ``running`` document too
(``FirstAttempt``): the claim and that write are then one round trip instead of two.
The script does it only for a plain ``queued`` document it can rewrite faithfully;
the caller checks what it wrote and writes its own document when it differs.

A bulk message's jobs run one after another: the claim of the next job is made in
the same call as the terminal write of the one before (``fencing_save_then_claim.lua``),
and only if that write was made.

The scripts are ``fencing_claim.lua``, ``fencing_save.lua`` and the two in one,
``fencing_save_then_claim.lua`` (``tasks.store.lua``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from wsupload.tasks.store import lua

DONE = "done"
"""The generation key's value once the job has ended."""

LEASE_GONE = -1
"""A claim's answer when the delivery's lease is no longer in the lease index."""


@dataclass(frozen=True)
class FirstAttempt:
    """What a claim needs to write the first attempt's ``running`` document as well (see ``fencing_claim.lua``)."""

    max_deliveries: int
    """A generation above it is not started: the caller ends the job instead."""
    max_attempts: int
    """A document with this many attempts made is not started: none are left."""
    started_at: str
    """The document's ``started_at`` if it has none."""
    worker: str


@dataclass(frozen=True)
class ClaimAsk:
    """A claim to make: the job, and what ``ResultStore.claim`` takes for it."""

    job_id: str
    first: FirstAttempt | None = None
    lease_tag: str = ""


@dataclass(frozen=True)
class Claim:
    generation: int
    """0: the job has already ended (nothing to run); -1: the delivery's lease is gone (``LEASE_GONE``)."""
    stored: bytes | str | None
    """The job's document as stored when it was claimed."""
    written: bytes | str | None = None
    """The first attempt's document, when the claim wrote one (``FirstAttempt``)."""

    @property
    def ended(self) -> bool:
        return self.generation == 0

    @property
    def lease_gone(self) -> bool:
        return self.generation == LEASE_GONE

    def too_many(self, max_deliveries: int) -> bool:
        return self.generation > max_deliveries


def claim_args(
    ttl: int, first: FirstAttempt | None = None, event: str = "", batch_prefix: str = "", tag: str = ""
) -> list[str | int]:
    """The claim script's ARGV: with ``first``, the first attempt's document is written too (``event`` announces it).

    ``tag``: claim only while this delivery tag is in the lease index (the fourth key).
    """
    args: list[str | int] = [ttl, tag]
    if first is not None:
        args += [first.max_deliveries, first.max_attempts, first.started_at, first.worker, event, batch_prefix]
    return args


def _claim_from(answer: list[Any]) -> Claim:
    generation, stored, *written = answer
    return Claim(int(generation), stored, written[0] if written else None)


class Fencing:
    """The claim and save scripts, registered once on a client.

    ``here``: the client a call from this thread goes through (``connections.PerThread``);
    ``client`` itself if not given.
    """

    def __init__(self, client: redis.Redis, here: Callable[[], redis.Redis] | None = None) -> None:
        self._client = client
        self.here = here or (lambda: client)
        self._claim = lua.lean_script(client, "fencing_claim")
        self._save = lua.lean_script(client, "fencing_save")
        self._save_then_claim = lua.lean_script(client, "fencing_save_then_claim")

    def claim(self, claim_keys: list[str], args: list[str | int]) -> Claim:
        """Claim the job (``args`` as ``claim_args`` makes them)."""
        return _claim_from(self._claim(keys=claim_keys, args=args, client=self.here()))

    def save(self, save_keys: list[str], args: list[str | int]) -> int:
        return int(self._save(keys=save_keys, args=args, client=self.here()))

    def save_then_claim(
        self, save_keys: list[str], args: list[str | int], claim_keys: list[str], claim_args: list[str | int]
    ) -> tuple[int, Claim | None]:
        """``save``, then, if it wrote, a claim (``claim_args`` as ``claim_args`` makes them): one call.

        Returns the save's answer and the claim (None when the save did not write).
        """
        saved, *claimed = self._save_then_claim(
            keys=[*save_keys, *claim_keys], args=[*args, *claim_args], client=self.here()
        )
        return int(saved), _claim_from(claimed[0]) if claimed else None

    def save_replicated(self, save_keys: list[str], args: list[str | int], timeout: float) -> tuple[int, int]:
        """``save``, then ``WAIT 1`` up to ``timeout`` s: (the save's answer, how many replicas have the write).

        One pipeline, so the WAIT runs on the connection that wrote: WAIT waits for
        its own connection's last write, and a pooled client may hand another one out.
        """
        # EVALSHA by hand, not ``self._save(client=pipe)``: a pipeline holding a ``Script`` asks
        # SCRIPT EXISTS before it runs, a round trip more for every final write. NOSCRIPT is rare
        # (a failover to a replica, SCRIPT FLUSH) and answered here: load it, write again.
        for first in (True, False):
            pipe = self._client.pipeline(transaction=False)
            pipe.evalsha(self._save.sha, len(save_keys), *save_keys, *args)
            pipe.wait(1, max(1, round(timeout * 1000)))
            written, replicas = pipe.execute(raise_on_error=False)
            if first and isinstance(written, redis.exceptions.NoScriptError):
                self._client.script_load(self._save.script)  # a new master (a failover), or SCRIPT FLUSH
                continue
            for answer in (written, replicas):
                if isinstance(answer, Exception):
                    raise answer
            break
        return int(written), int(replicas)
