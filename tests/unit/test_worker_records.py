"""Reading heartbeat records: which workers are live, what a health probe decides, what `workers` prints."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import fakeredis
import pytest

from wsupload.tasks.store import keys
from wsupload.tasks.store.results import isoformat
from wsupload.worker import cli, worker_records
from wsupload.worker.worker_records import RECORD_TTL, WorkerRecord, is_fresh, judge, read_records, render

NOW = datetime(2026, 11, 24, 15, 0, 0, tzinfo=UTC)
HOST = "web1"


def record(name: str = "wsupload-7@web1", host: str = HOST, age: float = 1.0, **changes: object) -> WorkerRecord:
    base = WorkerRecord(
        name=name,
        host=host,
        pid=7,
        pool="prefork",
        concurrency=16,
        version="0.1.0",
        queues=("wsupload", "wsupload.bulk"),
        state="running",
        jobs=("job-a", "job-b"),
        waiting=(),
        other_tasks=(),
        started_at=isoformat(NOW - timedelta(hours=1)),
        last_beat=isoformat(NOW - timedelta(seconds=age)),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_record_is_fresh_up_to_max_age_by_the_readers_clock() -> None:
    assert is_fresh(record(age=5.9), NOW, max_age=6)
    assert is_fresh(record(age=6.0), NOW, max_age=6)
    assert not is_fresh(record(age=6.1), NOW, max_age=6)
    assert is_fresh(record(age=-2), NOW, max_age=6)  # a clock a little ahead is not a dead worker
    assert not is_fresh(record(last_beat="yesterday"), NOW, max_age=6)
    assert not is_fresh(record(last_beat="2026-11-24T14:59:59"), NOW, max_age=6)  # no zone: cannot be compared


def test_health_is_ok_for_a_fresh_running_worker_on_this_host() -> None:
    verdict = judge([record(host="other", age=0.1), record(age=1.25)], NOW, RECORD_TTL, host=HOST)
    assert verdict.healthy
    assert verdict.message == "ok: wsupload-7@web1 beat 1.2 s ago, 2 job(s) running"


def test_health_fails_without_a_worker_on_this_host() -> None:
    verdict = judge([record(host="other")], NOW, RECORD_TTL, host=HOST)
    assert not verdict.healthy
    assert verdict.message == "no heartbeat from a worker on host web1: none is running, or it stopped or died"
    assert not judge([], NOW, RECORD_TTL, host=HOST).healthy


def test_health_fails_when_the_last_beat_is_older_than_max_age() -> None:
    verdict = judge([record(age=9.5)], NOW, 6, host=HOST)
    assert not verdict.healthy
    assert verdict.message == "the last heartbeat of wsupload-7@web1 was 9.5 s ago (--max-age 6 s)"
    assert judge([record(age=9.5)], NOW, 10, host=HOST).healthy


def test_health_fails_for_a_worker_that_is_shutting_down() -> None:
    verdict = judge([record(state="stopping")], NOW, RECORD_TTL, host=HOST)
    assert not verdict.healthy
    assert verdict.message == "wsupload-7@web1 is shutting down"


def test_one_fresh_worker_on_the_host_is_enough() -> None:
    records = [record(name="a@web1", age=60), record(name="b@web1", age=1, jobs=())]
    verdict = judge(records, NOW, RECORD_TTL, host=HOST)
    assert verdict.message == "ok: b@web1 beat 1.0 s ago, 0 job(s) running"


def test_name_picks_one_worker_wherever_it_runs() -> None:
    records = [record(name="a@web1", age=60), record(name="b@web2", host="web2")]
    assert judge(records, NOW, RECORD_TTL, host=HOST, name="b@web2").healthy
    assert not judge(records, NOW, RECORD_TTL, host=HOST, name="a@web1").healthy
    verdict = judge(records, NOW, RECORD_TTL, host=HOST, name="c@web1")
    assert verdict.message == "no heartbeat from worker c@web1: none is running, or it stopped or died"


def test_a_record_survives_json_and_refuses_what_is_not_one() -> None:
    one = record(waiting=("job-c",), other_tasks=("wsupload.scan",))
    assert WorkerRecord.from_json(json.loads(json.dumps(one.to_json()))) == one
    assert WorkerRecord.from_json({**one.to_json(), "added_later": 1}) == one  # fields are only ever added
    for broken in ({**one.to_json(), "pid": "7"}, {**one.to_json(), "jobs": "job-a"}, {"name": "x"}, [1], None):
        assert WorkerRecord.from_json(broken) is None


def store(client: fakeredis.FakeRedis, *records: WorkerRecord, raw: dict[str, bytes] | None = None) -> None:
    for r in records:
        client.set(keys.worker(r.name), json.dumps(r.to_json()))
        client.zadd(keys.WORKERS, {r.name: NOW.timestamp()})
    for name, value in (raw or {}).items():
        client.set(keys.worker(name), value)
        client.zadd(keys.WORKERS, {name: NOW.timestamp()})


def test_read_records_lists_the_records_still_in_redis_by_name(redis_client: fakeredis.FakeRedis) -> None:
    store(redis_client, record(name="b@h"), record(name="a@h"), raw={"garbage@h": b"{not json", "list@h": b"[1]"})
    redis_client.zadd(keys.WORKERS, {"expired@h": NOW.timestamp()})  # its record is gone: the worker is dead
    assert [r.name for r in read_records(redis_client, chunk=2)] == ["a@h", "b@h"]
    assert read_records(fakeredis.FakeRedis()) == []


def test_render_says_who_runs_what() -> None:
    lines = render([record(age=0.44, waiting=("job-c",)), record(name="z@web2", host="web2", state="stopping")], NOW)
    assert lines == [
        "wsupload-7@web1  web1/7  prefork×16  2 running, 1 waiting  beat 0.4 s ago  v0.1.0",
        "    running  job-a",
        "    running  job-b",
        "    waiting  job-c",
        "z@web2  web2/7  prefork×16  2 running  beat 1.0 s ago  v0.1.0  stopping",
        "    running  job-a",
        "    running  job-b",
    ]
    assert render([], NOW) == ["no live workers"]


# The commands, against fakeredis.


@pytest.fixture
def cli_redis(monkeypatch: pytest.MonkeyPatch, redis_client: fakeredis.FakeRedis) -> fakeredis.FakeRedis:
    monkeypatch.delenv("WAVESPEED_API_KEY", raising=False)  # neither command may need it
    monkeypatch.setattr(worker_records, "connect", lambda url, timeout: redis_client)
    return redis_client


def live(name: str = "wsupload-7@here", host: str | None = None) -> WorkerRecord:
    now = datetime.now(UTC)
    return replace(record(name=name, host=host or socket.gethostname()), last_beat=isoformat(now))


def test_workers_command_lists_each_worker_and_its_jobs(
    cli_redis: fakeredis.FakeRedis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["workers"]) == 0
    assert capsys.readouterr().out == "no live workers\n"
    store(cli_redis, live())
    assert cli.main(["workers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"wsupload-7@here  {socket.gethostname()}/7  prefork×16  2 running  beat ")
    assert lines[1:] == ["    running  job-a", "    running  job-b"]


def test_workers_json_prints_the_records(cli_redis: fakeredis.FakeRedis, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["workers", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    one = live()
    store(cli_redis, one)
    assert cli.main(["workers", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [one.to_json()]


def test_health_command_exits_0_for_a_fresh_worker_here_and_1_otherwise(
    cli_redis: fakeredis.FakeRedis, capsys: pytest.CaptureFixture[str]
) -> None:
    store(cli_redis, live(host="elsewhere"))
    assert cli.main(["health"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    host = socket.gethostname()
    assert (
        err
        == f"wsupload: unhealthy: no heartbeat from a worker on host {host}: none is running, or it stopped or died\n"
    )
    store(cli_redis, live(name="mine@here"))
    assert cli.main(["health"]) == 0
    assert capsys.readouterr().out.startswith("ok: mine@here beat ")
    assert cli.main(["health", "--name", "nobody"]) == 1
    assert cli.main(["health", "--max-age", "0.000001"]) == 1  # parsed as a duration, and applied
    capsys.readouterr()


def test_health_exits_2_with_one_line_when_redis_cannot_be_reached(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsupload.worker.dev.local_services import free_port

    monkeypatch.delenv("WAVESPEED_API_KEY", raising=False)
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    for command in (["health"], ["workers"]):
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith("wsupload: cannot reach Redis at redis://127.0.0.1:")
        assert err.count("\n") == 1


def test_a_refusal_from_redis_is_one_line_too(
    cli_redis: fakeredis.FakeRedis, capsys: pytest.CaptureFixture[str]
) -> None:
    cli_redis.set(keys.WORKERS, "not a sorted set")
    assert cli.main(["health"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wsupload: Redis refused to read the heartbeats: WRONGTYPE")
    assert err.count("\n") == 1
