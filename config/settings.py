"""Settings: every knob wsupload reads from the environment, parsed and checked once.

``Settings.from_env()`` is the only place that reads ``os.environ`` for
configuration. Each invalid value becomes one line naming the variable; all of
them are raised together as a ``ConfigError`` so a user fixes them in one go.
The API key is held here for the worker but never printed: it is excluded from
``repr`` and nothing in this module formats it into a message.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from config.errors import ConfigError

KEY_PREFIX = "wsupload"
"""Every Redis key wsupload owns starts with this (part of the wire contract)."""

UPLOAD_TASK_NAME = "wsupload.upload"
"""The Celery task name producers send (part of the wire contract)."""
CALLBACK_TASK_NAME = "wsupload.callback"
"""The task that delivers a job's result to its callback URL."""
SCAN_TASK_NAME = "wsupload.scan"
"""The task Celery beat sends for a scheduled batch run."""

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


def parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("expected a whole number") from None


def check_url(text: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in schemes:
        raise ValueError(f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("the URL has no host")
    return text.strip().rstrip("/")


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


def _existing_file(text: str) -> Path:
    path = Path(text.strip())
    if not path.is_file():
        raise ValueError(f"{text.strip()!r} is not an existing file")
    return path


OVERSIZE_POLICIES = ("refuse", "presign")
DEFAULT_FSSPEC_PROTOCOLS = ("gs", "gcs", "az", "abfs", "abfss")


def parse_buckets(text: str) -> tuple[str, ...]:
    """``s3://bucket[/prefix]`` entries (a bare ``bucket[/prefix]`` means s3), comma-separated."""
    entries = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        if "://" not in entry:
            entry = "s3://" + entry
        scheme, rest = entry.split("://", 1)
        bucket = rest.split("/", 1)[0]
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


def parse_protocols(text: str) -> tuple[str, ...]:
    protocols = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    for protocol in protocols:
        if not re.fullmatch(r"[a-z][a-z0-9+.-]*", protocol) or protocol in ("file", "local", "s3"):
            raise ValueError(f"{protocol!r} cannot be an fsspec source protocol")
    return protocols


@dataclass(frozen=True)
class Settings:
    """All configuration. Defaults follow the API page where it states a figure."""

    api_key: str | None = field(default=None, repr=False)
    base_url: str = "https://api.wavespeed.ai"
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = None
    queue: str = "wsupload"
    bulk_queue: str = "wsupload.bulk"
    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    retry_after_max: float = 120.0
    max_bytes: int = 300 * MIB
    allowed_roots: tuple[Path, ...] = ()
    result_ttl: int = 7 * DAY
    retention: int = 7 * DAY
    visibility_timeout: int = 3600
    concurrency: int = 16
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_addressing_style: str = "auto"
    allowed_buckets: tuple[str, ...] = ()
    oversize_policy: str = "refuse"
    presign_ttl: int = 3600
    fsspec_protocols: tuple[str, ...] = DEFAULT_FSSPEC_PROTOCOLS
    dedup_margin: int = DAY
    schedules_path: Path | None = None
    beat_state: Path = Path("celerybeat-schedule")
    callback_secret: str | None = field(default=None, repr=False)
    callback_attempts: int = 5
    callback_hosts: tuple[str, ...] = ()
    rate_limit: float = 0.0
    max_concurrent_uploads: int = 0

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def hard_time_limit(self) -> int:
        """Hard per-task limit, always below the visibility timeout.

        kombu redelivers an unacked message once it is older than the visibility
        timeout, even while the first copy still runs. Killing the task before
        then is what guarantees one upload never runs twice in parallel.
        """
        margin = max(5, self.visibility_timeout // 10)
        return self.visibility_timeout - margin

    @property
    def soft_time_limit(self) -> int:
        """Soft limit: leaves the task time to record a readable failure."""
        return self.hard_time_limit - max(2, self.hard_time_limit // 20)

    @property
    def restore_interval(self) -> int:
        """Seconds between kombu's sweeps for abandoned messages.

        kombu's default cadence (10 s x throttle 10) recovers a job orphaned by
        a dead worker only ~100 s after its visibility timeout; a tenth of the
        timeout keeps recovery close to the one number a user set.
        """
        return max(1, min(60, self.visibility_timeout // 10))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, worker: bool = False) -> Settings:
        """Parse settings; ``worker=True`` also requires ``WAVESPEED_API_KEY``."""
        return _Parser(os.environ if env is None else env).settings(worker=worker)


T = TypeVar("T")


class _Parser:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def get(
        self,
        name: str,
        parse: Callable[[str], T],
        default: T,
        check: Callable[[T], bool] = lambda _: True,
        rule: str = "",
    ) -> T:
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = parse(raw)
        except ValueError as exc:
            self.problems.append(f"{name}: {exc} (got {raw.strip()!r})")
            return default
        if not check(value):
            self.problems.append(f"{name}: must be {rule} (got {raw.strip()!r})")
            return default
        return value

    def secret(self, name: str, required: bool) -> str | None:
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            if required:
                self.problems.append(f"{name}: is required to run a worker (set it in the worker's environment)")
            return None
        try:
            return check_api_key(raw)
        except ValueError as exc:
            self.problems.append(f"{name}: {exc}")
            return None

    def settings(self, *, worker: bool) -> Settings:
        d = Settings()
        redis_schemes = ("redis", "rediss", "unix")
        http_schemes = ("http", "https")
        positive = (lambda v: v > 0, "greater than 0")
        non_negative = (lambda v: v >= 0, "0 or more")
        queue_name = (lambda v: re.fullmatch(r"[A-Za-z0-9_.:-]+", v) is not None, "letters, digits and _ . : - only")
        s = Settings(
            api_key=self.secret("WAVESPEED_API_KEY", required=worker),
            base_url=self.get("WAVESPEED_BASE_URL", lambda t: check_url(t, http_schemes), d.base_url),
            redis_url=self.get("REDIS_URL", lambda t: check_url(t, redis_schemes), d.redis_url),
            broker_url=self.get("WSUPLOAD_BROKER_URL", lambda t: check_url(t, redis_schemes), d.broker_url),
            queue=self.get("WSUPLOAD_QUEUE", str.strip, d.queue, *queue_name),
            bulk_queue=self.get("WSUPLOAD_BULK_QUEUE", str.strip, d.bulk_queue, *queue_name),
            max_attempts=self.get(
                "WSUPLOAD_MAX_ATTEMPTS", parse_int, d.max_attempts, lambda v: 1 <= v <= 100, "from 1 to 100"
            ),
            backoff_base=self.get("WSUPLOAD_BACKOFF_BASE", parse_duration, d.backoff_base, *non_negative),
            backoff_max=self.get("WSUPLOAD_BACKOFF_MAX", parse_duration, d.backoff_max, *non_negative),
            retry_after_max=self.get("WSUPLOAD_RETRY_AFTER_MAX", parse_duration, d.retry_after_max, *non_negative),
            max_bytes=self.get("WSUPLOAD_MAX_BYTES", parse_size, d.max_bytes, *positive),
            allowed_roots=self.get("WSUPLOAD_ALLOWED_ROOTS", parse_roots, d.allowed_roots),
            result_ttl=int(
                self.get(
                    "WSUPLOAD_RESULT_TTL", parse_duration, float(d.result_ttl), lambda v: v >= 1, "at least 1 second"
                )
            ),
            retention=int(
                self.get(
                    "WSUPLOAD_RETENTION", parse_duration, float(d.retention), lambda v: v >= 1, "at least 1 second"
                )
            ),
            visibility_timeout=int(
                self.get(
                    "WSUPLOAD_VISIBILITY_TIMEOUT",
                    parse_duration,
                    float(d.visibility_timeout),
                    lambda v: v >= 20,
                    "at least 20 seconds (the task's time limits are derived from it)",
                )
            ),
            concurrency=self.get(
                "WSUPLOAD_CONCURRENCY", parse_int, d.concurrency, lambda v: 1 <= v <= 512, "from 1 to 512"
            ),
            connect_timeout=self.get("WSUPLOAD_CONNECT_TIMEOUT", parse_duration, d.connect_timeout, *positive),
            read_timeout=self.get("WSUPLOAD_READ_TIMEOUT", parse_duration, d.read_timeout, *positive),
            s3_endpoint_url=self.get("WSUPLOAD_S3_ENDPOINT_URL", lambda t: check_url(t, http_schemes), None),
            s3_region=self.get("WSUPLOAD_S3_REGION", str.strip, None),
            s3_addressing_style=self.get(
                "WSUPLOAD_S3_ADDRESSING_STYLE",
                lambda t: t.strip().lower(),
                d.s3_addressing_style,
                lambda v: v in ("auto", "path", "virtual"),
                "auto, path or virtual",
            ),
            allowed_buckets=self.get("WSUPLOAD_ALLOWED_BUCKETS", parse_buckets, d.allowed_buckets),
            oversize_policy=self.get(
                "WSUPLOAD_OVERSIZE_POLICY",
                lambda t: t.strip().lower(),
                d.oversize_policy,
                lambda v: v in OVERSIZE_POLICIES,
                " or ".join(OVERSIZE_POLICIES),
            ),
            presign_ttl=int(
                self.get(
                    "WSUPLOAD_PRESIGN_TTL",
                    parse_duration,
                    float(d.presign_ttl),
                    lambda v: 1 <= v <= 7 * DAY,
                    "from 1 second to 7 days (the SigV4 maximum)",
                )
            ),
            fsspec_protocols=self.get("WSUPLOAD_FSSPEC_PROTOCOLS", parse_protocols, d.fsspec_protocols),
            schedules_path=self.get("WSUPLOAD_SCHEDULES", _existing_file, d.schedules_path),
            beat_state=self.get("WSUPLOAD_BEAT_STATE", lambda t: Path(t.strip()), d.beat_state),
            callback_secret=self.secret("WSUPLOAD_CALLBACK_SECRET", required=False),
            callback_attempts=self.get(
                "WSUPLOAD_CALLBACK_ATTEMPTS", parse_int, d.callback_attempts, lambda v: 1 <= v <= 50, "from 1 to 50"
            ),
            callback_hosts=self.get("WSUPLOAD_CALLBACK_HOSTS", parse_hosts, d.callback_hosts),
            rate_limit=self.get("WSUPLOAD_RATE_LIMIT", float, d.rate_limit, lambda v: 0 <= v <= 10_000, "0 to 10000"),
            max_concurrent_uploads=self.get(
                "WSUPLOAD_MAX_CONCURRENT_UPLOADS", parse_int, d.max_concurrent_uploads, lambda v: v >= 0, "0 or more"
            ),
            dedup_margin=int(
                self.get("WSUPLOAD_DEDUP_MARGIN", parse_duration, float(d.dedup_margin), lambda v: v >= 0, "0 or more")
            ),
        )
        if s.bulk_queue == s.queue:
            self.problems.append(f"WSUPLOAD_BULK_QUEUE: must differ from WSUPLOAD_QUEUE (both {s.queue!r})")
        if s.backoff_max < s.backoff_base:
            self.problems.append(
                "WSUPLOAD_BACKOFF_MAX: must not be below WSUPLOAD_BACKOFF_BASE "
                f"({s.backoff_max:g} < {s.backoff_base:g})"
            )
        if self.problems:
            raise ConfigError(self.problems)
        return s
