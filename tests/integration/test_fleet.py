"""Bulk ingestion with several workers: batches, priorities, the shared rate limit, dedup."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Fleet
from wsupload.tasks.store.results import TERMINAL
from wsupload.worker.dev.local_services import wait_until
from wsupload.worker.dev.samples import distinct_pngs, png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer

pytestmark = pytest.mark.integration


def ingest(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "wsupload.worker.cli", "ingest", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_a_2000_file_batch_through_two_workers_accounts_for_every_job(
    fleet: Fleet, sandbox: SandboxServer, media_root: Path, tmp_path: Path
) -> None:
    folder = media_root / "bulk-2000"
    distinct_pngs(folder, 2000)
    # More attempts than injected 503s: no job can run out, whichever answers it meets.
    workers = fleet(count=2, concurrency=4, WSUPLOAD_MAX_ATTEMPTS="31")
    sandbox.add_fault(Fault(status=400, times=20))  # 20 permanent failures
    sandbox.add_fault(Fault(status=503, times=30))  # then 30 transient ones, retried
    output = tmp_path / "results.jsonl"
    result = ingest(workers.env, str(folder), "--batch", "bulk-2000", "--output", str(output))
    assert result.returncode == 1, result.stdout + result.stderr  # some jobs failed, as injected
    assert "1980 succeeded, 20 failed of 2000" in result.stdout

    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 2000
    assert len({row["source"] for row in rows}) == 2000
    failed = [row for row in rows if row["status"] == "failed"]
    assert len(failed) == 20
    assert all(row["error_kind"] == "rejected" for row in failed)
    assert all(row["download_url"] and row["expires_at"] for row in rows if row["status"] == "succeeded")
    assert len(sandbox.records) == 2000 + 30

    # Run it again: only the 20 that failed are uploaded; the rest reuse their earlier upload.
    sandbox.reset()
    again = ingest(workers.env, str(folder), "--batch", "bulk-2000", "--output", str(tmp_path / "again.jsonl"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(sandbox.records) == 20
    rows = [json.loads(line) for line in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert sum(row["reused"] for row in rows) == 1980


def test_an_interactive_upload_overtakes_a_bulk_backlog(fleet: Fleet, sandbox: SandboxServer, media_root: Path) -> None:
    paths = distinct_pngs(media_root / "backlog", 200)
    urgent = media_root / "urgent.png"
    urgent.write_bytes(png_bytes(3, 3))
    workers = fleet(count=1, concurrency=1)
    sandbox.latency = 0.02  # 200 bulk uploads take about 4 s one at a time
    try:
        batch = workers.producer.enqueue_batch([str(p) for p in paths], options={"dedup": False})
        wait_until(lambda: len(sandbox.records) >= 3, 30, what="the backlog to start")
        (job,) = workers.producer.enqueue([str(urgent)])
        outcome = workers.producer.wait([job.job_id], timeout=30)
        info = workers.producer.batches.get(batch.batch_id)
    finally:
        sandbox.latency = 0.0
    assert outcome.all_succeeded
    assert info is not None
    # Taken next, not after the other ~195: at most the upload in hand and one more finished first.
    assert info["done"] <= 3 + 2, info


def test_the_rate_limit_holds_across_workers(fleet: Fleet, sandbox: SandboxServer, media_root: Path) -> None:
    paths = distinct_pngs(media_root / "limited", 16)
    workers = fleet(count=2, concurrency=3, WSUPLOAD_RATE_LIMIT="8", WSUPLOAD_MAX_CONCURRENT_UPLOADS="2")
    sandbox.latency = 0.05
    try:
        jobs = workers.producer.enqueue([str(p) for p in paths])
        outcome = workers.producer.wait([j.job_id for j in jobs], timeout=60)
    finally:
        sandbox.latency = 0.0
    assert outcome.all_succeeded
    arrivals = sorted(record.received_at for record in sandbox.records)
    assert len(arrivals) == 16
    # Eight a second across six worker processes: any four consecutive requests span at least
    # three eighths of a second, less a little: Redis decides when each may go, the sandbox
    # records when it arrives, and on a loaded machine one request may arrive late and the
    # next on time. Two let through together would make a span of two eighths at most.
    spans_of_four = [arrivals[n + 3] - arrivals[n] for n in range(len(arrivals) - 3)]
    assert min(spans_of_four) >= 3 * 0.125 - 0.04, spans_of_four
    # Never more than two in flight at once.
    spans = [(r.received_at, r.answered_at) for r in sandbox.records]
    busiest = max(sum(1 for s, e in spans if s <= moment < e) for moment, _ in spans)
    assert busiest <= 2


def test_a_429_pauses_the_whole_fleet(fleet: Fleet, sandbox: SandboxServer, media_root: Path) -> None:
    paths = distinct_pngs(media_root / "paused", 6)
    # The pause is part of the fleet limiter, active once any limit is set.
    workers = fleet(count=2, concurrency=2, WSUPLOAD_MAX_CONCURRENT_UPLOADS="100")
    sandbox.add_fault(Fault(status=429, retry_after="2"))
    jobs = workers.producer.enqueue([str(p) for p in paths])
    outcome = workers.producer.wait([j.job_id for j in jobs], timeout=60)
    assert outcome.all_succeeded
    first = sandbox.records[0]
    assert first.status == 429
    # Requests that were already in flight may land; none starts in the paused two seconds after them.
    started_later = [r.received_at for r in sandbox.records[1:] if r.received_at > first.answered_at + 0.1]
    assert started_later
    assert min(started_later) >= first.answered_at + 2.0
    assert all(doc is not None and doc["status"] in TERMINAL for doc in outcome.docs)
