"""The Celery application: every broker and delivery setting, derived from ``Settings``.

Why these settings (see kombu's Redis transport and ``tasks.recovery.lease``): a message is
"unacked" from delivery until ack, and kombu hands it to another worker once its
entry in ``unacked_index`` is older than the visibility timeout. wsupload makes
that timeout a short lease (``WSUPLOAD_LEASE``) that the worker renews while a job
shows signs of life (``worker.renewer``). So:

- ``task_acks_late``: a job is acknowledged only after its outcome is recorded; a
  worker that dies mid-upload leaves the message to come back within a lease.
- no Celery time limits: an upload of any length keeps its lease while it makes
  progress; ``WSUPLOAD_JOB_TIMEOUT`` bounds a delivery inside the job, and fencing
  (``tasks.store.fencing``) keeps a delivery that lost its lease from writing.
- the threads pool: jobs wait on the network, and a thread costs kilobytes where a
  prefork child costs ~50 MB; the renewer sees each job's signs of life in-process.
  Measured in ``benchmarks/RESULTS.md``.
- ``worker_prefetch_multiplier=1``: a worker holds no more messages than it runs.
- retries happen inside the task (tenacity), never as Celery countdowns: an ETA
  longer than the lease would be redelivered in a loop.
- ``unacked_restore_interval=1``/``throttle=1``: each worker looks for expired
  leases every second (one ZRANGE), so a dead worker's job is back within a lease
  and a second; ``unacked_mutex_expire`` one lease, so a worker that dies mid-scan
  holds the scan's lock that long, not kombu's 300 s.
- ``worker_cancel_long_running_tasks_on_connection_loss`` off: a thread cannot be
  cancelled, and needs not be: a job keeps running while its lease holds, and stops
  at its next block once the renewer finds the lease gone (``tasks.recovery.lease``).
  Celery warns at every broker connection loss that this default changes in 6.0 (a
  ``CPendingDeprecationWarning`` of six lines): chosen here, so that warning is dropped
  (``_quiet_chosen_default``); any other warning still shows.
- ``worker.redis_transport``: kombu's transport without a Redis client built for
  every message's unacked bookkeeping, and with Redis faults survived.
- ``rediss://`` brokers verify the server's certificate, as the result store does; ``amqps://``
  ones its certificate and host name, with the ``ssl_*`` options of the URL (``config.broker_urls``).
- a Sentinel broker URL (``config.redis_urls``) becomes kombu's ``sentinel://`` list
  and the transport options ``master_name``/``sentinel_kwargs`` (``broker_for``).
- ``queue_order_strategy="priority"``: a worker serving both queues always
  takes from the interactive queue first (kombu rotates them by default), so a
  web request's upload never waits behind a bulk backlog.
- RabbitMQ (``WSUPLOAD_BROKER_URL=amqp://…``, see ``amqp_options``): both queues are
  durable quorum queues, Celery's own sends wait for publisher confirms, a 10 s
  heartbeat, and none of the Redis transport's options; leases there are
  ``worker.amqp_leases``.
- task events (``WSUPLOAD_TASK_EVENTS``) for Flower and ``celery events``; a job that
  ends ``failed`` raises ``JobFailed`` after its outcome is recorded, so they show it as
  FAILURE, and ``task_acks_on_failure_or_timeout`` still acknowledges its message.
- the module-level ``app`` (``celery -A wsupload.worker.app inspect|control …``) needs
  no API key; only starting a worker does (``_refuse_without_key``).
- ``task_routes`` (``route_foreign``): a Celery client's ``link``/``link_error`` signatures,
  which this worker sends, go to the queue they name, else to Celery's default ``celery``,
  never to wsupload's queue (the worker's default queue, where no worker knows them).
"""

from __future__ import annotations

import logging
import ssl
import sys
import warnings
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from celery import Celery, current_app
from celery.exceptions import CPendingDeprecationWarning
from celery.schedules import crontab
from celery.signals import after_setup_logger, after_setup_task_logger, celeryd_init
from celery.utils.log import get_multiprocessing_logger

from wsupload.config.broker_urls import amqp_tls, scheme_of
from wsupload.config.redis_urls import is_sentinel_url, parse_sentinel_url, url_secrets
from wsupload.config.schedules import Schedule
from wsupload.config.settings import SCAN_TASK_NAME, UPLOAD_TASK_NAME, Settings, deprecations
from wsupload.errors import ConfigError, TlsRefused
from wsupload.tasks.observe import redaction
from wsupload.worker import logs, redis_transport
from wsupload.worker.poison import PoisonGuard
from wsupload.worker.quarantine import Quarantine

TASK_PREFIX = UPLOAD_TASK_NAME.partition(".")[0] + "."
"""Every task name of wsupload's (``wsupload.upload``, ``wsupload.callback``, …) starts with it."""


class WsuploadApp(Celery):
    """The Celery app, carrying the settings it was built from and where bad messages go."""

    settings: Settings
    quarantine: Quarantine


def create_app(settings: Settings) -> WsuploadApp:
    # Before anything logs: the secrets this process holds are masked in every record, the
    # passwords in its Redis and broker URLs too (a library's message may quote them unmasked).
    urls = {settings.redis_url, settings.effective_broker_url}
    redaction.protect(settings.api_key, settings.callback_secret, *(s for url in urls for s in url_secrets(url)))
    amqp = settings.broker_is_amqp
    if not amqp:
        redis_transport.install()
    broker_url, sentinel_options = broker_for(settings.effective_broker_url)
    app = WsuploadApp(
        "wsupload",
        broker=broker_url,
        include=[
            *(f"wsupload.tasks.{name}" for name in ("upload", "upload_many", "scan", "callbacks", "marker")),
            # Hooked to the worker's signals (worker.background), started and stopped in this
            # order: its heartbeat, its jobs' lease renewal and stop, the cancels of the jobs it
            # runs, the paused queues it stops consuming, and the sweep for lost messages.
            "wsupload.worker.heartbeat",
            "wsupload.worker.renewer",
            "wsupload.worker.cancel_watch",
            "wsupload.worker.pause_watch",
            "wsupload.worker.sweeper",
            # Its metrics endpoint, when WSUPLOAD_METRICS_PORT is set.
            "wsupload.worker.metrics",
        ],
    )
    app.settings = settings
    app.quarantine = Quarantine(settings)
    PoisonGuard.quarantine = app.quarantine
    transport_options: dict[str, Any] = (
        {}
        if amqp
        else {
            "visibility_timeout": settings.lease,
            "unacked_restore_interval": settings.restore_interval,
            "unacked_restore_throttle": 1,
            # The restore scan's lock outlives a worker that dies mid-scan by this much (kombu:
            # 300 s). Scans are safe side by side (each restore is a WATCH transaction).
            "unacked_mutex_expire": max(1, round(settings.lease)),
            "queue_order_strategy": "priority",
            **sentinel_options,
        }
    )
    # Said on every connection loss while jobs run, about the setting turned off below on purpose.
    warnings.filterwarnings("ignore", r"\s*In Celery 5.1 we introduced", CPendingDeprecationWarning)
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        # A Redis that is down, full or a replica (see worker.redis_transport) is waited
        # out: the default gives up after 100 reconnects (about 45 minutes) and the worker exits.
        broker_connection_max_retries=None,
        # Any other refusal in the consumer's loop (MISCONF, NOREPLICAS: redis-py has no
        # class for them) reconnects too, rather than ending the worker.
        broker_channel_error_retry=True,
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.queue,
        task_routes=(route_foreign,),
        task_acks_late=True,
        # Celery's default, said here because wsupload relies on it: a job that ended
        # `failed` raises JobFailed, and its message must be acknowledged, never redelivered.
        task_acks_on_failure_or_timeout=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.concurrency,
        worker_pool="threads",
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=settings.task_events,
        worker_disable_rate_limits=True,  # Celery's per-task rate limits: unused, the fleet limiter is ours
        # Messages it cannot run go to the dead-letter list instead of the log (worker.consumer).
        worker_consumer="wsupload.worker.consumer:Consumer",
        enable_utc=True,
    )
    tls = broker_tls(settings.effective_broker_url)
    if tls is not None:
        app.conf.broker_use_ssl = tls
    if amqp:
        app.conf.update(amqp_options(settings))
    return app


FOREIGN_QUEUE = "celery"
"""Celery's default queue: where a task that is not wsupload's goes when its signature names no queue."""


def route_foreign(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any) -> dict[str, str] | None:
    """Celery's router: wsupload's own tasks keep the worker's routing; any other task (a client's
    link or errback) goes to ``FOREIGN_QUEUE`` unless its signature names a queue (that one wins)."""
    if name.startswith(TASK_PREFIX):
        return None
    return {"queue": FOREIGN_QUEUE}


HEARTBEAT = 10
"""Seconds: RabbitMQ closes the connection of a worker silent for two or three of them (SIGSTOP, a
partition, a hung host; 29 s measured after a SIGSTOP) and requeues every message it held."""


def amqp_options(settings: Settings) -> dict[str, Any]:
    """Celery's settings for RabbitMQ as the broker (replacing the Redis transport's).

    - quorum queues (replicated, on disk) for the interactive and bulk queues;
      Celery (``worker_detect_quorum_queues``, on by default) then uses a
      per-consumer prefetch (global QoS is not supported on quorum queues). Their
      arguments are the ones ``tasks.wire.amqp_publisher`` declares them with: RabbitMQ refuses
      a declaration that differs.
    - ``confirm_publish``: every message Celery itself sends (callbacks, scans)
      waits for RabbitMQ's confirm; wsupload's own enqueue confirms in batches.
    - a short heartbeat (``HEARTBEAT``): a paused or cut-off worker's messages go
      back to their queue within ~20 s instead of the kernel's TCP timeout.
    - ``worker_prefetch_multiplier=1`` stays: with one consumer per queue a worker
      holds at most ``concurrency`` messages of each queue; the threads pool runs
      them in arrival order, so an interactive job waits for one free thread, not
      behind a bulk backlog (RabbitMQ delivers from both consumers as threads free).
    """
    from kombu import Exchange, Queue

    from wsupload.tasks.wire.amqp_publisher import QUORUM

    return {
        "broker_transport_options": {"confirm_publish": True},
        "broker_heartbeat": HEARTBEAT,
        # Celery's own shape, an exchange per queue: a bare Queue(name) is bound to the default
        # queue's exchange and routing key, so a message sent there would reach both queues.
        "task_queues": [
            Queue(name, Exchange(name, "direct"), routing_key=name, queue_arguments=QUORUM)
            for name in (settings.queue, settings.bulk_queue)
        ],
        "worker_detect_quorum_queues": True,
    }


def broker_for(url: str) -> tuple[str, dict[str, Any]]:
    """The broker URL kombu is given, and the transport options it implies (only a Sentinel URL has any).

    Both Sentinel spellings reach kombu as its own: one ``sentinel://`` URL per
    sentinel, ``;``-joined, with the master's name and the sentinels' login as
    transport options (kombu reads neither from the URL).
    """
    if scheme_of(url) == "amqps":
        return amqp_tls(url)[0], {}  # its TLS options are broker_tls's
    if not is_sentinel_url(url):
        return url, {}
    sentinel = parse_sentinel_url(url)
    return sentinel.kombu_url(), sentinel.kombu_transport_options()


def broker_tls(url: str) -> dict[str, Any] | None:
    """For ``rediss://`` without ``ssl_cert_reqs``: verify the server's certificate.

    kombu falls back to CERT_NONE (with a warning) for such a URL, while redis-py,
    which reads and writes the results over the same URL, verifies by default: the
    broker connection would be the one open to a man in the middle. An explicit
    ``?ssl_cert_reqs=…`` in the URL is left to mean what it says. For ``amqps://``: py-amqp's
    options from the URL's ``ssl_*`` ones (``config.broker_urls.amqp_tls``).
    """
    if scheme_of(url) == "amqps":
        return amqp_tls(url)[1]
    parts = urlsplit(url)
    if parts.scheme != "rediss" or "ssl_cert_reqs" in parse_qs(parts.query):
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


@after_setup_logger.connect
def _one_line_per_job(logger: logging.Logger, loglevel: int | str, **_: Any) -> None:
    # Celery logs "received" and "succeeded" for every task (the consumer and the
    # pool's thread); the job's own line says more. Kept at debug.
    if logging.getLevelName(loglevel) != "DEBUG" and loglevel != logging.DEBUG:
        for name in ("celery.worker.strategy", "celery.app.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)


@after_setup_logger.connect
def _log_format(logger: logging.Logger, **_: Any) -> None:
    # WSUPLOAD_LOG_FORMAT=json: the handlers Celery just made write JSON lines (worker.logs).
    if _json_logs():
        logs.use_json(logger, get_multiprocessing_logger())


CHOSEN_DEFAULT = "worker_cancel_long_running_tasks_on_connection_loss"
"""Named in the warning Celery logs at every broker connection loss; wsupload sets it off on purpose."""


class _ChosenDefaultWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("CPendingDeprecationWarning" in text and CHOSEN_DEFAULT in text)


def _filter_once(logger_name: str, kind: type[logging.Filter]) -> None:
    """Add a ``kind`` filter to the logger, unless it has one (Celery may set logging up more than once)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, kind) for f in logger.filters):
        logger.addFilter(kind())


@after_setup_logger.connect
def _quiet_chosen_default(**_: Any) -> None:
    # Celery routes warnings to logging (captureWarnings) with an 'always' filter: drop this one line there.
    _filter_once("py.warnings", _ChosenDefaultWarning)


class _OneLineRejects(logging.Filter):
    """A message handed back (``Reject``: a paused queue, the stop grace, Redis refusing writes) is
    routine: Celery's line for it stays, without the traceback Celery's log policy adds to it."""

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        if isinstance(data, dict) and data.get("description") == "rejected":
            record.exc_info, record.exc_text = None, None
        return True


@after_setup_logger.connect
def _one_line_rejects(**_: Any) -> None:
    _filter_once("celery.app.trace", _OneLineRejects)


@after_setup_logger.connect
def _one_writer_thread(logger: logging.Logger, **_: Any) -> None:
    # Last of the set-up hooks: the handlers have their formats (text or JSON) by now.
    logs.write_from_one_thread(logger)


@after_setup_task_logger.connect
def _task_log_format(logger: logging.Logger, **_: Any) -> None:
    if _json_logs():
        logs.use_json(logger)


def _json_logs() -> bool:
    settings = getattr(current_app, "settings", None)
    return isinstance(settings, Settings) and settings.log_format == logs.JSON


def beat_schedule(schedules: Sequence[Schedule], settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery beat entries: one ``wsupload.scan`` per schedule, sent to the bulk queue."""
    entries = {}
    for schedule in schedules:
        when: Any = timedelta(seconds=schedule.every) if schedule.every else crontab(**schedule.crontab_fields())
        entries[f"wsupload-scan-{schedule.name}"] = {
            "task": SCAN_TASK_NAME,
            "schedule": when,
            "args": [schedule.to_message()],
            "options": {"queue": settings.bulk_queue},
        }
    return entries


CONSUMER_LOGGERS = ("celery.worker.consumer.consumer", "celery.worker.consumer.connection")
"""Celery's loggers of "Cannot connect to …" (at each attempt) and "Connected to …"."""


@celeryd_init.connect(weak=False, dispatch_uid="wsupload.worker.app:refuse-without-key")
def _refuse_without_key(instance: Any = None, **_: Any) -> None:
    """``celery -A wsupload.worker.app worker`` without ``WAVESPEED_API_KEY``: one line, exit 2.

    The module-level app is built without the key so that inspect/control work on
    any host; a worker's tasks read it from the environment (``tasks.runtime``), so
    the environment is what is checked, before the worker takes any message.
    """
    if isinstance(getattr(instance, "app", None), WsuploadApp):
        settings = _settings_or_exit(worker=True)
        say_deprecations(settings)
        from wsupload.worker import tls

        try:  # a certificate that does not verify: one line, exit 2, as `wsupload worker` says it
            tls.check_at_start(settings)
        except TlsRefused as exc:
            print(f"wsupload: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        # Later (a rotation), a refusal is waited out and said once, not at each reconnect.
        tls.NOTICE.watch(settings)
        for name in CONSUMER_LOGGERS:
            logging.getLogger(name).addFilter(tls.QuietRefusals())


def say_deprecations(settings: Settings) -> None:
    """One line per deprecated variable set, as a worker starts (either entry point)."""
    for line in deprecations():
        if settings.log_format == logs.JSON:
            logging.getLogger(__name__).warning(line)
        else:
            print(f"wsupload: warning: {line}", file=sys.stderr, flush=True)


def _settings_or_exit(*, worker: bool) -> Settings:
    """The settings; bad ones as the ``wsupload`` command says them (one line each, exit 2).

    Celery's command prints any exception that loading the app raises with its
    traceback, and goes on after one a signal handler raises; SystemExit it lets through.
    """
    try:
        return Settings.from_env(worker=worker)
    except ConfigError as exc:
        print("wsupload: configuration error:\n  " + str(exc).replace("\n", "\n  "), file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def __getattr__(name: str) -> WsuploadApp:
    # ``celery -A wsupload.worker.app …`` looks up ``app`` here; building it on demand
    # keeps ``import worker.app`` free of environment parsing. Without the API key:
    # ``inspect``/``control`` need only the broker, and a worker refuses to start above.
    if name == "app":
        return create_app(_settings_or_exit(worker=False))
    raise AttributeError(name)
