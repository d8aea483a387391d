"""``wsupload demo``: sample media through the real queue, on a fresh machine.

Uses what is configured and starts what is not: Redis from ``REDIS_URL`` or a
private local one; the sandbox server unless ``--real``; always a real worker
process. It uploads three sample files (the first meets one injected 503, to
show a retry), one ``s3://`` key from a local S3 server (moto) and two files that
must be refused, then checks the uploaded bytes. With the sandbox, one more job
sends a sample through WaveSpeed's direct flow (``options.upload_flow``: a ticket,
then a PUT to the signed URL it names) beside the binary uploads.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from wsupload.config.settings import Settings
from wsupload.tasks.store import results
from wsupload.worker.dev.local_services import LocalRedis, WorkerProcess, start_redis, start_s3
from wsupload.worker.dev.samples import write_samples
from wsupload.worker.dev.sandbox import Fault, SandboxServer
from wsupload.worker.producer import Producer
from wsupload.worker.progress import JobProgress, describe

EXPECTED_FAILURES = {"notes.txt": "invalid_input", "fake.png": "invalid_input"}


def say(text: str) -> None:
    print(text, flush=True)


def run_demo(*, real: bool = False) -> int:
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wsupload-demo-")))
        env = dict(os.environ)

        if env.get("REDIS_URL"):
            say("Redis: using REDIS_URL")
        else:
            local: LocalRedis = start_redis()
            stack.callback(local.stop)
            env["REDIS_URL"] = local.url
            say(f"Redis: started a private {local.kind} at {local.url}")

        sandbox = None
        if real:
            Settings.from_env(env, worker=True)  # a missing key fails here, in one line
            say(f"API: the real endpoint at {env.get('WAVESPEED_BASE_URL', Settings.base_url)}")
        else:
            key = "demo-" + secrets.token_hex(8)
            sandbox = SandboxServer(api_key=key, storage_dir=work).start()
            stack.callback(sandbox.stop)
            sandbox.add_fault(Fault(status=503))
            env.update(WAVESPEED_BASE_URL=sandbox.url, WAVESPEED_API_KEY=key)
            say(f"API: the sandbox at {sandbox.url} (will answer the first upload with 503)")
        store = start_s3("wsupload-demo")
        if store is not None:
            stack.callback(store.stop)
            env.update(store.env)
            say(f"S3: started a local S3-compatible server (moto) at {store.url}")
        else:
            say("S3: moto is not installed; skipping the s3:// sample")
        env.setdefault("WSUPLOAD_BACKOFF_BASE", "0.5")

        settings = Settings.from_env(env)
        producer = Producer(settings)
        worker = WorkerProcess(env=env, log_path=work / "worker.log", concurrency=2).start()
        stack.callback(worker.stop)
        say("Worker: starting `wsupload worker` …")
        worker.wait_ready(producer.app)

        files = write_samples(work / "media")
        samples = {str(path): path.read_bytes() for path in files.values()}
        if store is not None:
            photo = files["sunset.png"].read_bytes()
            samples[store.put("wsupload-demo", "photos/sunset.png", photo)] = photo
        jobs = producer.enqueue(list(samples))
        direct_ids: set[str] = set()
        if sandbox is not None:
            # The binary endpoint stays the default until the direct flow is proven against the real API.
            direct = producer.enqueue([str(files["sunset.png"])], options={"upload_flow": "direct"})
            direct_ids = {job.job_id for job in direct}
            jobs += direct
        say(f"Enqueued {len(jobs)} jobs; waiting for them:")
        progress = JobProgress([j.job_id for j in jobs], sys.stdout)
        outcome = producer.wait([j.job_id for j in jobs], timeout=120, on_update=progress)
        progress.close()

        ok = not outcome.timed_out
        say("")
        for job, doc in zip(jobs, outcome.docs, strict=True):
            say(
                describe(doc, job.job_id)
                + ("\n    (direct flow: a ticket, then a PUT)" if job.job_id in direct_ids else "")
            )
            name = Path(job.source).name
            expected = EXPECTED_FAILURES.get(name)
            if doc is None:
                ok = False
            elif expected:
                ok &= doc["status"] == results.FAILED and doc["error"]["kind"] == expected
            elif doc["status"] != results.SUCCEEDED:
                ok = False
            elif sandbox is not None:
                with urllib.request.urlopen(doc["result"]["download_url"], timeout=10) as answer:  # noqa: S310 (our sandbox)
                    same = answer.read() == samples[job.source]
                say(f"    bytes at download_url {'match' if same else 'DIFFER FROM'} the source")
                ok &= same
                if job.job_id in direct_ids:
                    ok &= doc["result"]["method"] == "direct"
        say("")
        say("Demo passed: uploads succeeded, bad inputs were refused with clear errors." if ok else "Demo FAILED.")
        if not ok:
            say(f"worker log:\n{worker.log_tail()}")
        return 0 if ok else 1
