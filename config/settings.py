"""Settings: every knob wsupload reads from the environment, parsed and checked once.

Each setting is one row, declared as its ``Settings`` field (``x: int = setting(...)``):
variable, parser, default, check with the rule its error states, and the meaning
docs/configuration.md shows. The default is written once, as a user would type it, and parsed
by the row's own parser at import, so mypy still sees typed attributes (checked against the
parser's return type) and the docs show exactly what a user may write.
``Settings.from_env()`` is the only place that reads ``os.environ`` for
configuration: it reads the rows in one loop (``config.variables``), turns each
invalid value into one line naming the variable, and raises them all together, with
the cross-field checks, as a ``ConfigError`` so a user fixes them in one go.
Secrets (the API key, the callback secret) are kept out of ``repr`` and out of every
message; in ``repr`` the Redis and broker URLs show their passwords masked.

Why a table and not pydantic-settings (measured here with ``python -X importtime``):
the ``config`` package imports in ~13 ms (~12 ms before the table), pydantic_settings
alone in ~110 ms (~128 ms wall with a model of these 33 fields built), while
``import worker.cli`` takes ~120 ms wall in all: it would double every command's
start-up to save a 20-line loop, and the documentation would still need rows of its own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from wsupload.config.broker_urls import is_amqp_url
from wsupload.config.names import (
    CALLBACK_TASK_NAME,
    KEY_PREFIX,
    MARKER_TASK_NAME,
    SCAN_TASK_NAME,
    UPLOAD_MANY_TASK_NAME,
    UPLOAD_TASK_NAME,
)
from wsupload.config.parsers import (
    DAY,
    MIB,
    check_api_key,
    check_url,
    parse_bool,
    parse_broker_url,
    parse_buckets,
    parse_duration,
    parse_file,
    parse_hosts,
    parse_http_url,
    parse_int,
    parse_listen_address,
    parse_lower,
    parse_path,
    parse_processes,
    parse_protocols,
    parse_redis_url,
    parse_roots,
    parse_seconds,
    parse_size,
)
from wsupload.config.redis_urls import masked
from wsupload.config.variables import Variable, read_variables, setting, settings_repr, variables_of
from wsupload.errors import ConfigError

__all__ = [
    "CALLBACK_TASK_NAME",
    "DAY",
    "DEFAULT_FSSPEC_PROTOCOLS",
    "KEY_PREFIX",
    "LOG_FORMATS",
    "MARKER_TASK_NAME",
    "MIB",
    "OVERSIZE_POLICIES",
    "SCAN_TASK_NAME",
    "UPLOAD_FLOWS",
    "UPLOAD_MANY_TASK_NAME",
    "UPLOAD_TASK_NAME",
    "VARIABLES",
    "Settings",
    "Variable",
    "check_api_key",
    "check_url",
    "parse_buckets",
    "parse_duration",
    "parse_hosts",
    "parse_int",
    "parse_protocols",
    "parse_roots",
    "parse_seconds",
    "parse_size",
]

MAX_JOBS_PER_MESSAGE = 256
"""The most jobs one bulk message may carry (a worker moves a longer one aside)."""

OVERSIZE_POLICIES = ("refuse", "presign")
UPLOAD_FLOWS = ("binary", "direct", "auto")
LOG_FORMATS = ("text", "json")


def _is_queue_name(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_.:-]+", name) is not None


_QUEUE_RULE = "letters, digits and _ . : - only"


def _masked_url(text: str) -> str:
    return repr(masked(text))


@dataclass(frozen=True)
class Settings:
    """All configuration, in docs/configuration.md's order. Defaults follow the API page where it states a figure."""

    api_key: str | None = setting(
        "WAVESPEED_API_KEY",
        check_api_key,
        None,
        "Bearer key. Worker environment only: never in messages, Redis, results or logs.",
        shown="— (required by `wsupload worker`)",
        secret=True,
        required_by_worker=True,
    )
    base_url: str = setting(
        "WAVESPEED_BASE_URL",
        parse_http_url,
        "https://api.wavespeed.ai",
        "API origin; uploads go to `{base}/api/v3/media/upload/binary`.",
    )
    redis_url: str = setting(
        "REDIS_URL",
        parse_redis_url,
        "redis://127.0.0.1:6379/0",
        "Results, and the broker unless overridden. `rediss://` verifies the server's certificate and host"
        " name (`?ssl_ca_certs=CA.pem`; mutual TLS: `&ssl_certfile=…&ssl_keyfile=…`; `?ssl_cert_reqs=none` opts"
        " out; see [TLS](deployment.md#tls)). Redis Sentinel:"
        " `redis+sentinel://[:password@]host[:port],host[:port]…/master_name[/db]` (add"
        " `?sentinel_password=…` when the sentinels have one), or kombu's"
        " `sentinel://host:port;sentinel://host:port/db?master_name=NAME`; clients follow a failover"
        " (see [Redis Sentinel](deployment.md#redis-sentinel)).",
        display=_masked_url,
    )
    broker_url: str | None = setting(
        "WSUPLOAD_BROKER_URL",
        parse_broker_url,
        None,
        "The Celery broker. RabbitMQ: `amqp://user:password@host:5672/vhost` (`amqps://` for TLS, with the"
        " `ssl_*` options `REDIS_URL` takes: [TLS](deployment.md#tls); quorum"
        " queues, publisher confirms: see [RabbitMQ as the broker](deployment.md#rabbitmq-as-the-broker));"
        " results stay in `REDIS_URL`. Or a"
        " separate Redis in any form `REDIS_URL` takes, which wsupload's own enqueue (producer, CLI, scans)"
        " refuses: it writes a job's document and message in one transaction.",
        shown="`REDIS_URL`",
        display=_masked_url,
    )
    replica_wait: float = setting(
        "WSUPLOAD_REPLICA_WAIT",
        parse_duration,
        "0",
        "After writing a job's final document, wait up to this long for a replica to have it (Redis `WAIT 1`)"
        " before the message is acknowledged, so a failover cannot lose an outcome the worker acknowledged"
        " (see [Redis Sentinel](deployment.md#redis-sentinel)). Measured here: about 0.1 ms per job with a"
        " replica on the same host; with"
        " no replica connected every job waits the whole time.",
        shown="{} (off)",
        check=lambda v: 0 <= v <= 10,
        rule="from 0 to 10 seconds",
    )
    queue: str = setting(
        "WSUPLOAD_QUEUE",
        str.strip,
        "wsupload",
        "Celery queue (a Redis list of that name).",
        check=_is_queue_name,
        rule=_QUEUE_RULE,
    )
    max_attempts: int = setting(
        "WSUPLOAD_MAX_ATTEMPTS",
        parse_int,
        "5",
        "Total HTTP attempts per job, across redeliveries (1–100).",
        check=lambda v: 1 <= v <= 100,
        rule="from 1 to 100",
    )
    backoff_base: float = setting(
        "WSUPLOAD_BACKOFF_BASE",
        parse_duration,
        "1",
        "Exponential backoff base: attempt *n* waits `U(0, min(max, base·2ⁿ⁻¹))` (full jitter).",
        shown="{} s",
        check=lambda v: v >= 0,
        rule="0 or more",
    )
    backoff_max: float = setting(
        "WSUPLOAD_BACKOFF_MAX",
        parse_duration,
        "30",
        "Backoff ceiling (not applied to `Retry-After`).",
        shown="{} s",
        check=lambda v: v >= 0,
        rule="0 or more",
    )
    retry_after_max: float = setting(
        "WSUPLOAD_RETRY_AFTER_MAX",
        parse_duration,
        "120",
        "Cap on a server's `Retry-After` (seconds or HTTP date), honoured as asked up to this.",
        shown="{} s",
        check=lambda v: v >= 0,
        rule="0 or more",
    )
    max_bytes: int = setting(
        "WSUPLOAD_MAX_BYTES",
        parse_size,
        "300MiB",
        "Larger files are refused (`too_large`) before sending; the API page recommends URL input above 300 MB.",
        shown="{} (314572800)",
        check=lambda v: v > 0,
        rule="greater than 0",
    )
    progress_threshold: int = setting(
        "WSUPLOAD_PROGRESS_THRESHOLD",
        parse_size,
        "8MiB",
        "Uploads larger than this show `progress` (bytes sent) in their running document, written at most once"
        " a second and published on `wsupload:events`; `0` turns byte progress off.",
        shown="{} (8388608)",
        check=lambda v: v >= 0,
        rule="0 or more",
    )
    allowed_roots: tuple[Path, ...] = setting(
        "WSUPLOAD_ALLOWED_ROOTS",
        parse_roots,
        "",
        "`:`-separated directories; when set, no file outside them is read (symlinks and `..` resolved first).",
        shown="unset (any path)",
    )
    result_ttl: int = setting(
        "WSUPLOAD_RESULT_TTL",
        parse_seconds,
        "7d",
        "How long a result document is kept after its last update.",
        check=lambda v: v >= 1,
        rule="at least 1 second",
    )
    retention: int = setting(
        "WSUPLOAD_RETENTION",
        parse_seconds,
        "7d",
        "The API's retention, used for `expires_at` = upload time + this.",
        check=lambda v: v >= 1,
        rule="at least 1 second",
    )
    lease: float = setting(
        "WSUPLOAD_LEASE",
        parse_duration,
        "6",
        "How long a delivered job stays leased to its worker without renewal. A worker renews its"
        " jobs' leases every third of it while they make progress; a job whose worker died, hung or"
        " was paused is handed to another worker about this long after its last renewal (kombu's"
        " visibility timeout, now a lease). Upload length is not bounded by it.",
        shown="{} s",
        check=lambda v: 2 <= v <= 600,
        rule="from 2 to 600 seconds",
    )
    max_deliveries: int = setting(
        "WSUPLOAD_MAX_DELIVERIES",
        parse_int,
        "5",
        "A job taken by this many workers without ending (each died, hung or was stopped with it) ends"
        " `failed`, kind `too_many_deliveries`.",
        check=lambda v: 1 <= v <= 100,
        rule="from 1 to 100",
    )
    job_timeout: int = setting(
        "WSUPLOAD_JOB_TIMEOUT",
        parse_seconds,
        "6h",
        "Total time one delivery of a job may take, retry waits included; checked between chunks and"
        " before each wait (`time_limit`). Stalls are the connect and read timeouts' to catch.",
        check=lambda v: v >= 10,
        rule="at least 10 seconds",
    )
    stop_grace: float = setting(
        "WSUPLOAD_STOP_GRACE",
        parse_duration,
        "25",
        "On SIGTERM, running jobs get this long to finish; what is still running then goes back to the"
        " front of its queue at once. Keep it below the orchestrator's kill timeout.",
        shown="{} s",
        check=lambda v: v >= 0,
        rule="0 or more",
    )
    amqp_consumer_timeout: int = setting(
        "WSUPLOAD_AMQP_CONSUMER_TIMEOUT",
        parse_seconds,
        "30m",
        "RabbitMQ only: the server's `consumer_timeout` (set it to the same value). A job still running at"
        " half of it moves its safety to Redis and acknowledges its message early, so RabbitMQ never"
        " closes the channel under it (see [RabbitMQ as the broker](deployment.md#rabbitmq-as-the-broker)).",
        check=lambda v: v >= 10,
        rule="at least 10 seconds",
    )
    amqp_publish_grace: int = setting(
        "WSUPLOAD_AMQP_PUBLISH_GRACE",
        parse_seconds,
        "60",
        "RabbitMQ only: enqueued jobs whose messages RabbitMQ has not confirmed this long after their"
        " documents were written are published by the workers' sweep.",
        check=lambda v: v >= 5,
        rule="at least 5 seconds",
    )
    amqp_marker_age: int = setting(
        "WSUPLOAD_AMQP_MARKER_AGE",
        parse_seconds,
        "60",
        "RabbitMQ only: a job that entered its queue this long ago and has not ended sends a marker through"
        " the queue; once a worker meets the marker, every job that entered before it, has not ended and no"
        " live worker holds is published again"
        " (see [No silent loss on RabbitMQ](guarantees.md#no-silent-loss-on-rabbitmq)).",
        check=lambda v: v >= 1,
        rule="at least 1 second",
    )
    amqp_marker_settle: int = setting(
        "WSUPLOAD_AMQP_MARKER_SETTLE",
        parse_seconds,
        "5",
        "RabbitMQ only: how long after a worker met a marker the sweep waits before judging the jobs ahead of"
        " it: messages delivered just before the marker have that long to be started.",
        check=lambda v: v >= 1,
        rule="at least 1 second",
    )
    amqp_marker_timeout: int = setting(
        "WSUPLOAD_AMQP_MARKER_TIMEOUT",
        parse_seconds,
        "1h",
        "RabbitMQ only: a marker no worker has met this long is replaced even though messages still wait"
        " ahead of it (one whose queue is empty is replaced after `WSUPLOAD_AMQP_MARKER_AGE`).",
        check=lambda v: v >= 10,
        rule="at least 10 seconds",
    )
    metrics_port: int | None = setting(
        "WSUPLOAD_METRICS_PORT",
        parse_int,
        None,
        "Serve Prometheus metrics at `http://<host>:<port>/metrics` from each worker"
        " (see [Metrics](operations.md#metrics)).",
        shown="unset (off)",
        check=lambda v: 1 <= v <= 65535,
        rule="a port from 1 to 65535",
    )
    metrics_addr: str = setting(
        "WSUPLOAD_METRICS_ADDR",
        parse_listen_address,
        "0.0.0.0",  # noqa: S104 (a scrape target must be reachable from the Prometheus host)
        "The address the metrics port listens on (`127.0.0.1`: this host only).",
    )
    processes: int | str = setting(
        "WSUPLOAD_PROCESSES",
        parse_processes,
        "auto",
        "Worker processes one `wsupload worker` runs, each a threads-pool worker with its share of"
        " `WSUPLOAD_CONCURRENCY` (the total); `auto`: the cores this process may use (the smaller of its"
        " CPU affinity and its cgroup CPU quota); `1`: one process, no parent in between"
        " (see [Processes](deployment.md#processes-one-worker-every-core));"
        " `wsupload worker --processes` overrides it.",
        check=lambda v: v == "auto" or (isinstance(v, int) and 1 <= v <= 256),
        rule="`auto` or from 1 to 256",
    )
    concurrency: int = setting(
        "WSUPLOAD_CONCURRENCY",
        parse_int,
        "32",
        "Upload threads per worker, in all its processes (Celery's threads pool, split over"
        " `WSUPLOAD_PROCESSES`; chosen from `make bench`: see"
        " [`benchmarks/RESULTS.md`](../benchmarks/RESULTS.md)).",
        check=lambda v: 1 <= v <= 512,
        rule="from 1 to 512",
    )
    task_events: bool = setting(
        "WSUPLOAD_TASK_EVENTS",
        parse_bool,
        "off",
        "`on` (or `true`, `yes`, `1`): send Celery task events (received, started, succeeded, failed) for"
        " Flower and `celery events`; `wsupload worker --events` turns them on too. See"
        " [Flower and Celery's commands](operations.md#flower-and-celerys-commands).",
    )
    connect_timeout: float = setting(
        "WSUPLOAD_CONNECT_TIMEOUT",
        parse_duration,
        "10",
        "TCP connect; urllib3 also applies it to each stalled socket write while sending.",
        shown="{} s",
        check=lambda v: v > 0,
        rule="greater than 0",
    )
    read_timeout: float = setting(
        "WSUPLOAD_READ_TIMEOUT",
        parse_duration,
        "120",
        "Longest silence waiting for the answer. There is no total deadline: a large upload that keeps"
        " progressing is never cut off by these. Both timeouts apply to object stores too.",
        shown="{} s",
        check=lambda v: v > 0,
        rule="greater than 0",
    )
    upload_flow: str = setting(
        "WSUPLOAD_UPLOAD_FLOW",
        parse_lower,
        "binary",
        "How files reach WaveSpeed: `binary` (one POST to the API page's endpoint), `direct` (a ticket from"
        " `/api/v3/media/uploads`, then a PUT of the bytes to the signed storage URL it names) or `auto`"
        " (direct; where the ticket endpoint answers 404 or 405, binary for the rest of the process)."
        " A job's `options.upload_flow` overrides it.",
        check=lambda v: v in UPLOAD_FLOWS,
        rule=" or ".join(UPLOAD_FLOWS),
    )
    direct_ticket_margin: float = setting(
        "WSUPLOAD_DIRECT_TICKET_MARGIN",
        parse_duration,
        "60",
        "Direct flow: a retried PUT reuses its ticket only until the ticket's `expires_at` less this;"
        " after that it asks for a new ticket.",
        shown="{} s",
        check=lambda v: v >= 0,
        rule="0 or more",
    )
    allowed_buckets: tuple[str, ...] = setting(
        "WSUPLOAD_ALLOWED_BUCKETS",
        parse_buckets,
        "",
        "Comma-separated `s3://bucket` or `s3://bucket/prefix` entries (a bare `bucket/prefix` means s3);"
        " prefixes match whole path segments.",
        shown="unset (any bucket the credentials reach)",
    )
    s3_endpoint_url: str | None = setting(
        "WSUPLOAD_S3_ENDPOINT_URL",
        parse_http_url,
        None,
        "S3-compatible endpoint: MinIO, Ceph, R2, …",
        shown="unset (AWS; boto3 also honours `AWS_ENDPOINT_URL_S3`)",
    )
    s3_region: str | None = setting(
        "WSUPLOAD_S3_REGION",
        str.strip,
        None,
        "Region for signing.",
        shown="unset (boto3's chain, e.g. `AWS_DEFAULT_REGION`)",
    )
    s3_addressing_style: str = setting(
        "WSUPLOAD_S3_ADDRESSING_STYLE",
        parse_lower,
        "auto",
        "`path` for most self-hosted stores, `virtual` or `auto` for AWS.",
        check=lambda v: v in ("auto", "path", "virtual"),
        rule="auto, path or virtual",
    )
    oversize_policy: str = setting(
        "WSUPLOAD_OVERSIZE_POLICY",
        parse_lower,
        "refuse",
        "For object-store sources over `WSUPLOAD_MAX_BYTES`: `refuse` (`too_large`) or `presign`"
        " (answer with a presigned GET URL instead of uploading).",
        check=lambda v: v in OVERSIZE_POLICIES,
        rule=" or ".join(OVERSIZE_POLICIES),
    )
    presign_ttl: int = setting(
        "WSUPLOAD_PRESIGN_TTL",
        parse_seconds,
        "1h",
        "Lifetime of those URLs; the job's `expires_at` follows it.",
        shown="{} (1 s – 7 d)",
        check=lambda v: 1 <= v <= 7 * DAY,
        rule="from 1 second to 7 days (the SigV4 maximum)",
    )
    bulk_queue: str = setting(
        "WSUPLOAD_BULK_QUEUE",
        str.strip,
        "wsupload.bulk",
        "The bulk queue (batches, scheduled runs); workers serve `WSUPLOAD_QUEUE` first.",
        check=_is_queue_name,
        rule=_QUEUE_RULE,
    )
    jobs_per_message: int = setting(
        "WSUPLOAD_JOBS_PER_MESSAGE",
        parse_int,
        "32",
        "Most jobs a bulk enqueue (batches, ingestion, scheduled runs) puts in one message on the"
        " Redis broker, spreading a call evenly over a multiple of 32 messages (one per thread of a"
        " worker at the default concurrency). Each job keeps its own document, lease, generation and outcome;"
        " a message's jobs run one after another on one thread. Lower it when more threads serve"
        " the bulk queue than a call has messages; 1: one message per job. Interactive jobs and"
        " RabbitMQ always send one message per job.",
        check=lambda v: 1 <= v <= MAX_JOBS_PER_MESSAGE,
        rule=f"from 1 to {MAX_JOBS_PER_MESSAGE}",
    )
    rate_limit: float = setting(
        "WSUPLOAD_RATE_LIMIT",
        float,
        "0",
        "Upload requests per second across every worker and host (spaced 1/rate apart, kept in Redis).",
        shown="{} (none)",
        check=lambda v: 0 <= v <= 10_000,
        rule="0 to 10000",
    )
    max_concurrent_uploads: int = setting(
        "WSUPLOAD_MAX_CONCURRENT_UPLOADS",
        parse_int,
        "0",
        "Upload requests in flight across the fleet (a slot is renewed with its job's lease: a dead"
        " worker's slots come free within five leases).",
        shown="{} (none)",
        check=lambda v: v >= 0,
        rule="0 or more",
    )
    dedup_margin: int = setting(
        "WSUPLOAD_DEDUP_MARGIN",
        parse_seconds,
        "1d",
        "An earlier upload of the same bytes is reused only while it has more than this left before the API"
        " deletes it.",
        check=lambda v: v >= 0,
        rule="0 or more",
    )
    callback_secret: str | None = setting(
        "WSUPLOAD_CALLBACK_SECRET",
        check_api_key,
        None,
        "HMAC key that signs result callbacks (worker environment only).",
        shown="unset (no callbacks sent)",
        secret=True,
    )
    callback_attempts: int = setting(
        "WSUPLOAD_CALLBACK_ATTEMPTS",
        parse_int,
        "5",
        "Delivery attempts per callback, with the backoff above.",
        check=lambda v: 1 <= v <= 50,
        rule="from 1 to 50",
    )
    callback_hosts: tuple[str, ...] = setting(
        "WSUPLOAD_CALLBACK_HOSTS",
        parse_hosts,
        "",
        "Comma-separated hosts callbacks may go to; `*.example.com` for its subdomains. Set it when producers"
        " are less trusted than the worker's network.",
        shown="unset (any host)",
    )
    schedules_path: Path | None = setting(  # noqa: RUF009 (setting() returns a dataclasses.field)
        "WSUPLOAD_SCHEDULES",
        parse_file,
        None,
        "TOML file of scheduled batch runs, for `wsupload beat`"
        " (see [Scheduled runs](sources-and-batches.md#scheduled-runs)).",
        shown="unset",
    )
    beat_state: Path = setting(  # noqa: RUF009 (setting() returns a dataclasses.field)
        "WSUPLOAD_BEAT_STATE",
        parse_path,
        "celerybeat-schedule",
        "Where beat keeps its last-run times.",
    )
    fsspec_protocols: tuple[str, ...] = setting(
        "WSUPLOAD_FSSPEC_PROTOCOLS",
        parse_protocols,
        "gs,gcs,az,abfs,abfss",
        "Other stores read through fsspec, where `wsupload[fsspec]` and the store's package (gcsfs, adlfs)"
        " are installed. Chained URLs (`a::b`) are refused.",
    )
    log_format: str = setting(
        "WSUPLOAD_LOG_FORMAT",
        parse_lower,
        "text",
        "`text`: Celery's lines, for people; `json`: one JSON object per line with the job's fields"
        " (`job_id`, `kind`, …), for log collectors (see [Logs](operations.md#logs)).",
        check=lambda v: v in LOG_FORMATS,
        rule=" or ".join(LOG_FORMATS),
    )

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def broker_is_results_redis(self) -> bool:
        """Messages and results share one Redis (the broker is ``REDIS_URL``): kombu's keys sit beside ours."""
        return self.effective_broker_url == self.redis_url

    @property
    def broker_is_amqp(self) -> bool:
        """RabbitMQ is the broker (``WSUPLOAD_BROKER_URL=amqp://…``); results stay in Redis either way."""
        return is_amqp_url(self.broker_url)

    @property
    def renew_interval(self) -> float:
        """Seconds between lease renewals: three chances to renew before a lease runs out."""
        return self.lease / 3

    @property
    def restore_interval(self) -> int:
        """Seconds between kombu's scans for expired leases (each one ZRANGE); a job comes back within lease + this."""
        return 1

    @property
    def sweep_interval(self) -> float:
        """Seconds between sweeps for jobs whose message was lost (``tasks.recovery.lost_sweep``)."""
        return max(1.0, self.lease / 2)

    def __repr__(self) -> str:
        """Every setting but the secrets; the Redis and broker URLs with their passwords masked."""
        return settings_repr(self)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, worker: bool = False) -> Settings:
        """Parse settings; ``worker=True`` also requires ``WAVESPEED_API_KEY``."""
        return _read(os.environ if env is None else env, worker=worker)


VARIABLES = variables_of(Settings)
"""The settings table, one row per ``Settings`` field, in declaration (and docs/configuration.md) order."""

DEFAULT_FSSPEC_PROTOCOLS = Settings().fsspec_protocols


DEPRECATED = {
    "WSUPLOAD_VISIBILITY_TIMEOUT": "ignored since leases replaced the visibility timeout: a job's message is"
    " leased for WSUPLOAD_LEASE and renewed while it runs, and WSUPLOAD_JOB_TIMEOUT bounds one delivery",
}
"""Variables that are still accepted, and what a worker says about each at start-up."""


def deprecations(env: Mapping[str, str] | None = None) -> list[str]:
    """One line for each deprecated variable set in ``env``."""
    env = os.environ if env is None else env
    return [f"{name} is deprecated: {why}" for name, why in DEPRECATED.items() if env.get(name, "").strip()]


def _read(env: Mapping[str, str], *, worker: bool) -> Settings:
    values, problems = read_variables(VARIABLES, env, worker=worker)
    s = Settings(**values)
    if s.bulk_queue == s.queue:
        problems.append(f"WSUPLOAD_BULK_QUEUE: must differ from WSUPLOAD_QUEUE (both {s.queue!r})")
    if s.backoff_max < s.backoff_base:
        problems.append(
            f"WSUPLOAD_BACKOFF_MAX: must not be below WSUPLOAD_BACKOFF_BASE ({s.backoff_max:g} < {s.backoff_base:g})"
        )
    if problems:
        raise ConfigError(problems)
    return s
