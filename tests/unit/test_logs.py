"""JSON log lines: their fields, the job they belong to, and no secret in any of them."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

from tests.unit.test_job import DATA, ScriptedClient, make_runner
from wsupload.config import Settings
from wsupload.config.settings import UPLOAD_TASK_NAME
from wsupload.errors import ServerError, Unauthorized
from wsupload.tasks.observe import redaction
from wsupload.tasks.observe.bounds import MAX_LOG_CHARS
from wsupload.tasks.observe.log_fields import FIELDS, outcome_fields, retry_fields
from wsupload.tasks.recovery import lease
from wsupload.tasks.store.results import ResultStore
from wsupload.worker import logs
from wsupload.worker.app import create_app
from wsupload.worker.dev.samples import png_bytes

SECRET = "sk-logs-test-0123456789"
CALLBACK = "whsec-logs-test-abcdef"
NAME = "wsupload.test.logs"


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """What a JSON handler on a test logger writes."""
    redaction.protect(SECRET, CALLBACK)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger(NAME)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logs.use_json(logger)
    yield stream
    logger.removeHandler(handler)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    """Each line written, parsed: fails on a line that is not one JSON object."""
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert all(isinstance(line, dict) for line in lines)
    return lines


def test_a_line_has_the_common_fields_and_the_jobs_fields_from_extra(out: io.StringIO) -> None:
    logging.getLogger(NAME).warning(
        "job %s failed", "j1", extra={"job_id": "j1", "batch_id": "b1", "kind": "unauthorized", "http_status": 401}
    )
    (line,) = parsed(out)
    assert line["event"] == "job j1 failed"
    assert (line["level"], line["logger"], line["pid"]) == ("warning", NAME, os.getpid())
    assert (line["job_id"], line["batch_id"], line["kind"], line["http_status"]) == ("j1", "b1", "unauthorized", 401)
    assert line["ts"].endswith("Z")
    assert "T" in line["ts"]
    assert isinstance(line["host"], str)
    assert line["host"]
    assert "attempt" not in line, "a field not given is left out, not written as null"


def test_every_record_is_one_line_whatever_its_message_holds(out: io.StringIO) -> None:
    logging.getLogger(NAME).info("two\nlines\r\x00and a control character, and \u00e9")
    logging.getLogger(NAME).info("a bad format %d", "not a number")
    first, second = parsed(out)
    assert first["event"] == "two\nlines\r\x00and a control character, and \u00e9"
    assert "a bad format" in second["event"]


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR])
def test_no_secret_in_a_message_an_argument_an_extra_field_or_a_traceback(out: io.StringIO, level: int) -> None:
    logger = logging.getLogger(NAME)
    try:
        raise ValueError(f"the server echoed {SECRET} and {CALLBACK}")
    except ValueError:
        logger.log(
            level, f"inline {SECRET}: %s", CALLBACK, exc_info=True, extra={"kind": f"x{SECRET}", "batch_id": CALLBACK}
        )
    (line,) = parsed(out)
    text = json.dumps(line)
    assert SECRET not in text
    assert CALLBACK not in text
    assert line["event"] == "inline [redacted]: [redacted]"
    assert (line["kind"], line["batch_id"]) == ("x[redacted]", "[redacted]")
    assert "ValueError: the server echoed [redacted] and [redacted]" in line["exc"]


def test_a_traceback_is_bounded_and_keeps_its_end(out: io.StringIO) -> None:
    try:
        raise RuntimeError("x" * 50_000 + " the end")
    except RuntimeError:
        logging.getLogger(NAME).exception("failed")
    (line,) = parsed(out)
    assert len(line["exc"]) < logs.MAX_EXC_CHARS + 100
    assert line["exc"].endswith(" the end")
    assert line["exc"].startswith("…[")


def test_a_message_is_bounded(out: io.StringIO) -> None:
    logging.getLogger(NAME).info("%s", "y" * (MAX_LOG_CHARS * 2))
    (line,) = parsed(out)
    assert len(line["event"]) < MAX_LOG_CHARS + 100


def test_a_line_logged_by_a_jobs_thread_carries_its_job_id(out: io.StringIO) -> None:
    logger = logging.getLogger(NAME)
    with lease.holding(lease.JobLease("job-in-thread", None, grace=10)):
        logger.debug("a library line that names no job")
        logger.info("a line that names its own", extra={"job_id": "explicit"})
    logger.info("after the job")
    inside, own, after = parsed(out)
    assert inside["job_id"] == "job-in-thread"
    assert own["job_id"] == "explicit"
    assert "job_id" not in after


def test_a_line_logged_inside_an_upload_task_carries_its_job_id(out: io.StringIO) -> None:
    app = Celery("logs-test", set_as_current=False)

    @app.task(name=UPLOAD_TASK_NAME, shared=False)
    def upload(job_id: str, source: str) -> None:
        logging.getLogger(NAME).info("inside the task, outside any lease")

    @app.task(name="wsupload.other", shared=False)
    def other(job_id: str) -> None:
        logging.getLogger(NAME).info("inside another task")

    upload.apply(args=("job-from-task", "/a.png"), task_id="task-id")
    other.apply(args=("not-a-job",))
    in_upload, in_other = parsed(out)
    assert in_upload["job_id"] == "job-from-task"
    assert "job_id" not in in_other


def test_the_jobs_outcome_and_retry_lines_carry_its_fields(
    store: ResultStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    png = tmp_path / "ok.png"
    png.write_bytes(png_bytes())
    caplog.set_level(logging.INFO, logger="wsupload.tasks.job")
    json_logs = {"WSUPLOAD_LOG_FORMAT": "json"}
    runner = make_runner(store, ScriptedClient(ServerError("HTTP 503: busy", 503), DATA), [], **json_logs)
    runner.run("j-ok", str(png))
    runner = make_runner(store, ScriptedClient(Unauthorized("HTTP 401: no", 401)), [], **json_logs)
    runner.run("j-bad", str(png))
    retry, ok, bad = [r for r in caplog.records if r.name == "wsupload.tasks.job"]
    assert {n: getattr(retry, n, None) for n in ("job_id", "status", "attempt", "kind", "http_status")} == {
        "job_id": "j-ok",
        "status": "retrying",
        "attempt": 1,
        "kind": "server_error",
        "http_status": 503,
    }
    assert (ok.job_id, ok.status, ok.attempt, ok.bytes) == ("j-ok", "succeeded", 2, DATA["size"])  # type: ignore[attr-defined]
    assert ok.duration_s >= 0  # type: ignore[attr-defined]
    assert (bad.job_id, bad.status, bad.kind, bad.http_status) == ("j-bad", "failed", "unauthorized", 401)  # type: ignore[attr-defined]


def test_text_lines_carry_no_job_fields(store: ResultStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The text format shows none of them: a text line is not made to read them from the document."""
    png = tmp_path / "ok.png"
    png.write_bytes(png_bytes())
    caplog.set_level(logging.INFO, logger="wsupload.tasks.job")
    make_runner(store, ScriptedClient(ServerError("HTTP 503: busy", 503), DATA), []).run("j-text", str(png))
    retry, ok = [r for r in caplog.records if r.name == "wsupload.tasks.job"]
    assert "j-text" in retry.getMessage()
    assert "j-text" in ok.getMessage()
    # job_id aside: a JSON handler's JobContext names the job of any line (an earlier test may leave one)
    read_from_doc = [name for name in FIELDS if name != "job_id"]
    assert [name for name in read_from_doc for record in (retry, ok) if hasattr(record, name)] == []


def test_outcome_fields_of_a_batch_member_and_of_unreadable_times() -> None:
    doc = {
        "job_id": "j",
        "status": "failed",
        "attempts": 3,
        "batch_id": "b",
        "started_at": "2026-01-01T00:00:00.000Z",
        "finished_at": "2026-01-01T00:00:02.500Z",
        "result": None,
        "error": {"kind": "retries_exhausted", "http_status": None, "message": "m"},
    }
    fields = outcome_fields(doc)
    assert fields == {
        "job_id": "j",
        "status": "failed",
        "attempt": 3,
        "batch_id": "b",
        "duration_s": 2.5,
        "kind": "retries_exhausted",
    }
    assert outcome_fields({**doc, "started_at": "soon"}).get("duration_s") is None
    assert set(fields) <= set(FIELDS)
    assert set(retry_fields(doc, ServerError("m", 502), 1.23456)) <= set(FIELDS)


def test_log_format_is_read_as_its_settings_row_reads_it() -> None:
    assert logs.log_format({}) == "text"
    assert logs.log_format({"WSUPLOAD_LOG_FORMAT": " JSON "}) == "json"
    assert logs.log_format({"WSUPLOAD_LOG_FORMAT": "xml"}) == "text", "Settings.from_env reports it; logging goes on"
    with pytest.raises(Exception, match="WSUPLOAD_LOG_FORMAT: must be text or json"):
        Settings.from_env({"WSUPLOAD_LOG_FORMAT": "xml"})


@pytest.fixture
def command_start() -> Iterator[logging.Logger]:
    """Levels as a command finds them (Python's defaults); put back afterwards."""
    root, cli = logging.getLogger(), logging.getLogger(logs.CLI_LOGGER)
    levels = root.level, cli.level
    root.setLevel(logging.WARNING)
    cli.setLevel(logging.NOTSET)
    yield root
    root.setLevel(levels[0])
    cli.setLevel(levels[1])
    logging.captureWarnings(False)


def test_commands_log_json_to_stderr_in_json_mode_only(
    command_start: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(command_start, "handlers", [])  # no handler yet (pytest adds its own once the test runs)
    out = io.StringIO()
    logs.setup_cli({}, stream=out)
    assert command_start.handlers == [], "text mode keeps Python's own fallback"
    logs.setup_cli({"WSUPLOAD_LOG_FORMAT": "json"}, stream=out)
    logging.getLogger("wsupload.test.cli").warning("Redis went away")
    logging.getLogger("wsupload.test.cli").info("not shown: a library's info")
    logging.getLogger(logs.CLI_LOGGER).info("schedule nightly: s3://media/, every 3600 s")
    warning, notice = [json.loads(text) for text in out.getvalue().splitlines()]
    assert (warning["level"], warning["event"]) == ("warning", "Redis went away")
    assert (notice["level"], notice["logger"]) == ("info", logs.CLI_LOGGER)


def test_celerys_signal_handler_notices_are_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "out"
    with open(path, "w") as f:
        logs._say("worker: Warm shutdown (MainProcess)", f)
    (line,) = [json.loads(text) for text in path.read_text().splitlines()]
    assert (line["event"], line["pid"]) == ("worker: Warm shutdown (MainProcess)", os.getpid())
    logs._say("a stream with no file behind it", io.StringIO())  # says nothing, raises nothing


def test_the_workers_logging_setup_switches_to_json_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    celery_worker = sys.modules.get("celery.apps.worker")
    if celery_worker is not None:  # use_json reroutes its notices: put them back after the test
        monkeypatch.setattr(celery_worker, "safe_say", celery_worker.safe_say)
    for fmt, expected in (("json", logs.JsonFormatter), ("text", logging.Formatter)):
        create_app(Settings.from_env({"WSUPLOAD_LOG_FORMAT": fmt}))
        root_like, task_like = logging.getLogger(NAME + ".root"), logging.getLogger(NAME + ".task")
        for logger in (root_like, task_like):
            logger.handlers = [logging.StreamHandler(sys.stderr)]
            logger.handlers[0].setFormatter(logging.Formatter())
        after_setup_logger.send(sender=None, logger=root_like, loglevel=logging.DEBUG)
        after_setup_task_logger.send(sender=None, logger=task_like, loglevel=logging.DEBUG)
        (handoff,) = root_like.handlers  # the worker's lines go through one writer thread
        assert isinstance(handoff, logs.Handoff)
        assert handoff.listener is not None
        handoff.listener.stop()
        for handlers in (handoff.listener.handlers, task_like.handlers):
            (handler,) = handlers
            assert type(handler.formatter) is expected
        root_like.handlers, task_like.handlers = [], []


def test_one_writer_thread_writes_every_line_in_order_with_the_callers_job(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    logger = logging.getLogger(NAME + ".writer")
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(threadName)s %(message)s %(job_id)s"))
    handler.addFilter(logs.JobContext())
    logger.handlers, logger.propagate = [handler], False
    monkeypatch.setattr(logs, "current_job_id", lambda: threading.current_thread().name)
    listener = logs.write_from_one_thread(logger)
    assert listener is not None
    assert logs.write_from_one_thread(logger) is None  # once per logger
    try:

        def lines(k: int) -> None:
            for n in range(200):
                logger.warning("thread %d line %d", k, n)

        threads = [threading.Thread(target=lines, args=(k,), name=f"upload-{k}") for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        listener.stop()  # drains the queue, as at exit
        logger.handlers = []
    written = out.getvalue().splitlines()
    assert len(written) == 800
    for k in range(4):
        mine = [line for line in written if f" thread {k} line " in line]
        assert mine == [f"upload-{k} thread {k} line {n} upload-{k}" for n in range(200)]  # in order, its own job


@pytest.mark.parametrize("converter", [time.localtime, time.gmtime])
def test_the_writers_time_text_is_the_standard_one(converter: Any) -> None:
    plain = logging.Formatter("%(asctime)s %(message)s")
    plain.converter = converter
    cached = logging.Formatter("%(asctime)s %(message)s")
    cached.converter = converter
    assert logs.SecondCache.fits(cached)
    cached.formatTime = logs.SecondCache(cached)  # type: ignore[method-assign]
    # Within a second, across seconds, and back again (records from other threads arrive out of order).
    for created in (1_700_000_000.001, 1_700_000_000.999, 1_700_000_001.0, 1_700_000_000.5, 1_700_003_600.25):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        record.created, record.msecs = created, int((created - int(created)) * 1000)
        assert cached.format(record) == plain.format(record)
        assert cached.formatTime(record, "%H") == plain.formatTime(record, "%H")


def test_the_time_cache_is_left_out_where_it_would_change_a_line() -> None:
    class OwnTime(logging.Formatter):
        def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
            return "always"

    assert not logs.SecondCache.fits(logging.Formatter("%(asctime)s", datefmt="%H:%M"))
    assert not logs.SecondCache.fits(OwnTime("%(asctime)s"))
    assert not logs.SecondCache.fits(None)
