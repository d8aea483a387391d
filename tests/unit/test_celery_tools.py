"""Celery's own tools: task events by setting or flag, and an app that inspect/control build without the key."""

from __future__ import annotations

import importlib
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery

from wsupload.config import Settings
from wsupload.config.parsers import parse_bool
from wsupload.config.settings import VARIABLES
from wsupload.errors import ConfigError
from wsupload.worker import app as app_module
from wsupload.worker import cli
from wsupload.worker.app import WsuploadApp, create_app

KEY = "sk-celery-tools-key"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("on", True), (" TRUE ", True), ("1", True), ("yes", True), ("off", False), ("False", False), ("0", False)],
)
def test_parse_bool(text: str, expected: bool) -> None:
    assert parse_bool(text) is expected


def test_the_task_events_row_follows_concurrency_and_is_off_by_default() -> None:
    names = [v.env for v in VARIABLES]
    assert names[names.index("WSUPLOAD_CONCURRENCY") + 1] == "WSUPLOAD_TASK_EVENTS"
    assert Settings.from_env({}).task_events is False
    assert Settings.from_env({"WSUPLOAD_TASK_EVENTS": "on"}).task_events is True


def test_a_bad_task_events_value_is_one_line_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"WSUPLOAD_TASK_EVENTS": "sometimes"})
    assert caught.value.problems == [
        "WSUPLOAD_TASK_EVENTS: expected true or false (also yes/no, on/off, 1/0) (got 'sometimes')"
    ]


@pytest.mark.parametrize("events", [False, True])
def test_the_app_sends_task_events_as_set(events: bool) -> None:
    app = create_app(Settings.from_env({"WSUPLOAD_TASK_EVENTS": str(events)}))
    assert app.conf.worker_send_task_events is events


def test_a_failed_task_is_acknowledged_not_redelivered() -> None:
    # JobFailed ends the task in FAILURE; with late acks this setting is what keeps its message acknowledged.
    conf = create_app(Settings.from_env({})).conf
    assert (conf.task_acks_late, conf.task_acks_on_failure_or_timeout) == (True, True)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[WsuploadApp]:
    """``wsupload worker`` up to Celery's start, which is recorded instead of run."""
    apps: list[WsuploadApp] = []

    def start(self: WsuploadApp, argv: list[str]) -> int:
        apps.append(self)
        return 0

    monkeypatch.setattr(WsuploadApp, "start", start)
    monkeypatch.setenv("WAVESPEED_API_KEY", KEY)
    monkeypatch.delenv("WSUPLOAD_TASK_EVENTS", raising=False)
    monkeypatch.setenv("WSUPLOAD_PROCESSES", "1")  # the worker itself, not a parent of processes
    return apps


@pytest.mark.parametrize(
    ("setting", "flag", "events"),
    [(None, False, False), ("on", False, True), (None, True, True), ("off", True, True)],
)
def test_the_events_flag_overrides_the_setting(
    started: list[WsuploadApp], monkeypatch: pytest.MonkeyPatch, setting: str | None, flag: bool, events: bool
) -> None:
    if setting is not None:
        monkeypatch.setenv("WSUPLOAD_TASK_EVENTS", setting)
    assert cli.main(["worker", *(["--events"] if flag else [])]) == 0
    (app,) = started
    assert (app.conf.worker_send_task_events, app.settings.task_events) == (events, events)


def test_the_module_app_builds_without_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # What `celery -A wsupload.worker.app inspect|control …` loads on a host that only looks.
    monkeypatch.delenv("WAVESPEED_API_KEY", raising=False)
    app = importlib.import_module("wsupload.worker.app").app
    assert isinstance(app, WsuploadApp)
    assert app.settings.api_key is None


def test_a_celery_started_worker_without_the_key_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WAVESPEED_API_KEY", raising=False)
    worker = SimpleNamespace(app=create_app(Settings.from_env({})))
    with pytest.raises(SystemExit) as caught:
        app_module._refuse_without_key(sender="w@host", instance=worker)
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "wsupload: configuration error:",
        "  WAVESPEED_API_KEY: is required to run a worker (set it in the worker's environment)",
    ]


def test_a_celery_started_worker_with_the_key_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAVESPEED_API_KEY", KEY)
    worker = SimpleNamespace(app=create_app(Settings.from_env({})))
    app_module._refuse_without_key(sender="w@host", instance=worker)  # returns: the worker goes on


def test_another_apps_worker_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WAVESPEED_API_KEY", raising=False)
    other: Any = SimpleNamespace(app=Celery("someone-else", set_as_current=False))
    app_module._refuse_without_key(sender="w@host", instance=other)


def test_a_worker_started_either_way_names_a_deprecated_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WAVESPEED_API_KEY", KEY)
    monkeypatch.setenv("WSUPLOAD_VISIBILITY_TIMEOUT", "3600")
    worker = SimpleNamespace(app=create_app(Settings.from_env({})))
    app_module._refuse_without_key(sender="w@host", instance=worker)  # celeryd_init, for both entry points
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("wsupload: warning: WSUPLOAD_VISIBILITY_TIMEOUT is deprecated: ignored since leases")
