"""One round for ``benchmarks/job_cpu.py``: run jobs through ``JobRunner.run`` in this process, no queue.

Run by the interpreter of the version under test (``python job_round.py WARM FILE...``,
``REDIS_URL``, ``WAVESPEED_BASE_URL`` and ``WAVESPEED_API_KEY`` set). Each job's
``queued`` document is stored first, as a producer leaves it (not timed); the first
``WARM`` files warm connections and imports, then every file is one timed job.
Prints ``{"ms": CPU milliseconds per timed job}``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

import redis

from wsupload.config import Settings
from wsupload.tasks.job import JobRunner

try:
    from wsupload.tasks.store import results
    from wsupload.tasks.store.results import ResultStore
    from wsupload.tasks.wavespeed.client import UploadClient
except ImportError:  # a version from before tasks/ had subpackages
    from wsupload.tasks.client import UploadClient  # type: ignore[import-not-found,no-redef,unused-ignore]
    from wsupload.tasks.results import ResultStore  # type: ignore[import-not-found,no-redef,unused-ignore]

    from wsupload.tasks import results  # type: ignore[attr-defined,no-redef,unused-ignore]


def main(warm: int, files: list[str]) -> None:
    env = {name: os.environ[name] for name in ("REDIS_URL", "WAVESPEED_BASE_URL", "WAVESPEED_API_KEY")}
    settings = Settings.from_env(env, worker=True)
    client = UploadClient(
        base_url=env["WAVESPEED_BASE_URL"], api_key=env["WAVESPEED_API_KEY"], connect_timeout=5, read_timeout=30
    )
    store = ResultStore(redis.Redis.from_url(env["REDIS_URL"]), settings.result_ttl)
    runner = JobRunner(settings=settings, store=store, client=client)

    def queued(paths: list[str]) -> list[tuple[str, str]]:
        jobs = [(uuid.uuid4().hex, path) for path in paths]
        store.create([results.new_doc(job_id, path, results.utcnow()) for job_id, path in jobs])
        return jobs

    for job_id, path in queued(files[:warm]):
        runner.run(job_id, path)
    jobs = queued(files)
    cpu = time.process_time()
    for job_id, path in jobs:
        runner.run(job_id, path)
    print(json.dumps({"ms": (time.process_time() - cpu) / len(files) * 1000}))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
