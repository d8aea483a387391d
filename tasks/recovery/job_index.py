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
- taking a message (``QoS.append``, in the same script that records it unacked)
  removes its jobs from ``pending`` and raises ``keys.last_taken(Q)`` to their highest place.

Then a job still in ``pending`` with a place below the highest one taken is either
one of the few pushed to the front since (still at the front of the line, where
the sweep looks for it) or was taken and never recorded: lost.

The scripts are ``job_index_push.lua`` and ``job_index_take.lua`` (``tasks.store.lua``;
``TAKE`` runs inside ``unacked_record.lua``, the transport's one call per delivery). ``PUSH``
is sent with EVAL and its text, not as a redis-py ``Script`` object: inside kombu's
MULTI an EVALSHA that met NOSCRIPT would fail alone while the rest of the
transaction ran, and a pipeline holding a ``Script`` asks ``SCRIPT EXISTS`` before
every execute (``Pipeline.load_scripts``), a round trip more per message. They
never raise for a place they cannot keep (a foreign key in the way): the message
itself matters more than its place.
"""

from __future__ import annotations

from wsupload.tasks.store import keys, lua

PUSH = lua.load("job_index_push")
"""Push a message onto a queue list, placing its jobs at that end of the line."""

TAKE = lua.load("job_index_take")
"""A worker took the message: its jobs no longer wait in the line (included in the script that records it unacked)."""


def line_keys(queue_list: str) -> list[str]:
    """``PUSH``'s KEYS for a queue list."""
    return [queue_list, keys.pending(queue_list), keys.place_counter(queue_list), keys.last_taken(queue_list)]


def taken_keys(queue_lists: list[str]) -> list[str]:
    """``TAKE``'s KEYS for the lists a message may have come from."""
    return [key for queue_list in queue_lists for key in (keys.pending(queue_list), keys.last_taken(queue_list))]
