"""One round for ``benchmarks/bulk.py``: enqueue the files as one batch, K jobs to a message; wait for all.

``python bulk_round.py K FILE...`` with ``REDIS_URL`` set. The producer is the
shipped one (``Producer.enqueue_batch``, deduplication off so every job uploads)
with ``WSUPLOAD_JOBS_PER_MESSAGE=K``: K = 1 is one ``wsupload.upload`` message per
job, K > 1 ``wsupload.upload_many`` messages of up to K jobs (a batch of 1,000
spreads evenly over a multiple of 32 messages: K = 32 carries 31 or 32). Prints
``{"cpu": seconds, "seconds": seconds}`` for the producer's own process.
"""

from __future__ import annotations

import json
import os
import sys
import time

from wsupload import Producer, Settings
from wsupload.tasks import enqueue


def enqueue_many(files: list[str], per_message: int, *, spread: int | None = None) -> tuple[Producer, list[str]]:
    """A producer for ``REDIS_URL`` putting ``per_message`` jobs in a message, and the batch's job ids.

    ``spread``: the fewest messages a call spreads over (``tasks.enqueue.SPREAD``), lowered
    to send a small batch as one message.
    """
    if spread is not None:
        enqueue.SPREAD = spread
    producer = Producer(Settings.from_env({**os.environ, "WSUPLOAD_JOBS_PER_MESSAGE": str(per_message)}))
    batch = producer.enqueue_batch(files, options={"dedup": False})
    return producer, [job.job_id for job in batch.jobs]


def main(per_message: int, files: list[str]) -> None:
    cpu, wall = time.process_time(), time.perf_counter()
    producer, job_ids = enqueue_many(files, per_message)
    outcome = producer.wait(job_ids, timeout=600)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if not outcome.all_succeeded:
        sys.exit(f"not every job succeeded: {[d for d in outcome.docs if not d or d['status'] != 'succeeded'][:3]}")
    print(json.dumps({"cpu": cpu, "seconds": wall}))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
