"""`wsupload stats`: what it counts, from which keys, and how it shows it (fakeredis, fixed clocks)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import fakeredis
import pytest

from wsupload.config import Settings
from wsupload.errors import Unauthorized
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import ResultStore, failed, isoformat, new_doc, succeeded, utcnow
from wsupload.worker import stats
from wsupload.worker.cli import build_parser
from wsupload.worker.worker_records import RUNNING, WorkerRecord

NOW = datetime(2026, 11, 24, 15, 0, 30, tzinfo=UTC)
T = NOW.timestamp()
MINUTE = int(T) // 60
SETTINGS = Settings()


def bucket(**fields: int) -> dict[bytes, bytes]:
    """A minute's hash as Redis returns it: ``succeeded_5=2`` is field ``succeeded:5``."""
    return {name.replace("_", ":").encode(): str(n).encode() for name, n in fields.items()}


def test_a_window_counts_the_seconds_it_covers_and_no_others() -> None:
    # NOW is second 30 of MINUTE: the last 60 s are seconds 31-59 of the minute before and 0-30 of this one.
    buckets = {
        MINUTE - 1: bucket(succeeded_30=100, succeeded_31=1, failed_59=2),
        MINUTE: bucket(succeeded_0=3, failed_30=4, succeeded_31=1000),  # second 31 is in the future
    }
    assert stats.count_ended(buckets, T, 60) == {"succeeded": 4, "failed": 6, "cancelled": 0}
    assert stats.count_ended(buckets, T, 3600) == {"succeeded": 104, "failed": 6, "cancelled": 0}
    old = {MINUTE - 60: bucket(succeeded_30=7, succeeded_31=8)}  # an hour ago to the second: only 31 is within it
    assert stats.count_ended(old, T, 3600) == {"succeeded": 8, "failed": 0, "cancelled": 0}


def test_fields_and_counts_that_are_not_what_the_worker_writes_are_skipped() -> None:
    junk = {b"succeeded": b"5", b"retrying:3": b"1", b"failed:x": b"1", b"failed:2": b"many", "succeeded:1": "2"}
    assert stats.count_ended({MINUTE: junk}, T, 60) == {"succeeded": 2, "failed": 0, "cancelled": 0}


def test_the_minutes_read_cover_the_longest_window() -> None:
    wanted = stats.minutes(T, 3600)
    assert wanted[0] <= (int(T) - 3600) // 60
    assert wanted[-1] == MINUTE
    assert len(wanted) == 61


def test_a_queue_is_every_priority_list_kombu_keeps_for_it() -> None:
    assert stats.queue_keys("wsupload") == ["wsupload", "wsupload\x06\x163", "wsupload\x06\x166", "wsupload\x06\x169"]


def record(name: str, jobs: tuple[str, ...] = (), waiting: tuple[str, ...] = ()) -> WorkerRecord:
    return WorkerRecord(
        name=name,
        host="host-a",
        pid=7,
        pool="threads",
        concurrency=4,
        version="0.1.0",
        queues=("wsupload", "wsupload.bulk"),
        state=RUNNING,
        jobs=jobs,
        waiting=waiting,
        other_tasks=(),
        started_at=isoformat(NOW),
        last_beat=isoformat(NOW),
    )


def test_read_sums_queues_counts_ended_jobs_once_and_lists_workers(redis_client: fakeredis.FakeRedis) -> None:
    redis_client.rpush("wsupload", b"m1", b"m2")
    redis_client.rpush("wsupload\x06\x169", b"m3")
    redis_client.rpush("wsupload.bulk", b"m4")
    worker = record("wsupload-7@host-a", jobs=("j1", "j2"), waiting=("j3",))
    redis_client.set(keys.worker(worker.name), json.dumps(worker.to_json()))
    redis_client.zadd(keys.WORKERS, {worker.name: T})

    store = ResultStore(redis_client, ttl=3600, clock=lambda: T - 10)
    ok = succeeded(new_doc("ok", "/a.png", utcnow()), {"download_url": "u", "size": 1}, utcnow(), 60)
    bad = failed(new_doc("bad", "/b.png", utcnow()), Unauthorized("HTTP 401", 401), utcnow())
    assert store.save(ok)
    assert store.save(bad)
    assert not store.save(bad), "the job has ended: a second terminal write is refused"
    ResultStore(redis_client, ttl=3600, clock=lambda: T - 120).save(
        succeeded(new_doc("older", "/c.png", utcnow()), {"download_url": "u", "size": 1}, utcnow(), 60)
    )
    assert 0 < redis_client.ttl(keys.stats(MINUTE)) <= keys.STATS_TTL

    snapshot = stats.read(SETTINGS, redis_client, redis_client, NOW)
    assert [(q.role, q.name, q.depth) for q in snapshot.queues] == [
        ("interactive", "wsupload", 3),
        ("bulk", "wsupload.bulk", 1),
    ]
    assert snapshot.ended == {
        "last_minute": {"succeeded": 1, "failed": 1, "cancelled": 0},
        "last_hour": {"succeeded": 2, "failed": 1, "cancelled": 0},
    }
    assert (snapshot.running, snapshot.waiting) == (2, 1)
    assert snapshot.workers == (worker,)


def test_the_text_shows_every_figure_and_the_workers() -> None:
    snapshot = stats.Snapshot(
        at=NOW,
        queues=(stats.Queue("interactive", "wsupload", 12), stats.Queue("bulk", "wsupload.bulk", 3400)),
        ended={"last_minute": {"succeeded": 40, "failed": 2}, "last_hour": {"succeeded": 1800, "failed": 31}},
        workers=(record("wsupload-7@host-a", jobs=("j1",), waiting=("j2",)),),
    )
    lines = stats.render(snapshot)
    assert lines[0] == "queued     interactive wsupload: 12    bulk wsupload.bulk: 3400"
    assert lines[1].startswith("in flight  1 running, 1 waiting")
    assert lines[2] == "ended      last minute: 40 succeeded, 2 failed    last hour: 1800 succeeded, 31 failed"
    assert lines[3] == "workers    1 live"
    assert lines[4].startswith("  wsupload-7@host-a  host-a/7  threads×4  1 running, 1 waiting  beat 0.0 s ago")
    assert lines[5:] == ["      running  j1", "      waiting  j2"]
    doc = json.loads(stats.as_lines(snapshot, as_json=True)[0])
    assert doc["jobs"] == {"running": 1, "waiting": 1}
    assert doc["queues"][1] == {"role": "bulk", "name": "wsupload.bulk", "depth": 3400, "paused": False}
    assert doc["ended"]["last_hour"] == {"succeeded": 1800, "failed": 31}
    assert doc["workers"][0]["jobs"] == ["j1"]


def test_cancelled_jobs_are_counted_and_shown_once_a_window_has_one() -> None:
    buckets = {MINUTE: bucket(cancelled_10=3, succeeded_10=1)}
    assert stats.count_ended(buckets, T, 60) == {"succeeded": 1, "failed": 0, "cancelled": 3}
    ended = {"last_minute": {"succeeded": 1, "failed": 0, "cancelled": 3}}
    assert stats.render(stats.Snapshot(NOW, (), ended, ()))[2] == (
        "ended      last minute: 1 succeeded, 0 failed, 3 cancelled"
    )
    none = {"last_minute": {"succeeded": 1, "failed": 0, "cancelled": 0}}
    assert stats.render(stats.Snapshot(NOW, (), none, ()))[2] == "ended      last minute: 1 succeeded, 0 failed"


def test_no_workers_is_said() -> None:
    snapshot = stats.Snapshot(NOW, (), {"last_minute": {"succeeded": 0, "failed": 0}}, ())
    assert stats.render(snapshot)[-1] == "workers    0 live"


def test_watch_redraws_in_place_until_ctrl_c() -> None:
    out, sleeps = io.StringIO(), []
    frames = iter([["frame 1"], ["frame 2"]])

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    stats.watch(lambda: next(frames), out, 5.0, sleep=sleep)
    text = out.getvalue()
    assert text.count(stats.CLEAR) == 2
    assert text.index("frame 1") < text.index("frame 2")
    assert "every 5 s, Ctrl-C to stop" in text
    assert sleeps == [5.0, 5.0]


def test_watch_as_json_writes_a_line_per_frame_and_no_escape_codes() -> None:
    out = io.StringIO()
    stats.watch(lambda: ['{"n": 1}'], out, 1.0, as_json=True, sleep=lambda _: None, frames=3)
    assert out.getvalue().splitlines() == ['{"n": 1}'] * 3


def test_a_frame_while_redis_is_away_says_so() -> None:
    error = ConnectionError("Connection refused")
    (text,) = stats.unreachable(error, NOW, as_json=False, retry_in=2)
    assert text == "cannot read Redis (ConnectionError: Connection refused); trying again in 2 s"
    (line,) = stats.unreachable(error, NOW, as_json=True, retry_in=2)
    assert json.loads(line) == {"at": isoformat(NOW), "error": text}


@pytest.mark.parametrize(("argv", "watch"), [([], None), (["--watch"], 2.0), (["--watch", "10"], 10.0)])
def test_watch_takes_an_optional_interval(argv: list[str], watch: float | None) -> None:
    assert build_parser().parse_args(["stats", *argv]).watch == watch


def test_a_watch_interval_below_a_tenth_of_a_second_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["stats", "--watch", "0"])
    assert exit_.value.code == 2
    assert "must be at least 0.1 s" in capsys.readouterr().err
