"""Redis Sentinel (issue 13): a batch outlives its master's death, every job accounted for.

A real group (``tests.integration.sentinels``: a master, a replica, three sentinels,
quorum 2, passwords on both) is the result store and the broker of a real worker,
reached only through the Sentinel URL. A batch of 100 small files runs against a
sandbox answering in ~20 ms; the master is SIGKILLed mid-batch and the sentinels
promote the replica. Then the batch must complete: every job terminal and counted
once, ``Producer.wait_batch`` and ``wsupload batch wait`` returning normally, and the
other commands reading the new master.

Replication is asynchronous: writes the master acknowledged in its last moments may
never have reached the replica. The test makes that window real: the replica is
stopped (SIGSTOP) and its link cut while a few jobs end on the master alone, then the
master dies and the replica resumes. A job whose outcome was lost so runs again (the
lease restore and the sweep find it, fencing keeps one final document); an upload it
had sent is then sent again. The test counts those duplicates from the sandbox's
records and bounds them by the outcomes lost and the jobs the worker held.

With ``WSUPLOAD_REPLICA_WAIT`` the worker waits for the replica to have each outcome
before acknowledging the message (``WAIT 1``): then no outcome is lost, and once the
replica is the master, with no replica of its own, the worker says so (once) and
every job waits the whole time.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import producer_env, unavailable
from tests.integration.conftest import run_cli as cli
from tests.integration.sentinels import SentinelGroup
from wsupload.config import Settings
from wsupload.tasks.store import results
from wsupload.worker.dev.local_services import WorkerProcess, wait_until
from wsupload.worker.dev.samples import distinct_pngs
from wsupload.worker.dev.sandbox import SandboxServer
from wsupload.worker.producer import Producer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOBS = 100
CONCURRENCY = 4
LATENCY = 0.02
"""Seconds the sandbox takes to answer each upload."""
KILL_AFTER = 20
"""Jobs done before replication stops and the master dies: the batch well under way, most of it to run."""
PROMOTION = 30.0
"""Seconds the sentinels may take to promote the replica (about 2-3 here: down after 1 s, then a vote)."""
SETTLE = 90.0
"""Seconds the batch may take to complete after the promotion: jobs whose outcome was lost come back
within a lease (3 s here) and a sweep."""


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    if shutil.which("redis-server") is None:
        unavailable("no redis-server binary: a Sentinel group needs one (scripts/install-redis)")
    group = SentinelGroup(tmp_path / "sentinel", "master-" + uuid.uuid4().hex, "sentinel-" + uuid.uuid4().hex)
    try:
        yield group.start()
    finally:
        group.stop()


@pytest.fixture
def slow_sandbox(sandbox: SandboxServer) -> Iterator[SandboxServer]:
    sandbox.latency = LATENCY
    try:
        yield sandbox
    finally:
        sandbox.latency = 0.0


class Waiter(threading.Thread):
    """``Producer.wait_batch`` in a thread, keeping what it returned or raised."""

    def __init__(self, producer: Producer, batch_id: str) -> None:
        super().__init__(daemon=True)
        self.producer, self.batch_id = producer, batch_id
        self.result: tuple[dict[str, Any], bool] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.producer.wait_batch(self.batch_id, timeout=PROMOTION + SETTLE + 60)
        except BaseException as exc:  # reported by the test
            self.error = exc


# 2 s: the master must die while the first unreplicated outcome still waits for its replica. At
# 0.5 s a loaded CI machine once kept this test from its kill longer than that: the wait ran out,
# the outcome was acknowledged unreplicated (as documented for a timeout) and lost with the master.
# Each job after the failover (no replica) waits the whole time: about 75 jobs x 2 s over 4 threads.
@pytest.mark.parametrize("replica_wait", ["0", "2"], ids=["no-replica-wait", "replica-wait"])
def test_a_batch_completes_across_a_failover_with_every_job_accounted_for(
    replica_wait: str,
    group: SentinelGroup,
    worker_env: dict[str, str],
    slow_sandbox: SandboxServer,
    media_root: Path,
    tmp_path: Path,
) -> None:
    assert group.master is not None
    assert group.replica is not None
    queue = "sentinel-" + uuid.uuid4().hex[:8]
    # One URL for results and broker alike, as REDIS_URL: nothing here names the master's address.
    env = {
        **worker_env,
        "REDIS_URL": group.url,
        "WSUPLOAD_QUEUE": queue,
        "WSUPLOAD_BULK_QUEUE": f"{queue}.bulk",
        "WSUPLOAD_REPLICA_WAIT": replica_wait,
    }
    penv = producer_env(env)
    producer = Producer(Settings.from_env(penv))
    files = distinct_pngs(media_root / queue, JOBS)
    worker = WorkerProcess(env=env, log_path=tmp_path / "worker.log", concurrency=CONCURRENCY)
    batch_wait: subprocess.Popen[str] | None = None
    try:
        batch = producer.enqueue_batch([str(path) for path in files], name=queue)
        waiter = Waiter(producer, batch.batch_id)
        waiter.start()
        batch_wait = subprocess.Popen(
            [sys.executable, "-m", "wsupload.worker.cli", "batch", "wait", queue, "--timeout", "3m"],
            env=penv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Both waiters have read the batch once (a wait that never reached Redis gives up at once).
        wait_until(
            lambda: producer.redis.pubsub_numsub(results.ENDED_CHANNEL)[0][1] >= 2, 30, what="both waiters to listen"
        )
        worker.start()

        def done() -> int:
            info = producer.batches.get(batch.batch_id)
            return int(info["done"]) if info else 0

        # The whole batch takes about a second once the worker is up: poll often.
        wait_until(lambda: done() >= KILL_AFTER, 60, interval=0.01, what=f"{KILL_AFTER} jobs to end")
        # Replication falls behind (a slow link, a busy replica): what the master takes from now on,
        # the replica never gets. Stopped, the replica cannot reconnect; its link is cut, so nothing
        # more reaches even its socket buffer. The master dies once outcomes were written on it
        # alone: as many as the worker runs at once; or, when each waits for the replica, the first
        # one (killed while it waits, well within its WAIT's timeout).
        unreplicated = CONCURRENCY if replica_wait == "0" else 1
        group.replica.process.send_signal(signal.SIGSTOP)
        try:
            group.data_client(group.master).client_kill_filter(_type="replica")
            lagging_from = done()
            wait_until(lambda: done() >= lagging_from + unreplicated, 30, interval=0.01, what="unreplicated outcomes")
            done_at_kill = done()
            group.master.kill()
        finally:
            group.replica.process.send_signal(signal.SIGCONT)
        assert done_at_kill < JOBS, "the batch ended before the master died: the test proves nothing"

        wait_until(lambda: group.master_port() == group.replica.port, PROMOTION, what="the replica's promotion")
        wait_until(lambda: waiter.result is not None or waiter.error is not None, SETTLE, what="the batch to complete")
        assert waiter.error is None, repr(waiter.error)
        assert waiter.result is not None
        info, timed_out = waiter.result
        out, err = batch_wait.communicate(timeout=60)
        assert batch_wait.returncode == 0, err

        # Every command reads the new master through the same URL, and the broker answers control commands.
        worker.wait_ready(producer.app, timeout=30)
        status = cli(penv, "batch", "status", queue, "--json")
        assert status.returncode == 0, status.stderr
        workers = cli(penv, "workers", "--json")
        assert workers.returncode == 0, workers.stderr
        stats = cli(penv, "stats", "--json")
        assert stats.returncode == 0, stats.stderr
        docs = producer.status([job.job_id for job in batch.jobs])
        assert worker.process is not None
        assert worker.process.poll() is None, worker.log_tail()
    finally:
        worker.stop()
        if batch_wait is not None and batch_wait.poll() is None:
            batch_wait.kill()
            batch_wait.communicate()

    # Every job accounted for: terminal, counted once by the batch, and it succeeded.
    assert (timed_out, info["done"], info["total"]) == (False, JOBS, JOBS)
    assert all(doc is not None and doc["status"] in results.TERMINAL for doc in docs)
    assert Counter(doc["status"] for doc in docs if doc) == {results.SUCCEEDED: JOBS}
    assert f"0 failed of {JOBS}" in out, out
    assert '"statuses": {"succeeded": 100}' in status.stdout, status.stdout
    assert all(name in workers.stdout for name in worker.hostnames)  # its heartbeats found the new master too

    # What the failover cost: uploads sent more than once, each job's file named by its upload.
    uploads = Counter(record.filename for record in slow_sandbox.records if record.status == 200)
    assert set(uploads) == {path.name for path in files}
    duplicates = sum(uploads.values()) - JOBS
    # An outcome the old master took and the replica never got: the worker said the job succeeded,
    # then (its document still "running" on the new master) it ran, and succeeded, again.
    log = worker.log_path.read_text(errors="replace")
    lost = sorted(job for job, n in Counter(re.findall(r"job (\w+) succeeded after", log)).items() if n > 1)
    print(
        f"\nfailover (WSUPLOAD_REPLICA_WAIT={replica_wait}): master killed at {done_at_kill}/{JOBS} jobs done;"
        f" {duplicates} upload(s) sent again; {len(lost)} outcome(s) lost with the master"
    )
    # Sent again: an upload in flight when the master died (its outcome could not be written, so the
    # job ran again), at most what the worker held (CONCURRENCY running, one prefetched per process), or
    # one whose written outcome replication lost.
    processes = len(worker.hostnames)
    assert duplicates <= CONCURRENCY + processes + len(lost), uploads.most_common(CONCURRENCY + 2)
    unconfirmed = re.findall(r"no replica confirmed its outcome", log)
    if replica_wait != "0":
        # Every acknowledged outcome was on the replica that became the master.
        assert lost == []
        # The new master has no replica: said once per worker process, not once per job.
        assert len(unconfirmed) == processes, unconfirmed
    else:
        # The window was real: outcomes the worker had acknowledged were lost, and those jobs ran again.
        assert lost, "no outcome was lost with the master: the window of loss was not exercised"
        assert unconfirmed == []

    # Neither password is ever shown: not in the worker's log nor in any command's output.
    shown = log + out + err + status.stdout + status.stderr + stats.stdout
    for secret in (group.password, group.sentinel_password):
        assert secret not in shown
