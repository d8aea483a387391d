"""The Celery application's broker settings."""

from __future__ import annotations

import logging
import ssl
import warnings
from typing import Any

import pytest

from wsupload.config import Settings
from wsupload.worker import redis_transport
from wsupload.worker.app import broker_for, create_app


def broker_ssl(url: str) -> Any:
    app = create_app(Settings.from_env({"REDIS_URL": url}))
    with app.connection_for_write() as connection:  # no I/O until a channel is opened
        return connection.ssl


def test_a_rediss_broker_verifies_the_server_certificate() -> None:
    assert broker_ssl("rediss://redis.test:6380/0") == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


@pytest.mark.parametrize(("asked", "mode"), [("none", ssl.CERT_NONE), ("optional", ssl.CERT_OPTIONAL)])
def test_an_explicit_ssl_cert_reqs_in_the_url_is_kept(asked: str, mode: ssl.VerifyMode) -> None:
    assert broker_ssl(f"rediss://redis.test:6380/0?ssl_cert_reqs={asked}") == {"ssl_cert_reqs": mode}


def test_a_plain_redis_broker_has_no_tls() -> None:
    assert not broker_ssl("redis://redis.test:6379/0")


@pytest.mark.parametrize("lease", ["2", "6", "60"])
def test_the_visibility_timeout_is_the_lease(lease: str) -> None:
    settings = Settings.from_env({"WSUPLOAD_LEASE": lease})
    app = create_app(settings)
    options = app.conf.broker_transport_options
    assert options["visibility_timeout"] == settings.lease
    assert (options["unacked_restore_interval"], options["unacked_restore_throttle"]) == (1, 1)
    # A worker that dies holding the restore scan's lock delays recovery by a lease, not kombu's 300 s.
    assert options["unacked_mutex_expire"] <= settings.lease
    assert app.conf.worker_pool == "threads"
    assert (app.conf.task_time_limit, app.conf.task_soft_time_limit) == (None, None)


SENTINEL_URL = "redis+sentinel://:pw@s1,s2:26380/mymaster/3?sentinel_password=spw"


def test_a_sentinel_broker_reaches_kombu_as_its_own_url_list_and_options() -> None:
    app = create_app(Settings.from_env({"REDIS_URL": SENTINEL_URL}))
    options = app.conf.broker_transport_options
    assert (options["master_name"], options["sentinel_kwargs"]) == ("mymaster", {"password": "spw"})
    assert options["visibility_timeout"] == app.settings.lease  # the lease settings still apply
    with app.connection_for_write() as connection:  # no I/O until a channel is opened
        assert connection.alt == ["sentinel://:pw@s1:26379/3", "sentinel://:pw@s2:26380/3"]
        assert connection.transport_cls == "sentinel"
        assert isinstance(connection.transport, redis_transport.SentinelTransport)
        assert (connection.hostname, connection.port, connection.virtual_host) == ("s1", 26379, "3")


def test_a_separate_sentinel_broker_leaves_the_result_store_alone() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://results:6379/0", "WSUPLOAD_BROKER_URL": SENTINEL_URL})
    app = create_app(settings)
    assert app.conf.broker_transport_options["master_name"] == "mymaster"
    assert broker_for(settings.redis_url) == ("redis://results:6379/0", {})


def test_a_plain_broker_gets_no_sentinel_options() -> None:
    options = create_app(Settings.from_env({"REDIS_URL": "redis://h:6379/0"})).conf.broker_transport_options
    assert "master_name" not in options
    assert "sentinel_kwargs" not in options


def test_the_passwords_in_the_redis_and_broker_urls_are_masked_in_every_log_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis_pw, rabbit_pw = "redis-pw-7d1e", "rabbit-pw-4c2b"
    create_app(
        Settings.from_env(
            {
                "REDIS_URL": f"redis://:{redis_pw}@redis.test:6379/0",
                "WSUPLOAD_BROKER_URL": f"amqp://u:{rabbit_pw}@mq.test//",
            }
        )
    )
    caplog.set_level(logging.INFO)
    # As a library might say it: the URL unmasked, or the password quoted on its own.
    logging.getLogger("kombu.test").info("cannot reach amqp://u:%s@mq.test//; auth %r", rabbit_pw, redis_pw)
    (record,) = [r for r in caplog.records if r.name == "kombu.test"]
    assert record.getMessage() == "cannot reach amqp://u:[redacted]@mq.test//; auth '[redacted]'"


def test_celerys_warning_about_a_default_wsupload_chose_is_dropped_and_other_warnings_still_show(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from celery.exceptions import CPendingDeprecationWarning
    from celery.worker.consumer.consumer import CANCEL_TASKS_BY_DEFAULT  # type: ignore[attr-defined]

    from wsupload.worker import app

    app._quiet_chosen_default()
    app._quiet_chosen_default()  # once per worker process, however often Celery sets logging up
    assert sum(isinstance(f, app._ChosenDefaultWarning) for f in logging.getLogger("py.warnings").filters) == 1
    caplog.set_level(logging.WARNING)
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # as Celery's log setup does for its warnings
            warnings.warn(CANCEL_TASKS_BY_DEFAULT, CPendingDeprecationWarning, stacklevel=1)
            warnings.warn("some other change is coming", CPendingDeprecationWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
    said = [r.getMessage() for r in caplog.records if r.name == "py.warnings"]
    assert len(said) == 1
    assert "some other change is coming" in said[0]


def test_a_message_handed_back_is_one_line_without_celerys_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    from celery import states
    from celery.app.task import Context
    from celery.app.trace import TraceInfo
    from celery.exceptions import Reject

    from wsupload.worker import app as worker_app

    worker_app._one_line_rejects()
    handler = logging.StreamHandler()
    trace_log = logging.getLogger("celery.app.trace")
    trace_log.addHandler(handler)
    celery_app = create_app(Settings.from_env({"REDIS_URL": "redis://redis.test:6379/0"}))
    task = celery_app.task(name="handback.test")(_noop)
    request = Context(id="job-1", hostname="w@h", args=[], kwargs={})
    try:
        try:
            raise Reject("queue wsupload is paused", requeue=True)
        except Reject as exc:
            TraceInfo(states.REJECTED, exc).handle_reject(task, request)  # as Celery's tracer does
        try:
            raise ValueError("a bug")
        except ValueError as exc:
            TraceInfo(states.FAILURE, exc).handle_failure(task, request, store_errors=False, call_errbacks=False)
    finally:
        trace_log.removeHandler(handler)
    said = capsys.readouterr().err
    assert "Task handback.test[job-1] reject requeue=True: queue wsupload is paused\n" in said
    assert said.count("Traceback") == 1  # the bug's, not the hand-back's
    assert said.index("Traceback") > said.index("raised unexpected")


def _noop() -> None:
    """A task body for the tests that need a task object."""
