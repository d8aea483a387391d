"""One round for ``benchmarks/bulk.py``: enqueue the files K jobs to a message, wait for all to succeed.

``python bulk_round.py K FILE...`` with ``REDIS_URL`` set. K = 1 is today's
producer (``Producer.enqueue``: documents, messages and the sweep's places in
one commit). K > 1 is the prototype: each job's ``queued`` document as the
producer writes it, and one ``wsupload.upload_many`` message per K jobs, built
from ``tasks.wire``'s envelope, in one pipelined transaction; no batch records
and no sweep places (what a real producer for it would still have to write).
Prints ``{"cpu": seconds, "seconds": seconds}`` for the producer's own process.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import uuid

from benchmarks.bulk_task import UPLOAD_MANY_TASK_NAME
from wsupload import Producer, Settings
from wsupload.tasks import results, wire

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def bulk_message(jobs: list[tuple[str, str]], queue: str) -> str:
    """A ``wsupload.upload_many`` message for ``jobs``: ``wire.upload_message``'s envelope, task and body swapped."""
    message_id = uuid.uuid4().hex
    envelope = json.loads(wire.upload_message(message_id, "-", queue))
    args = [[list(job) for job in jobs]]
    envelope["headers"] |= {"task": UPLOAD_MANY_TASK_NAME, "argsrepr": f"<{len(jobs)} jobs>", "kwargsrepr": "{}"}
    envelope["body"] = base64.b64encode(json.dumps([args, {}, EMBED]).encode()).decode()
    return json.dumps(envelope)


def enqueue_many(producer: Producer, files: list[str], per_message: int) -> list[str]:
    settings, client = producer.settings, producer.redis
    queue, now = settings.queue, results.utcnow()
    jobs = [(uuid.uuid4().hex, source) for source in files]
    pipe = client.pipeline(transaction=True)
    for job_id, source in jobs:
        doc = results.new_doc(job_id, source, now, None, None)
        pipe.set(results.result_key(job_id), json.dumps(doc), ex=settings.result_ttl)
    messages = [bulk_message(jobs[i : i + per_message], queue) for i in range(0, len(jobs), per_message)]
    pipe.lpush(queue, *messages)
    pipe.execute()
    return [job_id for job_id, _ in jobs]


def main(per_message: int, files: list[str]) -> None:
    producer = Producer(Settings.from_env())
    cpu, wall = time.process_time(), time.perf_counter()
    if per_message == 1:
        job_ids = [job.job_id for job in producer.enqueue(files)]
    else:
        job_ids = enqueue_many(producer, files, per_message)
    outcome = producer.wait(job_ids, timeout=600)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if not outcome.all_succeeded:
        sys.exit(f"not every job succeeded: {[d for d in outcome.docs if not d or d['status'] != 'succeeded'][:3]}")
    print(json.dumps({"cpu": cpu, "seconds": wall}))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
