"""``wsupload worker --processes 2``: one parent, two threads-pool children, as an operator meets them.

Jobs run in both children; a child SIGKILLed is replaced (a new pid) and its job
comes back as with one process (once, to a terminal outcome); SIGTERM to the parent
drains both children within the stop grace and the parent exits 0 (so do a Ctrl-C
to the group and a remote shutdown of both children); one metrics scrape counts
both children's jobs; ``workers`` lists both; ``health`` fails while a child that
keeps crashing waits for its restart. The workers use a Redis of this module's own,
so ``health`` (any worker on this host) sees no other test's workers. Broker-agnostic
(``core``): ``WSUPLOAD_TEST_BROKER=amqp`` runs it with RabbitMQ as the broker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import tempfile
import urllib.request
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from tests.integration.conftest import Fleet, FleetHandle, finished
from tests.integration.conftest import run_cli as wsupload
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import JobDoc
from wsupload.worker.dev.local_services import LocalRedis, WorkerProcess, free_port, wait_until
from wsupload.worker.dev.samples import distinct_pngs
from wsupload.worker.dev.sandbox import Fault, SandboxServer
from wsupload.worker.worker_records import SupervisorRecord

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.core]


def two_children(fleet: Fleet, own_redis: LocalRedis, **env: str) -> tuple[FleetHandle, WorkerProcess]:
    handle = fleet(1, concurrency=2, REDIS_URL=own_redis.url, WSUPLOAD_PROCESSES="2", **env)
    (worker,) = handle.workers
    assert len(worker.hostnames) == 2
    return handle, worker


def parent_record(handle: FleetHandle, worker: WorkerProcess) -> SupervisorRecord | None:
    assert worker.process is not None
    name = worker.hostname  # the parent's node name: wsupload-<pid>@<host>
    raw = handle.producer.redis.get(keys.supervisor(name))
    return None if raw is None else SupervisorRecord.from_json(json.loads(raw))


def child_pid(handle: FleetHandle, worker: WorkerProcess, index: int) -> int | None:
    record = parent_record(handle, worker)
    if record is None:
        return None
    (child,) = [c for c in record.children if c.index == index]
    return child.pid if child.state == "running" else None


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def sample(text: str, series: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(series + " ")]
    return float(line.split()[-1])


def test_jobs_run_in_both_children_and_one_scrape_and_one_listing_show_both(
    fleet: Fleet, own_redis: LocalRedis, sandbox: SandboxServer, media_root: Path
) -> None:
    port = free_port()
    handle, worker = two_children(fleet, own_redis, WSUPLOAD_METRICS_PORT=str(port), WSUPLOAD_METRICS_ADDR="127.0.0.1")
    paths = distinct_pngs(media_root / f"procs-{uuid.uuid4().hex[:6]}", 40)
    sandbox.latency = 0.05  # each upload holds its thread a while: both children take some
    try:
        jobs = handle.producer.enqueue([str(p) for p in paths])
        outcome = handle.producer.wait([j.job_id for j in jobs], timeout=60)
    finally:
        sandbox.latency = 0.0
    assert outcome.all_succeeded
    assert {doc["worker"] for doc in outcome.docs if doc} == set(worker.hostnames)

    # One scrape of the parent: both children's jobs, and the queue depths once. A job's end is
    # published before its worker counts it, so the last count may follow the wait by a moment.
    succeeded = 'wsupload_jobs_total{kind="none",outcome="succeeded"}'

    def all_counted() -> str | None:
        text = scrape(port)
        return text if sample(text, succeeded) == 40 else None

    text = wait_until(all_counted, 10, what="all 40 jobs counted in the scrape")
    assert sample(text, succeeded) == 40
    assert sample(text, "wsupload_http_attempts_total") == 40
    assert sample(text, "wsupload_jobs_in_flight") == 0
    assert text.count(f'wsupload_queue_depth{{queue="{handle.producer.settings.queue}"}}') == 1
    assert sample(text, "process_cpu_seconds_total") > 0

    listing = wsupload(handle.env, "workers", "--json")
    assert listing.returncode == 0, listing.stderr
    assert sorted(r["name"] for r in json.loads(listing.stdout)) == sorted(worker.hostnames)
    text_listing = wsupload(handle.env, "workers").stdout
    assert f"{worker.hostname}  " in text_listing
    assert "parent of 2" in text_listing
    for name in worker.hostnames:
        assert f"  {name}  pid " in text_listing
    health = wsupload(handle.env, "health")
    assert health.returncode == 0, health.stderr


def test_a_sigkilled_child_is_replaced_and_its_job_comes_back_once(
    fleet: Fleet, own_redis: LocalRedis, sandbox: SandboxServer, media_root: Path
) -> None:
    handle, worker = two_children(fleet, own_redis, WSUPLOAD_READ_TIMEOUT="60")
    (path,) = distinct_pngs(media_root / f"killed-{uuid.uuid4().hex[:6]}", 1)
    sandbox.add_fault(Fault(stall=30))  # the first upload hangs at the server
    (job,) = handle.producer.enqueue([str(path)])
    wait_until(lambda: len(sandbox.records) == 1, 30, what="the upload to reach the sandbox")
    doc = handle.producer.status([job.job_id])[0]
    assert doc is not None
    assert doc["worker"] in worker.hostnames
    index = worker.hostnames.index(doc["worker"]) + 1
    old = wait_until(lambda: child_pid(handle, worker, index), 10, what="the parent's record")

    killed_at = datetime.now()
    os.kill(old, signal.SIGKILL)
    new = wait_until(
        lambda: (pid := child_pid(handle, worker, index)) not in (None, old) and pid, 10, what="a new child"
    )
    assert new != old
    # The bound the issue states: restarted within 1 s (the parent's own clock, in its log).
    restarted = wait_until(lambda: re.search(rf"\[([^\]]+): INFO/Parent\] restarted child {index}: ", log(worker)), 10)
    took = (datetime.strptime(restarted.group(1), "%Y-%m-%d %H:%M:%S,%f") - killed_at).total_seconds()
    assert took <= 1.0, took
    assert f"child {index} (pid {old}) killed by SIGKILL; restarting" in log(worker)

    # As with one process: the lease runs out, another delivery takes the job, it ends once.
    ended: JobDoc = wait_until(finished(handle.producer, job.job_id), 60, interval=0.2, what="the job to finish")
    assert ended["status"] == "succeeded"
    assert (ended["generation"], ended["attempts"]) == (2, 2)
    assert ended["worker"] in worker.hostnames
    assert len(sandbox.records) == 2
    wait_until(lambda: wsupload(handle.env, "health").returncode == 0, 30, what="health to pass again")
    assert worker.process is not None
    assert worker.process.poll() is None


def test_sigterm_to_the_parent_drains_every_child_and_it_exits_0(
    fleet: Fleet, own_redis: LocalRedis, sandbox: SandboxServer, media_root: Path
) -> None:
    handle, worker = two_children(fleet, own_redis, WSUPLOAD_STOP_GRACE="20", WSUPLOAD_READ_TIMEOUT="60")
    paths = distinct_pngs(media_root / f"drain-{uuid.uuid4().hex[:6]}", 2)
    sandbox.add_fault(Fault(stall=3, times=2))  # both uploads take 3 s: one in each child (a thread each)
    jobs = handle.producer.enqueue([str(p) for p in paths])
    wait_until(lambda: len(sandbox.records) == 2, 30, what="both uploads to reach the sandbox")
    running = [handle.producer.status([j.job_id])[0] for j in jobs]
    assert {doc["worker"] for doc in running if doc} == set(worker.hostnames)

    assert worker.process is not None
    os.kill(worker.process.pid, signal.SIGTERM)  # to the parent alone, as docker stop and systemd send it
    assert worker.process.wait(timeout=60) == 0
    docs = handle.producer.status([j.job_id for j in jobs])
    # Finished inside the grace by the children that held them: no second delivery.
    assert [(d["status"], d["generation"], d["attempts"]) for d in docs if d] == [("succeeded", 1, 1)] * 2
    assert len(sandbox.records) == 2
    text = log(worker)
    assert text.count("Warm shutdown") == 2
    assert "every child stopped; exiting 0" in text
    assert "Traceback" not in text
    assert parent_record(handle, worker) is None  # deleted on the way out
    assert wsupload(handle.env, "workers").stdout == "no live workers\n"


def stop_by_sigint(handle: FleetHandle, worker: WorkerProcess) -> None:
    assert worker.process is not None
    os.killpg(worker.process.pid, signal.SIGINT)  # Ctrl-C in a terminal: the parent and both children


def stop_remotely(handle: FleetHandle, worker: WorkerProcess) -> None:
    handle.producer.app.control.shutdown(destination=worker.hostnames)


@pytest.mark.parametrize("stop", [stop_by_sigint, stop_remotely], ids=["sigint", "remote"])
def test_other_normal_stops_end_the_parent_with_0(
    fleet: Fleet, own_redis: LocalRedis, stop: Callable[[FleetHandle, WorkerProcess], None]
) -> None:
    handle, worker = two_children(fleet, own_redis)
    stop(handle, worker)
    assert worker.process is not None
    assert worker.process.wait(timeout=60) == 0
    assert "Traceback" not in log(worker)


def test_health_fails_while_a_child_that_keeps_crashing_waits_for_its_restart(
    fleet: Fleet, own_redis: LocalRedis
) -> None:
    handle, worker = two_children(fleet, own_redis)
    assert wsupload(handle.env, "health").returncode == 0
    # A child that crashes again and again: killed as soon as each new one shows. The parent
    # restarts it at once, then after 1 s, 2 s, 4 s, 8 s, 16 s (worker.supervisor.restart_delay): the
    # last wait leaves health 15 s to see it down, room for a slow `wsupload health` on a busy machine
    # (8 s were not enough once, at load 14).
    killed: list[int] = []
    for _ in range(6):
        pid = wait_until(
            lambda: (p := child_pid(handle, worker, 2)) not in (None, *killed) and p, 30, what="child 2 to start"
        )
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    def unhealthy() -> str:
        answer = wsupload(handle.env, "health")
        return answer.stderr if answer.returncode == 1 else ""

    said = wait_until(unhealthy, 15, interval=0.2, what="health to fail")
    assert said.startswith(f"wsupload: unhealthy: {worker.hostnames[1]} (child 2 of {worker.hostname}) is down for ")
    assert "killed by SIGKILL, 5 restart(s), restart at " in said
    record = parent_record(handle, worker)
    assert record is not None
    assert [c.state for c in record.children] == ["running", "restarting"]
    assert "restarting in 16 s (6 quick exits in a row)" in log(worker)

    # Once it is back, health passes again (and nothing else was restarted).
    wait_until(lambda: wsupload(handle.env, "health").returncode == 0, 30, what="health to pass again")
    record = parent_record(handle, worker)
    assert record is not None
    assert [c.restarts for c in record.children] == [0, 6]


def log(worker: WorkerProcess) -> str:
    return worker.log_path.read_text(errors="replace")


def test_children_do_not_outlive_a_parent_that_is_sigkilled(fleet: Fleet, own_redis: LocalRedis) -> None:
    metrics = {"WSUPLOAD_METRICS_PORT": str(free_port()), "WSUPLOAD_METRICS_ADDR": "127.0.0.1"}
    handle, worker = two_children(fleet, own_redis, **metrics)
    pids = [wait_until(lambda k=k: child_pid(handle, worker, k), 10, what="the children") for k in (1, 2)]
    assert worker.process is not None
    (metrics_dir,) = Path(tempfile.gettempdir()).glob(f"wsupload-metrics-{worker.process.pid}-*")
    os.kill(worker.process.pid, signal.SIGKILL)  # the parent alone: nothing forwards a stop
    worker.process.wait()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    # Each child got SIGTERM from the kernel (the parent-death signal): a warm stop, then gone.
    wait_until(lambda: all(gone(pid) for pid in pids), 30, interval=0.1, what="the children to exit")
    assert log(worker).count("Warm shutdown") >= 2  # one each at least (Celery says it per SIGTERM it hears)

    # Nothing ran its cleanup: the next parent removes its children's metrics files (whichever parent
    # starts first on this host: a test running beside this one may already have).
    metrics["WSUPLOAD_METRICS_PORT"] = str(free_port())
    handle, worker = two_children(fleet, own_redis, **metrics)
    wait_until(lambda: child_pid(handle, worker, 2), 30, what="the next worker's children")
    assert not metrics_dir.exists()
