"""The job runner's direct flow: the real client against an in-process sandbox, fakeredis for the store.

Checks how the flows are chosen (setting, per-job option, ``auto``'s fallback) and how the
retry loop spends ``WSUPLOAD_MAX_ATTEMPTS`` on the direct flow's requests.
"""

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_job import OpenLimiter
from wsupload.config import Settings
from wsupload.errors import InvalidInput
from wsupload.tasks.job import JobRunner
from wsupload.tasks.observe.log_fields import outcome_fields
from wsupload.tasks.store.results import ResultStore
from wsupload.tasks.wavespeed.client import UploadClient
from wsupload.tasks.wire.options import JobOptions
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.dev.sandbox import Fault, SandboxServer

KEY = "sk-direct-secret"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with SandboxServer(api_key=KEY, storage_dir=tmp_path_factory.mktemp("sandbox"), max_bytes=100_000) as server:
        yield server


@pytest.fixture
def png(tmp_path: Path) -> str:
    path = tmp_path / "cat.png"
    path.write_bytes(png_bytes())
    return str(path)


def runner(store: ResultStore, sandbox: SandboxServer, **env: str) -> Iterator[JobRunner]:
    settings = Settings.from_env(
        {"WAVESPEED_API_KEY": KEY, "WAVESPEED_BASE_URL": sandbox.url, "WSUPLOAD_MAX_ATTEMPTS": "4", **env}
    )
    client = UploadClient(base_url=sandbox.url, api_key=KEY, connect_timeout=2, read_timeout=5)
    try:
        yield JobRunner(
            settings=settings,
            store=store,
            client=client,
            sleep=lambda _: None,
            rand=lambda: 0.0,
            limiter=OpenLimiter(store.redis),
        )
    finally:
        client.close()


@pytest.fixture
def direct_runner(store: ResultStore, sandbox: SandboxServer) -> Iterator[JobRunner]:
    yield from runner(store, sandbox, WSUPLOAD_UPLOAD_FLOW="direct")


def steps(sandbox: SandboxServer) -> list[tuple[str, int | None]]:
    return [(r.step, r.status) for r in sandbox.records]


def test_direct_flow_result(direct_runner: JobRunner, sandbox: SandboxServer, png: str) -> None:
    doc = direct_runner.run("j", png)
    assert doc["status"] == "succeeded", doc
    assert (doc["attempts"], doc["result"]["method"]) == (1, "direct")
    assert doc["result"]["download_url"].startswith(sandbox.url + "/files/d")
    assert steps(sandbox) == [("ticket", 200), ("put", 200)]
    assert outcome_fields(doc)["method"] == "direct"  # JSON log lines label the flow


def test_every_failed_request_is_an_attempt(direct_runner: JobRunner, sandbox: SandboxServer, png: str) -> None:
    sandbox.add_fault(Fault(step="ticket", status=503))
    sandbox.add_fault(Fault(step="put", status=500))
    doc = direct_runner.run("j", png)
    assert (doc["status"], doc["attempts"]) == ("succeeded", 3)
    assert steps(sandbox) == [("ticket", 503), ("ticket", 200), ("put", 500), ("put", 200)]


def test_put_errors_exhaust_the_budget(direct_runner: JobRunner, sandbox: SandboxServer, png: str) -> None:
    sandbox.add_fault(Fault(step="put", status=503, times=4))
    doc = direct_runner.run("j", png)
    assert doc["error"]["kind"] == "retries_exhausted"
    assert doc["attempts"] == 4
    assert steps(sandbox) == [("ticket", 200)] + [("put", 503)] * 4


def test_a_refused_put_gets_one_new_ticket_then_fails(
    direct_runner: JobRunner, sandbox: SandboxServer, png: str
) -> None:
    sandbox.add_fault(Fault(step="put", status=403, times=3))
    doc = direct_runner.run("j", png)
    assert (doc["error"]["kind"], doc["error"]["http_status"], doc["attempts"]) == ("client_error", 403, 2)
    assert steps(sandbox) == [("ticket", 200), ("put", 403), ("ticket", 200), ("put", 403)]


def test_the_job_option_overrides_the_setting(store: ResultStore, sandbox: SandboxServer, png: str) -> None:
    for job_runner in runner(store, sandbox):  # WSUPLOAD_UPLOAD_FLOW=binary, the default
        doc = job_runner.run("j", png, JobOptions(upload_flow="direct"))
        assert doc["result"]["method"] == "direct"
        doc = job_runner.run("k", png)
        assert doc["result"]["method"] == "upload"
    assert [r.step for r in sandbox.records] == ["ticket", "put", "binary"]


def test_auto_falls_back_to_binary_once_for_the_process(
    store: ResultStore, sandbox: SandboxServer, png: str, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox.direct = False
    caplog.set_level(logging.WARNING, logger="wsupload.tasks.job")
    for job_runner in runner(store, sandbox, WSUPLOAD_UPLOAD_FLOW="auto"):
        first = job_runner.run("j", png)
        second = job_runner.run("k", png)
    assert (first["status"], first["attempts"], first["result"]["method"]) == ("succeeded", 1, "upload")
    assert second["result"]["method"] == "upload"
    assert steps(sandbox) == [("binary", 200), ("binary", 200)]  # the 404 is not an upload record
    assert len([r for r in caplog.records if "ticket endpoint answered HTTP 404" in r.getMessage()]) == 1


def test_direct_without_the_ticket_endpoint_fails(direct_runner: JobRunner, sandbox: SandboxServer, png: str) -> None:
    sandbox.direct = False
    doc = direct_runner.run("j", png)
    assert (doc["error"]["kind"], doc["error"]["http_status"]) == ("client_error", 404)


def test_the_option_is_checked_and_round_trips() -> None:
    assert JobOptions.parse({"upload_flow": "direct"}).upload_flow == "direct"
    assert JobOptions(upload_flow="auto").to_message() == {"upload_flow": "auto"}
    assert JobOptions().to_message() == {}
    with pytest.raises(InvalidInput, match="upload_flow"):
        JobOptions.parse({"upload_flow": "ftp"})


def test_the_settings() -> None:
    settings = Settings.from_env({"WAVESPEED_API_KEY": KEY})
    assert (settings.upload_flow, settings.direct_ticket_margin) == ("binary", 60.0)
    with pytest.raises(Exception, match="WSUPLOAD_UPLOAD_FLOW"):
        Settings.from_env({"WAVESPEED_API_KEY": KEY, "WSUPLOAD_UPLOAD_FLOW": "fast"})
