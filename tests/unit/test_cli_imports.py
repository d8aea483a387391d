"""The CLI loads only what a command needs: ``--help`` no redis-py, Celery or kombu; ``enqueue`` and ``status``
no Celery or kombu.

Each command runs in a fresh interpreter (``sys.modules`` of this one already holds
everything), which then prints the modules it loaded that it should not have.
``enqueue`` and ``status`` run for real against fakeredis (the commit script in real
Lua), so the claim covers their whole path, not just their imports. A control loads
the Celery app in the same probe and sees it reported. Not timed: ``make bench``
(``benchmarks/cli_start.py``) measures how fast the commands start.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("celery", "kombu", "amqp", "billiard", "vine")
"""Celery and what it brings: only ``worker``, ``beat`` and RabbitMQ publishing load them."""
REDIS = ("redis", "wsupload.tasks.store.results", "asyncio")
"""redis-py (which loads asyncio), and the result store that imports it: no use to ``--help``."""
SETTINGS = ("ssl", "wsupload.config.settings", "wsupload.worker.worker_records", "wsupload.worker.logs")
"""Every setting's parser, TLS, the heartbeat records' classes, log set-up: no use to ``--help`` either."""

PROBE = """
import contextlib, io, json, sys
fake = sys.argv[1] == "fake"
if fake:  # every Redis client the commands make is one fakeredis server's
    import fakeredis
    from wsupload.tasks.store import connections
    server = fakeredis.FakeServer()
    connections.redis_client = lambda url, **kw: fakeredis.FakeRedis(server=server)
from wsupload.worker.cli import main
runs, job_id = [], None
for argv in json.loads(sys.argv[2]):
    argv = [job_id if arg == "<job>" else arg for arg in argv]  # the job the last enqueue printed
    if argv == ["<celery>"]:  # the control
        import wsupload.worker.app
        continue
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    runs.append({"argv": argv, "code": code, "out": out.getvalue()})
    if argv[0] == "enqueue":
        job_id = out.getvalue().split()[0]
loaded = sorted(sys.modules)  # a fresh interpreter: all of it is the commands' (and fakeredis's)
print(json.dumps({"runs": runs, "loaded": loaded}))
"""


def probe(*commands: list[str], fake: bool = False) -> tuple[list[dict[str, object]], list[str]]:
    """Run ``commands`` one after another in a fresh interpreter; their runs and every module it loaded."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "fake" if fake else "real", json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found = json.loads(done.stdout.splitlines()[-1])
    return found["runs"], found["loaded"]


def loaded_of(loaded: list[str], roots: tuple[str, ...]) -> list[str]:
    return [name for name in loaded if name in roots or name.startswith(tuple(f"{root}." for root in roots))]


@pytest.mark.parametrize("argv", [["--help"], ["status", "--help"], ["enqueue", "--help"], ["health", "--help"]])
def test_help_loads_no_redis_celery_or_kombu(argv: list[str]) -> None:
    runs, loaded = probe(argv)
    assert runs[0]["code"] == 0
    assert str(runs[0]["out"]).startswith("usage: wsupload")
    assert loaded_of(loaded, HEAVY + REDIS + SETTINGS) == []


def test_enqueue_and_status_load_no_celery_or_kombu(tmp_path: Path) -> None:
    media = tmp_path / "cat.png"
    media.write_bytes(b"\x89PNG\r\n\x1a\n")
    runs, loaded = probe(["enqueue", str(media)], ["status", "<job>"], fake=True)
    assert [run["code"] for run in runs] == [0, 0]
    job_id, source = str(runs[0]["out"]).split()
    assert source == str(media)
    assert str(runs[1]["out"]).split()[:2] == [job_id, "queued"]
    assert loaded_of(loaded, HEAVY) == []
    assert "wsupload.worker.logs" not in loaded  # text logs (WSUPLOAD_LOG_FORMAT unset): nothing to set up


def test_the_probe_reports_celery_once_something_loads_it() -> None:
    _, loaded = probe(["<celery>"], ["--help"])
    assert {"celery", "kombu"} <= set(loaded_of(loaded, HEAVY))
