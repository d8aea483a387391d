"""Broker URLs: which broker a URL selects (RabbitMQ over AMQP, or Redis), and an AMQP URL checked whole.

``WSUPLOAD_BROKER_URL`` takes any Redis URL ``REDIS_URL`` takes (``config.redis_urls``)
or an AMQP one, which makes RabbitMQ the broker while results, documents and batch
records stay in ``REDIS_URL``::

    amqp://[user[:password]@]host[:port][/vhost]     (amqps:// for TLS, pyamqp:// as kombu spells it)

The vhost ``/`` is ``…:5672/%2F``, ``…:5672//`` (as Celery's examples write it) or no path.

Pure: no I/O. A reason for refusing a URL never repeats its password or userinfo.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


def scheme_of(text: str) -> str:
    scheme, sep, _ = text.strip().partition("://")
    return scheme.lower() if sep else ""


def is_amqp_url(text: str | None) -> bool:
    """Whether ``text`` selects RabbitMQ (AMQP 0-9-1) as the broker."""
    return text is not None and scheme_of(text) in AMQP_SCHEMES


def parse_amqp_url(text: str) -> str:
    """``text`` stripped if it is a usable AMQP URL, else ``ValueError`` saying what is wrong (never the password)."""
    text = text.strip()
    if not is_amqp_url(text):
        raise ValueError(f"expected a URL starting with {' or '.join(s + '://' for s in AMQP_SCHEMES)}")
    after_scheme = text.split("://", 1)[1]
    end_of_host = min((i for i in (after_scheme.find(c) for c in "/?#") if i >= 0), default=len(after_scheme))
    if "@" in after_scheme[end_of_host:]:
        # Most likely a password holding '/', '?' or '#' unencoded: quoting what follows would show it.
        raise ValueError("holds '@' after its host: percent-encode '/', '?', '#' and '@' in a password")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError("its port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError("the URL has no host")
    if port == 0:
        raise ValueError("its port is not a number from 1 to 65535")
    vhost = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if "/" in parts.path[1:] and parts.path != "//":  # '//' is Celery's usual spelling of the vhost '/'
        raise ValueError(f"names more than a virtual host in its path (write '/' inside one as %2F): {vhost!r}")
    return text
