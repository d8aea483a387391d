"""Celery beat drives scheduled scans: new files go up once, and only once, across runs."""

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Fleet
from wsupload.tasks.scan import state_key
from wsupload.worker.dev.local_services import stop_group, wait_until
from wsupload.worker.dev.samples import mp4_bytes
from wsupload.worker.dev.sandbox import SandboxServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def beat(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], None]]:
    """Start ``wsupload beat`` with an environment; stopped (and its log closed) afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    with open(tmp_path / "beat.log", "wb") as log:

        def start(env: dict[str, str]) -> None:
            command = [sys.executable, "-m", "wsupload.worker.cli", "beat"]
            started.append(
                subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )

        yield start
        for process in started:
            stop_group(process)


def test_a_scheduled_scan_uploads_new_files_once(
    fleet: Fleet,
    sandbox: SandboxServer,
    media_root: Path,
    tmp_path: Path,
    beat: Callable[[dict[str, str]], None],
) -> None:
    folder = media_root / "scheduled"
    folder.mkdir()
    # Random payloads: bytes no earlier test uploaded (dedup is on for scheduled runs).
    (folder / "one.mp4").write_bytes(mp4_bytes())
    (folder / "two.mp4").write_bytes(mp4_bytes())
    schedules = tmp_path / "schedules.toml"
    schedules.write_text(f'[[schedule]]\nname = "drop"\nsource = "{folder}"\nevery = "1s"\n')
    workers = fleet(count=1, concurrency=2)
    env = {**workers.env, "WSUPLOAD_SCHEDULES": str(schedules), "WSUPLOAD_BEAT_STATE": str(tmp_path / "beat-state")}
    beat(env)
    redis = workers.producer.redis

    def runs() -> int:
        return int(redis.hget(state_key("drop"), "runs") or 0)

    def uploaded() -> list[str]:
        return sorted(str(r.filename) for r in sandbox.records)

    wait_until(lambda: uploaded() == ["one.mp4", "two.mp4"], 60, what="the first scan's uploads")
    seen = runs()
    wait_until(lambda: runs() >= seen + 3, 60, what="three more scans")
    assert uploaded() == ["one.mp4", "two.mp4"]  # unchanged files are not enqueued again

    (folder / "three.mp4").write_bytes(mp4_bytes())
    (folder / "one.mp4").write_bytes(mp4_bytes(5000))  # changed content
    wait_until(lambda: len(sandbox.records) == 4, 60, what="the new and the changed file")
    seen = runs()
    wait_until(lambda: runs() >= seen + 3, 60, what="three more scans")
    assert uploaded() == ["one.mp4", "one.mp4", "three.mp4", "two.mp4"]
    assert redis.hget(state_key("drop"), "last_error") == b""
