"""Broker URLs: which broker a URL selects (RabbitMQ over AMQP, or Redis), and an AMQP URL checked whole.

``WSUPLOAD_BROKER_URL`` takes any Redis URL ``REDIS_URL`` takes (``config.redis_urls``)
or an AMQP one, which makes RabbitMQ the broker while results, documents and batch
records stay in ``REDIS_URL``::

    amqp://[user[:password]@]host[:port][/vhost]     (amqps:// for TLS, pyamqp:// as kombu spells it)

The vhost ``/`` is ``…:5672/%2F``, ``…:5672//`` (as Celery's examples write it) or no path.

TLS (``amqps://``) verifies the server's certificate and host name against the system's
CAs, or those of ``?ssl_ca_certs=PATH``; ``ssl_certfile``/``ssl_keyfile`` give a client
certificate (mutual TLS); ``ssl_cert_reqs=none`` opts out of verifying. The same names as
``rediss://`` takes. ``amqp_tls`` takes them out of the URL (kombu would pass them to
py-amqp under names it does not know) and gives py-amqp's ``ssl`` options instead.

Pure: no I/O. A reason for refusing a URL never repeats its password or userinfo.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
"""Query options of an ``amqps://`` URL, named as redis-py names them for ``rediss://``."""
CERT_REQS = ("required", "optional", "none")
"""``ssl_cert_reqs`` values, named as ``ssl.CERT_*`` (read from ``ssl`` only when a TLS URL is used:
``wsupload --help`` reads this module and need not load ``ssl``)."""


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
    options = {name: value for name, value in parse_qsl(parts.query) if name.startswith("ssl_")}
    unknown = sorted(set(options) - set(TLS_OPTIONS))
    if unknown:
        raise ValueError(f"unknown TLS option {unknown[0]!r} (accepted: {', '.join(TLS_OPTIONS)})")
    if options and scheme_of(text) != "amqps":
        raise ValueError(f"gives TLS options ({', '.join(sorted(options))}) to a plain URL: use amqps://")
    if options.get("ssl_cert_reqs", "required").lower() not in CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be one of {', '.join(CERT_REQS)}")
    if "ssl_keyfile" in options and "ssl_certfile" not in options:
        raise ValueError("gives ssl_keyfile without ssl_certfile (the client certificate it belongs to)")
    return text


def amqp_tls(url: str) -> tuple[str, dict[str, Any] | None]:
    """``url`` without its TLS options, and py-amqp's ``ssl`` options for it (None for ``amqp://``).

    For ``amqps://`` the options always verify the server's certificate and the URL's host
    name (py-amqp's bare ``ssl=True`` checks no host name) unless ``ssl_cert_reqs=none``.
    """
    parts = urlsplit(url.strip())
    if scheme_of(url) != "amqps":
        return url, None
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = {name: value for name, value in query if name in TLS_OPTIONS}
    rest = [(name, value) for name, value in query if name not in TLS_OPTIONS]
    import ssl  # an amqps:// URL only

    named = given.get("ssl_cert_reqs", "required").lower()
    reqs = getattr(ssl, f"CERT_{named.upper()}") if named in CERT_REQS else ssl.CERT_REQUIRED
    options: dict[str, Any] = {"cert_reqs": reqs}
    if reqs != ssl.CERT_NONE:
        # Named here, not left to kombu: it connects to "localhost" as 127.0.0.1, and would check that name.
        options["server_hostname"] = parts.hostname
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if given.get(name):
            options[name.removeprefix("ssl_")] = given[name]
    return urlunsplit(parts._replace(query=urlencode(rest))), options
