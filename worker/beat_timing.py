"""How often workers beat, and how long a heartbeat record outlives its last beat.

Apart from ``worker.worker_records`` (which re-exports them) so that ``wsupload --help``
can print ``health``'s default age without building the records' classes.
"""

from __future__ import annotations

BEAT_INTERVAL = 2.0
"""Seconds between two beats of a worker."""
MISSED_BEATS = 3
RECORD_TTL = BEAT_INTERVAL * MISSED_BEATS
"""A record outlives its last beat by this much: a worker that died is gone from the listing within it."""
