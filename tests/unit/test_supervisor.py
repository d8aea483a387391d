"""The policy of ``--processes N|auto`` (``worker.supervisor``) and the parent's record as ``health`` judges it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fakeredis
import pytest

from wsupload.config.settings import Settings
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import isoformat
from wsupload.worker import parent, supervisor
from wsupload.worker.worker_records import (
    RECORD_TTL,
    ChildState,
    SupervisorRecord,
    WorkerRecord,
    children_down,
    judge_all,
    read_supervisors,
    render_supervisors,
)

NOW = datetime(2026, 12, 7, 18, 0, 0, tzinfo=UTC)
HOST = "web1"


def test_auto_is_the_smaller_of_the_affinity_and_the_quota_rounded_down_at_least_1() -> None:
    assert supervisor.auto_processes(8, None) == 8
    assert supervisor.auto_processes(8, 2.0) == 2
    assert supervisor.auto_processes(2, 4.0) == 2
    assert supervisor.auto_processes(8, 1.5) == 1  # one process keeps ~1.3 cores busy
    assert supervisor.auto_processes(8, 0.5) == 1
    assert supervisor.auto_processes(None, None) == 1


def test_the_cgroup_quota_reads_v2_then_v1_and_unlimited_is_none() -> None:
    assert supervisor.cgroup_quota("max 100000\n") is None
    assert supervisor.cgroup_quota("150000 100000\n") == 1.5
    assert supervisor.cgroup_quota("200000\n") == 2.0  # the period defaults to 100 ms
    assert supervisor.cgroup_quota(None, "-1\n", "100000\n") is None
    assert supervisor.cgroup_quota(None, "300000\n", "100000\n") == 3.0
    assert supervisor.cgroup_quota(None, None, None) is None
    assert supervisor.cgroup_quota("garbage here") is None
    assert supervisor.cgroup_quota("0 100000") is None


def test_the_concurrency_is_the_total_split_with_the_remainder_spread() -> None:
    assert supervisor.split_concurrency(32, 2) == [16, 16]
    assert supervisor.split_concurrency(32, 3) == [11, 11, 10]
    assert supervisor.split_concurrency(5, 2) == [3, 2]
    assert sum(supervisor.split_concurrency(37, 8)) == 37
    assert supervisor.split_concurrency(32, 1) == [32]


def test_a_total_smaller_than_the_processes_gives_fewer_children() -> None:
    assert supervisor.split_concurrency(2, 4) == [1, 1]
    assert supervisor.split_concurrency(1, 8) == [1]


def test_a_crash_is_restarted_at_once_then_with_a_doubling_backoff_up_to_its_bound() -> None:
    delays = [supervisor.restart_delay(n) for n in range(1, 10)]
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert supervisor.restart_delay(10_000) == supervisor.BACKOFF_MAX


def test_a_stable_run_starts_the_count_of_quick_crashes_again() -> None:
    assert supervisor.quick_crashes_after(0, 0.5) == 1
    assert supervisor.quick_crashes_after(3, 2.0) == 4
    assert supervisor.quick_crashes_after(6, supervisor.STABLE) == 1


def test_exits_are_said_as_codes_or_signals() -> None:
    assert supervisor.describe_exit(1) == "exited with code 1"
    assert supervisor.describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert supervisor.describe_exit(-200) == "killed by signal 200"


def test_the_parent_exits_0_only_when_every_child_stopped_warmly() -> None:
    assert supervisor.stop_exit_code([0, 0]) == 0
    assert supervisor.stop_exit_code([0, 1]) == 1
    assert supervisor.stop_exit_code([0, -signal.SIGKILL]) == 1


def test_children_are_named_after_the_parent() -> None:
    assert supervisor.child_name(42, 2, "web1") == "wsupload-42-2@web1"


def test_a_child_runs_the_one_process_worker_with_its_share() -> None:
    args = parent.child_args("wsupload-42-1@%h", 16, "info", "bulk", True, True)
    assert args[1:] == [
        *("-m", "wsupload.worker.cli", "worker", "--processes", "1", "--concurrency", "16"),
        *("--loglevel", "info", "--node-name", "wsupload-42-1@%h", "--only", "bulk", "--events"),
        "--metrics-to-parent",
    ]


def test_the_processes_setting_is_auto_or_a_number() -> None:
    assert Settings.from_env({}).processes == "auto"
    assert Settings.from_env({"WSUPLOAD_PROCESSES": "AUTO"}).processes == "auto"
    assert Settings.from_env({"WSUPLOAD_PROCESSES": "4"}).processes == 4
    for bad in ("0", "many", "257"):
        with pytest.raises(Exception, match="WSUPLOAD_PROCESSES"):
            Settings.from_env({"WSUPLOAD_PROCESSES": bad})


def child(index: int, state: str = "running", down_for: float = 0.0, **changes: object) -> ChildState:
    fields: dict[str, object] = {
        "index": index,
        "name": f"wsupload-9-{index}@{HOST}",
        "pid": None if state != "running" else 100 + index,
        "state": state,
        "since": isoformat(NOW - timedelta(seconds=down_for)),
    }
    return ChildState(**(fields | changes))  # type: ignore[arg-type]


def parent_record(
    *children: ChildState, host: str = HOST, state: str = "running", age: float = 1.0
) -> SupervisorRecord:
    return SupervisorRecord(
        name=f"wsupload-9@{host}",
        host=host,
        pid=9,
        version="0.1.0",
        concurrency=32,
        state=state,
        children=children,
        started_at=isoformat(NOW - timedelta(hours=1)),
        last_beat=isoformat(NOW - timedelta(seconds=age)),
    )


def worker(name: str) -> WorkerRecord:
    return WorkerRecord(
        name=name,
        host=HOST,
        pid=100,
        pool="threads",
        concurrency=16,
        version="0.1.0",
        queues=("wsupload",),
        started_at=isoformat(NOW - timedelta(hours=1)),
        last_beat=isoformat(NOW - timedelta(seconds=1)),
    )


def test_health_fails_while_a_child_is_down_longer_than_its_restart() -> None:
    records = [worker(f"wsupload-9-1@{HOST}")]
    crashed = child(2, "restarting", down_for=3.0, restarts=3, last_exit="killed by SIGKILL", restart_at="soon")
    verdict = judge_all(records, [parent_record(child(1), crashed)], NOW, RECORD_TTL, host=HOST)
    assert not verdict.healthy
    assert verdict.message == (
        f"wsupload-9-2@{HOST} (child 2 of wsupload-9@{HOST}) is down for 3.0 s:"
        " killed by SIGKILL, 3 restart(s), restart at soon"
    )


def test_health_passes_while_a_crashed_child_is_within_its_restart() -> None:
    records = [worker(f"wsupload-9-1@{HOST}")]
    crashed = child(2, "restarting", down_for=0.5)
    assert judge_all(records, [parent_record(child(1), crashed)], NOW, RECORD_TTL, host=HOST).healthy


def test_health_ignores_other_hosts_stopping_or_stale_parents_and_stopped_children() -> None:
    records = [worker(f"wsupload-9-1@{HOST}")]
    down = child(2, "restarting", down_for=10)
    for parents in (
        [parent_record(child(1), down, host="other")],
        [parent_record(child(1), down, state="stopping")],
        [parent_record(child(1), down, age=RECORD_TTL + 1)],
        [parent_record(child(1), child(2, "stopped", down_for=10))],
    ):
        assert judge_all(records, parents, NOW, RECORD_TTL, host=HOST).healthy, parents


def test_health_of_a_named_child_looks_at_that_child_only() -> None:
    parents = [parent_record(child(1), child(2, "restarting", down_for=5))]
    assert children_down(parents, NOW, host="anywhere", name=f"wsupload-9-1@{HOST}") == []
    assert len(children_down(parents, NOW, host="anywhere", name=f"wsupload-9-2@{HOST}")) == 1
    assert len(children_down(parents, NOW, host="anywhere", name=f"wsupload-9@{HOST}")) == 1


def test_the_parents_record_survives_json_and_is_read_and_shown() -> None:
    record = parent_record(child(1), child(2, "restarting", down_for=2, restarts=1, last_exit="exited with code 1"))
    assert SupervisorRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    assert SupervisorRecord.from_json({"name": 1}) is None
    client = fakeredis.FakeRedis()
    client.set(keys.supervisor(record.name), json.dumps(record.to_json()))
    client.zadd(keys.SUPERVISORS, {record.name: 1, "gone@x": 1})
    assert read_supervisors(client) == [record]
    assert render_supervisors([record], NOW) == [
        f"wsupload-9@{HOST}  {HOST}/9  parent of 2 (×32 in all)  beat 1.0 s ago  v0.1.0",
        f"    child 1  wsupload-9-1@{HOST}  pid 101  running",
        f"    child 2  wsupload-9-2@{HOST}  down  restarting  1 restart(s), last exited with code 1",
    ]


@pytest.mark.parametrize(
    ("argv", "env", "shares"),
    [
        (["--processes", "2", "--concurrency", "5"], {}, [3, 2]),
        (["--concurrency", "32"], {"WSUPLOAD_PROCESSES": "4"}, [8, 8, 8, 8]),
        (["--processes", "auto", "--concurrency", "3"], {}, [2, 1]),  # auto: 2 CPUs here (patched)
        (["--processes", "8", "--concurrency", "2"], {}, [1, 1]),  # fewer children, said in a warning
    ],
)
def test_the_worker_command_runs_a_parent_of_its_children_shares(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], shares: list[int]
) -> None:
    from wsupload.worker import cli

    ran: list[list[int]] = []
    monkeypatch.setenv("WAVESPEED_API_KEY", "sk-supervisor-key")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(parent, "cpu_count", lambda: (2, None))
    monkeypatch.setattr(parent, "setup_logging", lambda *_: None)

    def run(self: parent.Parent) -> int:
        ran.append([c.concurrency for c in self.children])
        return 0

    monkeypatch.setattr(parent.Parent, "run", run)
    assert cli.main(["worker", *argv]) == 0
    assert ran == [shares]


def test_bad_processes_on_the_command_line_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from wsupload.worker import cli

    with pytest.raises(SystemExit) as caught:
        cli.main(["worker", "--processes", "0"])
    assert caught.value.code == 2
    assert "--processes: from 1 to 256, or auto (got 0)" in capsys.readouterr().err


def test_health_of_a_named_parent_is_that_of_its_children() -> None:
    parents = [parent_record(child(1), child(2))]
    name = f"wsupload-9@{HOST}"
    mine = [worker(f"wsupload-9-1@{HOST}")]
    assert judge_all(mine, parents, NOW, RECORD_TTL, host="elsewhere", name=name).healthy
    others = [worker(f"wsupload-8-1@{HOST}")]
    assert not judge_all(others, parents, NOW, RECORD_TTL, host="elsewhere", name=name).healthy


def test_a_childs_node_name_gives_its_parents_pid() -> None:
    assert supervisor.parent_pid_of(supervisor.child_name(42, 3, "web1")) == 42
    assert supervisor.parent_pid_of("wsupload-42-3@%h") == 42
    assert supervisor.parent_pid_of("wsupload-42@web1") is None
    assert supervisor.parent_pid_of("celery@web1") is None


def test_a_metrics_directory_names_its_parent() -> None:
    assert parent.metrics_dir_owner("wsupload-metrics-4242-ab_cd") == 4242
    for other in ("wsupload-metrics-abc-x", "wsupload-metrics-4242", "wsupload-metrics-", "tmpxyz", "wsupload-4242-x"):
        assert parent.metrics_dir_owner(other) is None


def test_only_the_metrics_directories_of_parents_no_longer_running_are_removed(tmp_path: Path) -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # a pid that ran and is gone (SIGKILLed parents leave theirs so)
    dead = tmp_path / f"wsupload-metrics-{ended.pid}-k3j4"
    live = tmp_path / f"wsupload-metrics-{os.getppid()}-a1b2"  # the test runner's parent: running
    mine = tmp_path / f"wsupload-metrics-{os.getpid()}-c3d4"
    unrelated = tmp_path / "some-other-dir"
    for directory in (dead, live, mine, unrelated):
        directory.mkdir()
        (directory / "counter_1.db").write_bytes(b"x")
    (tmp_path / f"wsupload-metrics-{ended.pid}-file").write_text("not a directory")

    assert parent.remove_orphan_metrics_dirs(str(tmp_path)) == 1
    assert not dead.exists()
    assert [d.exists() for d in (live, mine, unrelated)] == [True, True, True]
    assert (tmp_path / f"wsupload-metrics-{ended.pid}-file").exists()
    assert parent.remove_orphan_metrics_dirs(str(tmp_path / "missing")) == 0
