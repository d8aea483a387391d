"""What ``wait`` and ``batch wait`` print of large uploads' bytes: on a terminal and in a log."""

import io
import json
from typing import Any

import fakeredis

from wsupload.tasks.store import results
from wsupload.worker.progress import (
    LOG_EVERY,
    BatchProgress,
    InFlight,
    JobProgress,
    bytes_of,
    describe,
    progress_of,
)

MIB = 2**20


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def running(job_id: str, sent: int | None = None, total: int = 48 * MIB) -> dict[str, Any]:
    doc = results.started(results.new_doc(job_id, "/m/a.mp4", results.utcnow()), results.utcnow())
    return doc if sent is None else results.with_progress(doc, sent, total)


def test_bytes_read_in_mib_or_gib_by_the_files_size() -> None:
    assert bytes_of(12 * MIB, 48 * MIB) == "12.0/48.0 MiB"
    assert bytes_of(3 * 2**29, 2 * 2**30) == "1.5/2.0 GiB"


def test_only_a_running_documents_well_formed_progress_counts() -> None:
    assert progress_of(running("a", 5, 10)) == (5, 10)
    assert progress_of(running("a")) is None
    assert progress_of({**running("a", 5, 10), "status": "succeeded"}) is None
    assert progress_of({**running("a"), "progress": {"bytes_sent": "5", "bytes_total": 10}}) is None
    assert progress_of(None) is None


def test_status_shows_a_running_uploads_bytes() -> None:
    assert describe(running("a", 12 * MIB), "a").endswith("\n    .. sent 12.0/48.0 MiB")
    assert "sent" not in describe(running("a"), "a")


def test_a_terminal_line_shows_the_bytes_of_the_uploads_running() -> None:
    out = Terminal()
    watch = JobProgress(["a", "b"], out)
    watch([running("a", 12 * MIB), running("b")])
    assert out.getvalue().endswith("0/2 done (2 running) · 12.0/48.0 MiB\033[K")
    watch([running("a", 12 * MIB), running("b", 4 * MIB, 16 * MIB)])
    assert out.getvalue().endswith("0/2 done (2 running) · 16.0/64.0 MiB in 2 files\033[K")


def test_a_log_gets_a_jobs_bytes_at_most_every_few_seconds_and_only_when_they_moved() -> None:
    out = io.StringIO()
    now = [0.0]
    watch = JobProgress(["a"], out, clock=lambda: now[0])
    for step in range(40):  # ten updates a second for four seconds, bytes moving
        now[0] = step * 0.1
        watch([running("a", step * MIB)])
    now[0] = LOG_EVERY
    watch([running("a", 39 * MIB)])
    now[0] = 2 * LOG_EVERY
    watch([running("a", 39 * MIB)])  # late enough, but the bytes did not move
    now[0] = 2 * LOG_EVERY + 1
    watch([running("a", 40 * MIB)])
    expected = ["a  running  0.0/48.0 MiB", "a  running  39.0/48.0 MiB", "a  running  40.0/48.0 MiB"]
    assert out.getvalue().splitlines() == expected


def test_in_flight_follows_one_batchs_progress_events_and_drops_an_upload_that_changed() -> None:
    client = fakeredis.FakeRedis()
    batch_of = {"a": "B", "b": "B", "other": "X"}
    reads: list[str] = []

    def lookup(job_id: str) -> str | None:
        reads.append(job_id)
        return batch_of.get(job_id)

    watch = InFlight(client, "B", lookup)

    def publish(job_id: str, status: str = "running", sent: int | None = None) -> None:
        event: dict[str, Any] = {"job_id": job_id, "status": status}
        if sent is not None:
            event["progress"] = {"bytes_sent": sent, "bytes_total": 10 * MIB}
        client.publish(results.EVENTS_CHANNEL, json.dumps(event))

    publish("a", sent=1 * MIB)
    publish("other", sent=5 * MIB)
    publish("b", sent=2 * MIB)
    publish("a", sent=3 * MIB)
    client.publish(results.EVENTS_CHANNEL, "not json")
    assert sorted(watch.read()) == [(2 * MIB, 10 * MIB), (3 * MIB, 10 * MIB)]
    publish("b", "succeeded")
    publish("other", sent=6 * MIB)
    assert watch.read() == [(3 * MIB, 10 * MIB)]
    assert reads == ["a", "other", "b"], "each job's batch is read once"

    out = io.StringIO()
    bar = BatchProgress(out, watch)
    bar({"total": 3, "done": 1, "failed": 0})
    assert out.getvalue().rstrip().endswith("· 3.0/10.0 MiB")
    bar.close()
    client.close()
