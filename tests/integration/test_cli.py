"""The `wsupload` command against the real worker: enqueue, status, wait, exit codes, errors."""

import base64
import json
import uuid
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import clean_env, producer_env
from tests.integration.conftest import run_cli as wsupload
from wsupload.worker.dev.local_services import free_port
from wsupload.worker.dev.samples import png_bytes

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker")]


@pytest.fixture
def env(worker_env: dict[str, str]) -> dict[str, str]:
    return producer_env(worker_env)


def test_enqueue_wait_and_status_as_json(env: dict[str, str], media_root: Path) -> None:
    good = media_root / "cli-good.png"
    good.write_bytes(png_bytes())
    enqueued = wsupload(env, "enqueue", "--json", str(good))
    assert enqueued.returncode == 0, enqueued.stderr
    (job,) = json.loads(enqueued.stdout)
    assert job["source"] == str(good)

    waited = wsupload(env, "wait", "--json", "--timeout", "60", job["job_id"])
    assert waited.returncode == 0, waited.stderr
    (doc,) = json.loads(waited.stdout)
    assert doc["status"] == "succeeded"

    status = wsupload(env, "status", "--json", job["job_id"])
    assert json.loads(status.stdout) == [doc]


def test_wait_exits_1_when_a_job_fails(env: dict[str, str], media_root: Path) -> None:
    good = media_root / "cli-ok.png"
    good.write_bytes(png_bytes())
    ids = wsupload(env, "enqueue", str(good), str(media_root / "cli-missing.png")).stdout.split()[::2]
    waited = wsupload(env, "wait", "--timeout", "60", *ids)
    assert waited.returncode == 1
    assert "succeeded" in waited.stdout
    assert "invalid_input" in waited.stdout
    assert "does not exist" in waited.stdout
    assert "Traceback" not in waited.stderr


def test_wait_exits_3_on_timeout(env: dict[str, str], media_root: Path) -> None:
    idle = {**env, "WSUPLOAD_QUEUE": "nobody-listens-here"}
    good = media_root / "cli-idle.png"
    good.write_bytes(png_bytes())
    (job_id, _) = wsupload(idle, "enqueue", str(good)).stdout.split()
    waited = wsupload(idle, "wait", "--timeout", "0.5", job_id)
    assert waited.returncode == 3
    assert "timed out" in waited.stderr
    assert "queued" in waited.stdout


def test_a_bad_setting_is_one_line_naming_the_variable(env: dict[str, str]) -> None:
    result = wsupload({**env, "WSUPLOAD_MAX_ATTEMPTS": "lots"}, "enqueue", "/a.png")
    assert result.returncode == 2
    assert "WSUPLOAD_MAX_ATTEMPTS: expected a whole number (got 'lots')" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_worker_without_an_api_key_refuses_to_start(env: dict[str, str]) -> None:
    result = wsupload(env, "worker")
    assert result.returncode == 2
    assert "WAVESPEED_API_KEY: is required" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_redis_is_a_readable_error() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    result = wsupload({**clean_env(), "REDIS_URL": url}, "status", "some-job")
    assert result.returncode == 2
    assert "cannot reach Redis at redis://:***@127.0.0.1" in result.stderr
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("flag", "dedup"), [(None, True), ("--no-dedup", False)])
def test_ingest_says_whether_to_deduplicate(
    env: dict[str, str], media_root: Path, flag: str | None, dedup: bool
) -> None:

    queue = "nodedup-" + uuid.uuid4().hex[:8]
    own = {**env, "WSUPLOAD_BULK_QUEUE": queue}  # no worker serves it: the message stays to be read
    png = media_root / "cli-dedup.png"
    png.write_bytes(png_bytes())
    done = wsupload(own, "ingest", *([flag] if flag else []), str(png))
    assert done.returncode == 0, done.stderr
    client = redis.Redis.from_url(env["REDIS_URL"])
    (raw,) = client.lrange(queue, 0, -1)
    client.delete(queue)
    _, kwargs, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
    assert kwargs["options"]["dedup"] is dedup
