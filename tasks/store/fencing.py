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
the same call as the terminal write of the one before (``SAVE_THEN_CLAIM``), and
only if that write was made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

DONE = "done"
"""The generation key's value once the job has ended."""

# KEYS: generation key, document, events channel, and kombu's unacked index (the leases).
# ARGV: ttl, the delivery's tag in that index ('' for no lease to check); then, to write the
# first attempt too (FirstAttempt): max deliveries, max attempts, started_at, worker, event
# JSON, the batch keys' prefix. Returns {the new generation, 0 if the job ended or -1 if the
# delivery's lease is gone (another delivery of its message may run now: it claims nothing);
# the stored document; the document written, if any}: the claim and the read are one round trip.
# The first attempt is written as SAVE would write it (document, event, the batch's
# started_at) and only from a plain queued document: strings, booleans and null, the
# attempts count, options of strings and booleans (what cjson writes back unchanged).
# The batch key is built here from the document's batch_id, so the script touches a key
# not passed in KEYS: fine on one Redis or a Sentinel master, as this project runs, not
# on a Redis Cluster.
CLAIM = """
local doc = redis.call('GET', KEYS[2])
if redis.call('GET', KEYS[1]) == 'done' then return {0, doc} end
if ARGV[2] ~= '' and not redis.call('ZSCORE', KEYS[4], ARGV[2]) then return {-1, doc} end
local generation = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
if not ARGV[3] or not doc or generation > tonumber(ARGV[3]) then return {generation, doc} end
local ok, job = pcall(cjson.decode, doc)
if not ok or type(job) ~= 'table' or job.status ~= 'queued' then return {generation, doc} end
local attempts = job.attempts
if type(attempts) ~= 'number' or attempts < 0 or attempts % 1 ~= 0 or attempts >= tonumber(ARGV[4]) then
  return {generation, doc}
end
for name, value in pairs(job) do
  local kind = type(value)
  if kind == 'table' then
    if name ~= 'options' then return {generation, doc} end
    for _, option in pairs(value) do
      if type(option) ~= 'string' and type(option) ~= 'boolean' then return {generation, doc} end
    end
  elseif kind == 'number' and name ~= 'attempts' then
    return {generation, doc}
  end
end
job.status = 'running'
job.attempts = attempts + 1
job.next_attempt_at = nil
if type(job.started_at) ~= 'string' or job.started_at == '' then job.started_at = ARGV[5] end
job.generation = generation
job.worker = ARGV[6]
local written = cjson.encode(job)
redis.call('SET', KEYS[2], written, 'EX', ARGV[1])
redis.call('PUBLISH', KEYS[3], ARGV[7])
if type(job.batch_id) == 'string' and job.batch_id ~= '' then
  redis.call('HSETNX', ARGV[8] .. job.batch_id, 'started_at', job.started_at)
end
return {generation, doc, written}
"""

# The one write of a job's document. KEYS: generation key, document, events channel,
# ended channel, batch hash ('' for none), this minute's statistics hash (keys.stats).
# ARGV: generation ('' for none), document JSON, ttl, event JSON, status, batch size to
# add (succeeded), started_at, finished_at, second of the minute, statistics ttl.
# Returns 1 (written), 0 (the job had ended: nothing written), -1 (another generation holds it).
# The terminal write also counts the job in its minute (worker.stats): once, like the batch.
SAVE = """
local current = redis.call('GET', KEYS[1])
if current == 'done' then return 0 end
if ARGV[1] ~= '' then
  -- Only a later delivery outranks this one. A generation that is missing (expired with a
  -- long job, or lost in a failover) or lower is this delivery's again.
  if (tonumber(current or '0') or 0) > tonumber(ARGV[1]) then return -1 end
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
end
local status = ARGV[5]
local finished = status == 'succeeded' or status == 'failed'
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('PUBLISH', KEYS[3], ARGV[4])
if finished then
  redis.call('PUBLISH', KEYS[4], ARGV[2])
  redis.call('SET', KEYS[1], 'done', 'EX', ARGV[3])
  redis.call('HINCRBY', KEYS[6], status .. ':' .. ARGV[9], 1)
  redis.call('EXPIRE', KEYS[6], ARGV[10])
end
if KEYS[5] ~= '' then
  if status == 'running' and ARGV[7] ~= '' then redis.call('HSETNX', KEYS[5], 'started_at', ARGV[7]) end
  if finished then
    local done = redis.call('HINCRBY', KEYS[5], 'done', 1)
    redis.call('HINCRBY', KEYS[5], status, 1)
    if status == 'succeeded' then redis.call('HINCRBY', KEYS[5], 'bytes_done', ARGV[6]) end
    if tonumber(redis.call('HGET', KEYS[5], 'total') or '0') <= done then
      redis.call('HSETNX', KEYS[5], 'finished_at', ARGV[8])
    end
  end
end
return 1
"""


# A job's terminal write and the next job's claim in one call: a bulk message's jobs run one
# after another, so the claim of the next rides on the outcome of the one before (one round
# trip a job fewer). KEYS: SAVE's six, then CLAIM's four. ARGV: SAVE's ten, then CLAIM's.
# The claim is made only if the save wrote. Returns {the save's answer, the claim's answer if made}.
SAVE_THEN_CLAIM = (
    "local function save(KEYS, ARGV)\n"
    + SAVE
    + "\nend\nlocal function claim(KEYS, ARGV)\n"
    + CLAIM
    + """
end
local save_keys, claim_keys, save_args, claim_args = {}, {}, {}, {}
for i = 1, 6 do save_keys[i] = KEYS[i] end
for i = 7, #KEYS do claim_keys[i - 6] = KEYS[i] end
for i = 1, 10 do save_args[i] = ARGV[i] end
for i = 11, #ARGV do claim_args[i - 10] = ARGV[i] end
local saved = save(save_keys, save_args)
if saved ~= 1 then return {saved} end
return {saved, claim(claim_keys, claim_args)}
"""
)

LEASE_GONE = -1
"""A claim's answer when the delivery's lease is no longer in the lease index."""


@dataclass(frozen=True)
class FirstAttempt:
    """What a claim needs to write the first attempt's ``running`` document as well (see ``CLAIM``)."""

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
    """``CLAIM``'s ARGV: with ``first``, the first attempt's document is written too (``event`` announces it).

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
        self._claim = client.register_script(CLAIM)
        self._save = client.register_script(SAVE)
        self._save_then_claim = client.register_script(SAVE_THEN_CLAIM)

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
        for first in (True, False):
            pipe = self._client.pipeline(transaction=False)
            pipe.evalsha(self._save.sha, len(save_keys), *save_keys, *args)
            pipe.wait(1, max(1, round(timeout * 1000)))
            written, replicas = pipe.execute(raise_on_error=False)
            if first and isinstance(written, redis.exceptions.NoScriptError):
                self._client.script_load(SAVE)  # a new master (a failover), or SCRIPT FLUSH
                continue
            for answer in (written, replicas):
                if isinstance(answer, Exception):
                    raise answer
            break
        return int(written), int(replicas)
