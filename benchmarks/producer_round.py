"""One round for ``benchmarks/overhead.py``: enqueue the files given, wait for all to succeed.

Run by the interpreter of the version under test (``python producer_round.py FILE...``,
``REDIS_URL`` set), so the producer measured is that version's own. Uses only the
producer API every version has; with ``BENCH_BULK=1`` the jobs go to the bulk queue
(``enqueue(..., bulk=True)``: bulk messages, in versions that have them). Prints
``{"cpu": seconds, "seconds": seconds}``.
"""

from __future__ import annotations

import json
import os
import sys
import time

try:
    from wsupload import Producer, Settings
except ImportError:  # a version from before the wsupload namespace
    from config import Settings  # type: ignore[import-not-found,no-redef,assignment,unused-ignore]
    from worker.producer import Producer  # type: ignore[import-not-found,no-redef,assignment,unused-ignore]


def main(files: list[str]) -> None:
    producer = Producer(Settings.from_env())
    cpu, wall = time.process_time(), time.perf_counter()
    jobs = producer.enqueue(files, bulk=True) if os.environ.get("BENCH_BULK") == "1" else producer.enqueue(files)
    outcome = producer.wait([job.job_id for job in jobs], timeout=600)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if not outcome.all_succeeded:
        sys.exit(f"not every job succeeded: {[d for d in outcome.docs if not d or d['status'] != 'succeeded'][:3]}")
    print(json.dumps({"cpu": cpu, "seconds": wall}))


if __name__ == "__main__":
    main(sys.argv[1:])
