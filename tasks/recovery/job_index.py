"""Each job's place in its queue's line: what lets the sweep (``tasks.recovery.lost_sweep``) tell a lost message.

kombu's Redis transport takes a message off its queue list (BRPOP) and records it
as unacked in a second round trip; a Redis killed, or a worker dying, in between
loses it. So every upload message pushed onto a queue list ``Q`` gives its job (a
bulk message: each of its jobs) a *place* (an integer score in ``keys.pending(Q)``),
such that the placed messages in ``Q``, read from the end workers take from (BRPOP
pops the right end), are always in ascending place order:

- a push to the back of the line (LPUSH: enqueueing, a requeue after a reject or
  at shutdown, the sweep's redelivery) takes the next value of ``keys.place_counter(Q)``
  (a bulk message's jobs share it, or, enqueued, take consecutive values);
- a push to the front (RPUSH: kombu's restore of an expired delivery, the
  transport's put-back of a message Redis would not record) goes below every place
  in use: ``min(lowest pending place, highest place taken, or 0) - 1``;
- taking a message (``QoS.append``, in the same MULTI that records it unacked)
  removes its jobs from ``pending`` and raises ``keys.last_taken(Q)`` to their highest place.

Then a job still in ``pending`` with a place below the highest one taken is either
one of the few pushed to the front since (still at the front of the line, where
the sweep looks for it) or was taken and never recorded: lost.

Every script here is sent with EVAL and its text: inside kombu's MULTI an EVALSHA
that met NOSCRIPT would fail alone while the rest of the transaction ran, and
redis-py's ``Script`` objects in a pipeline cost a round trip per execute. They
never raise for a place they cannot keep (a foreign key in the way): the message
itself matters more than its place.
"""

from __future__ import annotations

from wsupload.tasks.store import keys

_FRONT = """
local function front_place(pending, taken)
  local low = redis.pcall('ZRANGE', pending, 0, 0, 'WITHSCORES')
  local m = type(low) == 'table' and tonumber(low[2]) or nil
  local w = redis.pcall('GET', taken)
  w = type(w) == 'string' and tonumber(w) or nil
  if w and (not m or w < m) then m = w end
  return math.floor(m or 0) - 1
end
"""

PUSH = (
    _FRONT
    + """
-- KEYS: the queue list, its pending set, place counter and highest place taken.
-- ARGV: the message, 'back' (LPUSH) or 'front' (RPUSH), then the jobs it carries (none: places nothing).
-- A bulk message's jobs share one place: they leave the line together.
local back = ARGV[2] == 'back'
if #ARGV > 2 then
  local place
  if back then place = redis.pcall('INCR', KEYS[3]) else place = front_place(KEYS[2], KEYS[4]) end
  if type(place) == 'number' then
    for i = 3, #ARGV do redis.pcall('ZADD', KEYS[2], string.format('%d', place), ARGV[i]) end
  end
end
if back then return redis.call('LPUSH', KEYS[1], ARGV[1]) end
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""
)
"""Push a message onto a queue list, placing its jobs at that end of the line."""

TAKE = """
-- KEYS: pairs of (pending set, highest place taken), one per list the message may have come from.
-- ARGV: the jobs the message carries.
for i = 1, #KEYS, 2 do
  local w = redis.pcall('GET', KEYS[i + 1])
  w = type(w) == 'string' and tonumber(w) or nil
  local high = w
  for j = 1, #ARGV do
    local p = redis.pcall('ZSCORE', KEYS[i], ARGV[j])
    if type(p) == 'string' then
      redis.pcall('ZREM', KEYS[i], ARGV[j])
      if not high or tonumber(p) > high then high = tonumber(p) end
    end
  end
  if high ~= w then redis.pcall('SET', KEYS[i + 1], string.format('%d', high)) end
end
return 0
"""
"""A worker took the message: its jobs no longer wait in the line (run in the MULTI that records it unacked)."""


def line_keys(queue_list: str) -> list[str]:
    """``PUSH``'s KEYS for a queue list."""
    return [queue_list, keys.pending(queue_list), keys.place_counter(queue_list), keys.last_taken(queue_list)]


def taken_keys(queue_lists: list[str]) -> list[str]:
    """``TAKE``'s KEYS for the lists a message may have come from."""
    return [key for queue_list in queue_lists for key in (keys.pending(queue_list), keys.last_taken(queue_list))]
