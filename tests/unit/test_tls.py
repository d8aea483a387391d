"""``worker.tls`` tells a TLS refusal from an outage; ``config.broker_urls`` takes an amqps:// URL's TLS options."""

from __future__ import annotations

import logging
import ssl

import pytest
import redis

from wsupload.config.broker_urls import amqp_tls, parse_amqp_url
from wsupload.worker import tls


def wrapped(cause: BaseException) -> redis.ConnectionError:
    """As redis-py raises it: its own ConnectionError, raised while handling the ssl error."""
    try:
        try:
            raise cause
        except BaseException:
            raise redis.ConnectionError("Error 1 connecting to localhost:6380.") from None
    except redis.ConnectionError as exc:
        exc.__context__ = cause
        return exc


def verify_error(message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    error.verify_message = message
    return error


def test_a_certificate_that_does_not_verify_is_a_refusal_with_what_the_library_said() -> None:
    cause = tls.refusal(wrapped(verify_error("self-signed certificate in certificate chain")))
    assert isinstance(cause, ssl.SSLCertVerificationError)
    line = tls.refused_line("Redis", "rediss://:s3cret@localhost:6380/0", cause)
    assert line.startswith("configuration error: Redis at rediss://:***@localhost:6380/0: its TLS certificate")
    assert "self-signed certificate in certificate chain" in line
    assert "s3cret" not in line


def test_an_unreadable_ca_file_is_a_refusal() -> None:
    cause = tls.refusal(wrapped(FileNotFoundError(2, "No such file or directory")))
    assert cause is not None
    assert "cannot read a CA, certificate or key file (No such file or directory)" in tls.describe(cause)


@pytest.mark.parametrize(
    "cause",
    [
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("timed out"),
        ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
)
def test_an_outage_is_not_a_refusal(cause: BaseException) -> None:
    assert tls.refusal(wrapped(cause)) is None


def test_amqps_options_verify_the_host_name_and_leave_the_url() -> None:
    url, options = amqp_tls(
        "amqps://u:p@rabbit.test:5671/jobs?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
    )
    assert url == "amqps://u:p@rabbit.test:5671/jobs"
    assert options == {
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": "rabbit.test",
        "ca_certs": "/ca.pem",
        "certfile": "/c.pem",
        "keyfile": "/k.pem",
    }


def test_amqps_without_options_still_verifies_and_none_opts_out() -> None:
    assert amqp_tls("amqps://rabbit.test//")[1] == {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": "rabbit.test"}
    assert amqp_tls("amqps://rabbit.test//?ssl_cert_reqs=none")[1] == {"cert_reqs": ssl.CERT_NONE}
    assert amqp_tls("amqp://rabbit.test//") == ("amqp://rabbit.test//", None)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("amqp://h//?ssl_ca_certs=/ca.pem", "gives TLS options (ssl_ca_certs) to a plain URL: use amqps://"),
        ("amqps://h//?ssl_ca_cert=/ca.pem", "unknown TLS option 'ssl_ca_cert'"),
        ("amqps://h//?ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of required, optional, none"),
        ("amqps://h//?ssl_keyfile=/k.pem", "gives ssl_keyfile without ssl_certfile"),
    ],
)
def test_bad_amqps_tls_options_are_refused_in_one_line(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_amqp_url(url)


def test_a_rotation_is_said_once_for_every_connection_that_meets_it_and_its_end_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notice = tls.RefusalNotice()
    refused = wrapped(verify_error("unable to get local issuer certificate"))
    with caplog.at_level("INFO", logger=tls.log.name):
        assert notice.noticed(refused)
        assert notice.noticed(wrapped(verify_error("unable to get local issuer certificate")))
        assert not notice.noticed(wrapped(ConnectionRefusedError(111, "Connection refused")))
        notice.verified()
        notice.verified()
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("Redis: its TLS certificate does not verify (unable to get local issuer certificate)")
    assert lines[1] == "TLS verifies again: connections work"
    assert not any(record.exc_info for record in caplog.records)


def test_a_quiet_notice_recognises_refusals_and_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """The parent of ``--processes N``: its children say it; the parent's failing beats must not either."""
    notice = tls.RefusalNotice()
    notice.quiet = True
    with caplog.at_level("INFO", logger=tls.log.name):
        assert notice.noticed(wrapped(verify_error("unable to get local issuer certificate")))
        assert not notice.noticed(wrapped(ConnectionRefusedError(111, "Connection refused")))
        during = notice.refused
        notice.verified()
    assert (during, notice.refused) == (True, False)
    assert caplog.records == []


def test_celerys_reconnect_lines_carrying_a_refusal_are_dropped_and_its_connected_line_ends_the_episode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notice = tls.RefusalNotice()
    monkeypatch.setattr(tls, "NOTICE", notice)
    quiet = tls.QuietRefusals()

    def record(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("celery.worker.consumer.consumer", logging.ERROR, __file__, 1, msg, args, None)

    refused = wrapped(verify_error("self-signed certificate in certificate chain"))
    assert not quiet.filter(record("consumer: Cannot connect to %s: %s.\n%s\n", "rediss://h", refused, "again"))
    assert notice.refused
    down = wrapped(ConnectionRefusedError(111, "Connection refused"))
    assert quiet.filter(record("consumer: Cannot connect to %s: %s.\n%s\n", "rediss://h", down, "again"))
    # As the record factory leaves it (tasks.observe.redaction): rendered, the errors kept apart.
    rendered = record("consumer: Cannot connect to rediss://h: …")
    rendered.arg_errors = (refused,)
    assert not quiet.filter(rendered)
    assert quiet.filter(record("Connected to rediss://h"))
    assert not notice.refused


def test_a_loop_that_meets_a_refusal_leaves_it_to_the_notice(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from wsupload.worker.background import FailureStreak

    notice = tls.RefusalNotice()
    monkeypatch.setattr(tls, "NOTICE", notice)
    loop_log = logging.getLogger("test.loop")
    streak = FailureStreak(loop_log, "loop: failed (%s: %s)", "loop: working again")
    with caplog.at_level("INFO"):
        streak.failed(wrapped(verify_error("unable to get local issuer certificate")))
        streak.failed(wrapped(verify_error("unable to get local issuer certificate")))
        streak.succeeded()
    lines = [record.getMessage() for record in caplog.records]
    assert [line.split(":")[0] for line in lines] == ["Redis", "TLS verifies again"], lines


def test_a_producer_raises_tls_refused_for_a_refusal_and_leaves_other_errors_as_they_are() -> None:
    from wsupload import TlsRefused
    from wsupload.config import Settings
    from wsupload.errors import EnqueueError

    settings = Settings.from_env(
        {
            "REDIS_URL": "rediss://:pw-redis@redis.example:6380/0",
            "WSUPLOAD_BROKER_URL": "amqps://user:pw-rabbit@rabbit.example:5671/v",
        }
    )
    refused = tls.producer_refusal(settings, wrapped(verify_error("self-signed certificate in certificate chain")))
    assert isinstance(refused, TlsRefused)
    assert str(refused).startswith("configuration error: Redis at rediss://:***@redis.example:6380/0: its TLS")
    assert "pw-redis" not in str(refused)

    by_rabbit = tls.producer_refusal(settings, verify_error("certificate has expired"))
    assert str(by_rabbit).startswith("configuration error: RabbitMQ at amqps://user:***@rabbit.example:5671/v: its")

    def enqueue_error(in_doubt: bool = False, queued: bool = False) -> EnqueueError:
        error = EnqueueError("job not enqueued: …", [], in_doubt=in_doubt, queued=queued)
        error.__cause__ = wrapped(verify_error("certificate has expired"))
        return error

    assert str(tls.producer_refusal(settings, enqueue_error())).endswith("; nothing was queued")
    assert tls.producer_refusal(settings, enqueue_error(in_doubt=True)) is None  # what it says of the jobs matters
    assert tls.producer_refusal(settings, enqueue_error(queued=True)) is None
    assert tls.producer_refusal(settings, wrapped(ConnectionRefusedError(111, "Connection refused"))) is None


def test_a_handshake_cut_short_during_a_refusal_is_that_episodes_and_an_outage_otherwise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A server refusing the client's certificate closes the handshake: the client reads only EOF.
    cut = ssl.SSLEOFError(8, "[SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred in violation of protocol")
    notice = tls.RefusalNotice()
    with caplog.at_level("INFO", logger=tls.log.name):
        assert not notice.noticed(wrapped(cut))  # no refusal said: a restart's cut, an outage
        assert notice.noticed(wrapped(verify_error("unable to get local issuer certificate")))
        assert notice.noticed(wrapped(cut))  # said already: not a line of its own
        assert not notice.noticed(wrapped(ConnectionRefusedError(111, "Connection refused")))
        notice.verified()
        assert not notice.noticed(wrapped(cut))
    assert len(caplog.records) == 2, [record.getMessage() for record in caplog.records]


def test_a_worker_start_checks_each_tls_url_once_and_an_outage_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """``wsupload worker`` checks before Celery starts, Celery's ``celeryd_init`` after: a URL that answered
    is not connected to again; one that did not (an outage) is, until it answers."""
    from wsupload.config import Settings

    answers = {"rediss://results:6380/0": [True], "amqps://broker:5671//": [False, True]}
    checked: list[str] = []

    def check(url: str) -> bool:
        checked.append(url)
        return answers[url].pop(0)

    monkeypatch.setattr(tls, "VERIFIED", set())
    monkeypatch.setattr(tls, "_check_redis", check)
    monkeypatch.setattr(tls, "check_amqp", check)
    settings = Settings(redis_url="rediss://results:6380/0", broker_url="amqps://broker:5671//")
    tls.check_at_start(settings)  # the broker does not answer yet (an outage): not known to verify
    tls.check_at_start(settings)
    tls.check_at_start(settings)
    assert checked == ["rediss://results:6380/0", "amqps://broker:5671//", "amqps://broker:5671//"]
