"""TLS to Redis and RabbitMQ: telling a refused certificate from a broker that is down, and the check at start.

A certificate or hostname that does not verify, a TLS handshake the server refuses
(no client certificate where it requires one, TLS spoken to a plain port) or a CA,
certificate or key file that cannot be read will not mend by waiting: at start it is a
configuration error. ``check_at_start`` connects once to every ``rediss://`` and
``amqps://`` URL the settings name and raises ``TlsRefused`` (one line, no secret) for
such a failure; anything else (refused, reset, timed out) is left to the caller's own
waiting, as for a plain broker that is down. Later, a certificate rotated to one that no
longer verifies is ridden out as an outage by the code that reconnects, and said once:
``NOTICE`` logs one line for the whole episode, however many of the worker's connections
(Celery's consumer, each background loop) meet the refusal, and one line once a connection
verifies again (``FailureStreak`` and ``QuietRefusals`` route the refusals they meet to it).
The producers raise ``TlsRefused`` too (``producer_refusal``, ``check_redis``).

redis-py raises ``redis.ConnectionError`` with the ``ssl`` exception as its context;
py-amqp raises the ``ssl`` exception itself: ``refusal`` walks the chain for either.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from wsupload.config.broker_urls import amqp_tls, scheme_of
from wsupload.config.redis_urls import masked
from wsupload.config.settings import Settings
from wsupload.errors import EnqueueError, TlsRefused

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 5.0
"""Seconds to connect and shake hands at start: a server that does not answer in that time is waited for."""

_PASSING = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLSyscallError)
"""TLS errors a connection cut mid-handshake (a restart) gives: an outage, not a refusal."""
_FILES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
"""While connecting, these come only from reading the CA, certificate or key file named in the settings."""


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from or while handling, and so on (each once)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _cut_handshake(exc: BaseException) -> bool:
    """Whether a TLS error of a cut connection (``_PASSING``) is behind ``exc``."""
    return any(isinstance(cause, _PASSING) for cause in _causes(exc))


def refusal(exc: BaseException) -> BaseException | None:
    """The TLS (or certificate file) error behind ``exc``, if that is why a connection failed; else None."""
    for cause in _causes(exc):
        if (isinstance(cause, ssl.SSLError) and not isinstance(cause, _PASSING)) or isinstance(cause, _FILES):
            return cause
    return None


def describe(cause: BaseException) -> str:
    """What went wrong, in words an operator can act on (one line)."""
    if isinstance(cause, ssl.SSLCertVerificationError):
        said = cause.verify_message or cause.reason or str(cause)
        return (
            f"its TLS certificate does not verify ({str(said).rstrip('.')}): give the CA that signed it"
            " (ssl_ca_certs), and connect by a host name the certificate holds"
        )
    if isinstance(cause, _FILES):
        return f"cannot read a CA, certificate or key file ({cause.strerror or cause}): check the paths given"
    reason = getattr(cause, "reason", None) or " ".join(str(cause).split())
    if reason in ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE", "SSLV3_ALERT_BAD_CERTIFICATE"):
        return (
            f"the server refused the TLS handshake ({reason}):"
            " it may require a client certificate (ssl_certfile, ssl_keyfile)"
        )
    if reason == "WRONG_VERSION_NUMBER":
        return f"the TLS handshake failed ({reason}): is that port serving TLS?"
    return f"the TLS handshake failed ({reason})"


def refused_line(service: str, url: str, cause: BaseException) -> str:
    """``configuration error: <service> at <url>: <what went wrong>``; the URL's password masked."""
    return f"configuration error: {service} at {masked(url)}: {describe(cause)}"


VERIFIED: set[str] = set()
"""TLS URLs ``check_at_start`` saw answer in this process: ``wsupload worker`` checks before Celery starts,
and Celery's ``celeryd_init`` (for ``celery -A … worker`` too) would check again; once is enough."""


def check_at_start(settings: Settings) -> None:
    """Connect once to each TLS URL of ``settings``; ``TlsRefused`` if one's TLS is refused (else return).

    A URL that answered once in this process is not checked again (``VERIFIED``); one that did not
    answer (an outage, which a worker waits out) is checked at the next call.
    """
    urls = dict.fromkeys([settings.redis_url, settings.effective_broker_url])
    for url in urls:
        if url in VERIFIED:
            continue
        scheme = scheme_of(url)
        if (scheme == "rediss" and _check_redis(url)) or (scheme == "amqps" and check_amqp(url)):
            VERIFIED.add(url)


def _check_redis(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=CHECK_TIMEOUT, socket_timeout=CHECK_TIMEOUT)
    try:
        return check_redis(client, url)
    finally:
        client.close()


def check_redis(client: redis.Redis, url: str) -> bool:
    """PING ``url`` through ``client``: ``TlsRefused`` for a refusal; whether it answered (False: an outage)."""
    for _ in range(2):
        try:
            client.ping()
            return True
        except redis.RedisError as exc:
            if not closed_at_once(url, exc):
                return False
    raise_closed_twice(url)
    return False


def closed_at_once(url: str, exc: BaseException) -> bool:
    """After a failed PING at start: ``TlsRefused`` for a refusal; whether the server closed the connection
    right after the handshake (worth one more try); False for an outage."""
    cause = refusal(exc)
    if cause is not None:
        raise TlsRefused(refused_line("Redis", url, cause)) from None
    return _closed_after_handshake(exc)


def raise_closed_twice(url: str) -> None:
    """Closed right after the handshake twice in a row: without a client certificate, that is the likely reason."""
    if "ssl_certfile" not in url:
        # A server that requires a client certificate finishes the TLS 1.3 handshake, then closes.
        raise TlsRefused(
            f"configuration error: Redis at {masked(url)}: it closed the TLS connection at once, twice:"
            " it may require a client certificate (ssl_certfile, ssl_keyfile)"
        )


def _closed_after_handshake(exc: BaseException) -> bool:
    return any(isinstance(cause, ssl.SSLEOFError) for cause in _causes(exc))


def check_amqp(url: str) -> bool:
    """Connect to ``url`` once (twice if it closes at once): ``TlsRefused`` for a refusal; whether it answered."""
    from kombu import Connection

    plain, options = amqp_tls(url)
    for _ in range(2):
        connection: Any = Connection(plain, ssl=options or True, connect_timeout=CHECK_TIMEOUT)
        try:
            connection.connect()
            return True
        except Exception as exc:  # py-amqp raises OSError, AMQPError, or the ssl error itself
            cause = refusal(exc)
            if cause is not None:
                raise TlsRefused(refused_line("RabbitMQ", url, cause)) from None
            if not _closed_after_handshake(exc):
                return False
        finally:
            connection.release()
    if "ssl_certfile" not in url:
        # As for Redis: a listener that requires a client certificate (fail_if_no_peer_cert) closes after the handshake.
        raise TlsRefused(
            f"configuration error: RabbitMQ at {masked(url)}: it closed the TLS connection at once, twice:"
            " it may require a client certificate (ssl_certfile, ssl_keyfile)"
        )
    return False


def producer_refusal(settings: Settings, exc: BaseException) -> TlsRefused | None:
    """The ``TlsRefused`` a producer raises for ``exc``, if a TLS refusal caused it; else None.

    ``exc`` is a Redis or RabbitMQ error, or an ``EnqueueError`` that queued nothing (one whose
    jobs are in doubt, or queued but not published, says more about them and is left as it is).
    """
    if isinstance(exc, TlsRefused) or (isinstance(exc, EnqueueError) and (exc.in_doubt or exc.queued)):
        return None
    cause = refusal(exc)
    if cause is None:
        return None
    service, url = ("Redis", settings.redis_url) if _from_redis(exc) else ("RabbitMQ", settings.effective_broker_url)
    after = "; nothing was queued" if isinstance(exc, EnqueueError) else ""
    return TlsRefused(refused_line(service, url, cause) + after)


@contextmanager
def refusals_raised(settings: Settings) -> Iterator[None]:
    """Around a producer call: an error a TLS refusal caused leaves it as ``TlsRefused`` (``producer_refusal``)."""
    try:
        yield
    except Exception as exc:
        refused = producer_refusal(settings, exc)
        if refused is None:
            raise
        raise refused from exc


def uses_tls(url: str) -> bool:
    return scheme_of(url) in ("rediss", "amqps")


REFUSED = "TLS refused, said once"
"""What a worker's other lines say of an error that was a TLS refusal (``NOTICE`` said the rest)."""


class RefusalNotice:
    """One line when this process's connections start being refused for TLS, one when one verifies again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._urls: dict[str, str] = {}
        self.refused = False
        """A refusal was logged and no connection has verified since."""
        self.quiet = False
        """Recognise refusals (so no other line repeats them) but log nothing: the parent of
        ``--processes N``, whose children each say it for the connections that do the work."""

    def watch(self, settings: Settings) -> None:
        """Name the URLs in the lines: the Redis and (on RabbitMQ) the broker URL of this worker."""
        self._urls = {"Redis": settings.redis_url}
        if scheme_of(settings.effective_broker_url) == "amqps":
            self._urls["RabbitMQ"] = settings.effective_broker_url

    def noticed(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a TLS refusal; the first of an episode is logged (one line, no traceback)."""
        cause = refusal(exc)
        if cause is None:
            # A handshake cut short (the server refusing our certificate says only EOF) while a
            # refusal is being waited out is that episode's, not a new line's.
            return self.refused and _cut_handshake(exc)
        with self._lock:
            if self.refused:
                return True
            self.refused = True
        if self.quiet:
            return True
        service = "Redis" if _from_redis(exc) else "RabbitMQ"
        log.error(
            "%s%s: %s; connections are retried until it verifies (said once)",
            service,
            f" at {masked(self._urls[service])}" if service in self._urls else "",
            describe(cause),
        )
        return True

    def verified(self) -> None:
        """A connection worked again: if a refusal was logged, say it is over (once)."""
        with self._lock:
            was, self.refused = self.refused, False
        if was and not self.quiet:
            log.info("TLS verifies again: connections work")


NOTICE = RefusalNotice()
"""This process's one notice of TLS refusals."""


class QuietRefusals(logging.Filter):
    """On Celery's consumer logger: a record whose arguments carry a TLS refusal goes to ``NOTICE`` instead.

    Celery logs ``Cannot connect to …: <error>`` at every reconnect attempt (the error is one
    of the record's arguments); a refused certificate would repeat it for as long as it lasts.
    Its ``Connected to …`` after that ends the episode.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        # The record factory (tasks.observe.redaction) renders the message and keeps the errors apart.
        for arg in (*args, *getattr(record, "arg_errors", ())):
            if isinstance(arg, BaseException) and NOTICE.noticed(arg):
                return False
        if isinstance(record.msg, str) and record.msg.startswith("Connected to "):
            NOTICE.verified()
        return True


def _from_redis(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, redis.RedisError):
            return True
        current = current.__cause__ or current.__context__
    return False
