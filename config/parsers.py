"""Parsers: environment text to typed values, each raising ``ValueError`` with a readable reason.

Pure functions with no knowledge of which variable they read, so ``config.settings``
(every setting) and ``config.schedules`` (the TOML file) share them. A reason never
repeats a secret: ``check_api_key`` describes what is wrong without the value.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from wsupload.config.broker_urls import AMQP_SCHEMES, is_amqp_url, parse_amqp_url
from wsupload.config.redis_urls import SENTINEL_SCHEMES, parse_sentinel_url

SENTINEL_STARTS = tuple(f"{scheme}://" for scheme in SENTINEL_SCHEMES)

DAY = 24 * 60 * 60
MIB = 1024 * 1024

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": float(DAY)}
_NUMBER_WITH_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes from ``"314572800"``, ``"300MiB"``, ``"300MB"`` (decimal) or ``"1GiB"``."""
    match = _NUMBER_WITH_UNIT.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise ValueError("expected a byte count such as 314572800, 300MiB or 300MB")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"1.5"``, ``"30s"``, ``"15m"``, ``"2h"`` or ``"7d"``."""
    match = _NUMBER_WITH_UNIT.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _DURATION_UNITS:
        raise ValueError("expected seconds such as 30, 2.5, 15m, 2h or 7d")
    return float(match.group(1)) * _DURATION_UNITS[unit]


def parse_seconds(text: str) -> int:
    """Whole seconds (a fraction is dropped) for settings Redis and Celery take as integers."""
    return int(parse_duration(text))


def parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("expected a whole number") from None


def parse_processes(text: str) -> int | str:
    """``auto`` (any case) or a whole number of processes."""
    value = text.strip().lower()
    if value == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise ValueError("expected `auto` or a whole number") from None


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    """``true``/``false``, ``yes``/``no``, ``on``/``off`` or ``1``/``0``, in any case."""
    word = text.strip().lower()
    if word not in _TRUE + _FALSE:
        raise ValueError("expected true or false (also yes/no, on/off, 1/0)")
    return word in _TRUE


def parse_lower(text: str) -> str:
    """A keyword such as ``auto`` or ``refuse``, compared case-insensitively."""
    return text.strip().lower()


def parse_path(text: str) -> Path:
    return Path(text.strip())


def check_url(text: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in schemes:
        raise ValueError(f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("the URL has no host")
    return text.strip().rstrip("/")


def parse_http_url(text: str) -> str:
    return check_url(text, ("http", "https"))


def check_callback_url(value: object) -> str:
    """``value`` unchanged if it is an http(s) URL with a host (the settings' own URL check)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a URL string, got {type(value).__name__}")
    parse_http_url(value)
    return value


def parse_redis_url(text: str) -> str:
    """A ``redis://``, ``rediss://`` or ``unix://`` URL, or a Sentinel URL (``config.redis_urls``), checked whole."""
    scheme = text.strip().partition("://")[0].lower()
    if scheme in SENTINEL_SCHEMES:
        parse_sentinel_url(text)
        return text.strip()
    if scheme in ("rediss+sentinel", "sentinels"):
        raise ValueError("TLS through Sentinel is not supported: use redis+sentinel:// on a trusted network")
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"expected a URL starting with redis://, rediss://, unix://, {' or '.join(SENTINEL_STARTS)}")
    return check_url(text, ("redis", "rediss", "unix"))


def parse_broker_url(text: str) -> str:
    """Any URL ``parse_redis_url`` takes, or an AMQP one (``config.broker_urls``): RabbitMQ as the broker."""
    if is_amqp_url(text):
        return parse_amqp_url(text)
    try:
        return parse_redis_url(text)
    except ValueError as exc:
        if str(exc).startswith("expected a URL starting with"):
            raise ValueError(f"{exc}, or {' or '.join(s + '://' for s in AMQP_SCHEMES)} (RabbitMQ)") from None
        raise


def check_api_key(text: str) -> str:
    key = text.strip()
    if not key:
        raise ValueError("is empty")
    if any(ch.isspace() or not ch.isprintable() for ch in key):
        # Never echo the value: it is a secret.
        raise ValueError("contains whitespace or control characters")
    return key


def parse_roots(text: str) -> tuple[Path, ...]:
    roots = []
    for entry in (part.strip() for part in text.split(os.pathsep)):
        if not entry:
            continue
        path = Path(entry)
        if not path.is_absolute():
            raise ValueError(f"{entry!r} is not an absolute path")
        resolved = path.resolve()
        if not resolved.is_dir():
            raise ValueError(f"{entry!r} is not an existing directory")
        roots.append(resolved)
    return tuple(roots)


def parse_file(text: str) -> Path:
    path = Path(text.strip())
    if not path.is_file():
        raise ValueError(f"{text.strip()!r} is not an existing file")
    return path


def split_store_url(text: str) -> tuple[str, str, str]:
    """``scheme://bucket/path`` → (scheme in lower case, bucket, path): the one place such URLs are taken apart.

    Used for sources (``s3://bucket/key``), listings (``s3://bucket/prefix/``) and the
    allow-list (``s3://bucket[/prefix]``); each caller judges what it needs of the parts.
    """
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ValueError(f"{text!r} is not of the form scheme://bucket/path")
    bucket, _, path = rest.partition("/")
    return scheme.lower(), bucket, path


def parse_buckets(text: str) -> tuple[str, ...]:
    """``s3://bucket[/prefix]`` entries (a bare ``bucket[/prefix]`` means s3), comma-separated."""
    entries = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        if "://" not in entry:
            entry = "s3://" + entry
        scheme, bucket, _ = split_store_url(entry)
        if not scheme or not bucket or "::" in entry:
            raise ValueError(f"{entry!r} is not of the form s3://bucket or s3://bucket/prefix")
        entries.append(entry.rstrip("/"))
    return tuple(entries)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_hosts(text: str) -> tuple[str, ...]:
    """Host names, comma-separated; ``*.example.com`` stands for any subdomain of example.com."""
    entries = []
    for entry in (part.strip().lower() for part in text.split(",")):
        if not entry:
            continue
        entry = entry.removeprefix("[").removesuffix("]")  # an IPv6 address as URLs write it
        name = entry.removeprefix("*.")
        if not (re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", name) or _is_ip(name)):
            raise ValueError(f"{entry!r} is not a host name (no scheme, port or path; *.domain for subdomains)")
        entries.append(entry)
    return tuple(entries)


def parse_listen_address(text: str) -> str:
    """One local address to listen on: an IP address (``0.0.0.0``, ``::``) or a host name."""
    entry = text.strip().lower().removeprefix("[").removesuffix("]")
    if not (_is_ip(entry) or re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", entry)):
        raise ValueError("expected one IP address or host name (no scheme, port or path)")
    return entry


def parse_protocols(text: str) -> tuple[str, ...]:
    protocols = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    for protocol in protocols:
        if not re.fullmatch(r"[a-z][a-z0-9+.-]*", protocol) or protocol in ("file", "local", "s3"):
            raise ValueError(f"{protocol!r} cannot be an fsspec source protocol")
    return protocols
