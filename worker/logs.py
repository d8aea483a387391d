"""Log lines for machines (``WSUPLOAD_LOG_FORMAT=json``): one JSON object per line, with the job's fields.

Each line has ``ts``, ``level``, ``event`` (the message), ``logger``, ``host`` and
``pid``; ``exc`` (the traceback) when there is one; and the job's fields
(``tasks.observe.log_fields.FIELDS``) when the line is about a job. The job code passes its
outcome's and retries' fields as ``extra=``; ``JobContext``, a filter on the
handlers, gives every other line that a job's thread logs (urllib3's requests,
Celery's task lines, tracebacks) the ``job_id`` of the job that thread runs.

The worker switches its handlers to JSON from Celery's logging set-up
(``after_setup_logger``/``after_setup_task_logger``, hooked in ``worker.app``);
other commands from ``setup_cli``. The text format is Celery's own, unchanged.

One writer thread (``write_from_one_thread``): a worker's upload threads hand each record
to a queue, and one thread formats and writes them, in order. Writing from every thread
made them queue on the handler's lock and the GIL around each ``write``: about a sixth of
the worker's CPU per job at one line a job (``--loglevel warning`` against ``info``, same
run, 2026-12-07). Lines
still queued when the process is killed (SIGKILL) are lost with it; a normal exit writes
them all first.

Secrets: ``tasks.observe.redaction``'s record factory masks the API key and the callback
secret in each record's message and traceback as it is made, before any
formatter; ``extra=`` fields are set on the record after the factory ran, so this
formatter passes every value it writes through the same redaction, and bounds it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import logging.handlers
import os
import queue
import socket
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

from wsupload.config.settings import CALLBACK_TASK_NAME, LOG_FORMATS, UPLOAD_TASK_NAME, VARIABLES
from wsupload.tasks.observe.bounds import MAX_LOG_CHARS, SHOWN_CHARS, clip
from wsupload.tasks.observe.log_fields import FIELDS
from wsupload.tasks.observe.redaction import redact
from wsupload.tasks.recovery import lease
from wsupload.tasks.wire.decode import job_id_of

TEXT, JSON = LOG_FORMATS
MAX_EXC_CHARS = 8000
"""The longest traceback a line carries: its last lines (where it was raised, and what) are kept."""
HOST = socket.gethostname()
CLI_LOGGER = "wsupload.worker.cli"
"""The commands' own notices (``worker.cli``): in JSON mode, shown from info up; other loggers from warning up."""
_JOB_TASKS = frozenset({UPLOAD_TASK_NAME, CALLBACK_TASK_NAME})
"""Tasks whose first argument is a job id."""


def log_format(env: Mapping[str, str] | None = None) -> str:
    """``WSUPLOAD_LOG_FORMAT`` as its settings row reads it; ``text`` when unset or invalid.

    For logging that starts before (or without) ``Settings.from_env``, which
    reports an invalid value with every other problem.
    """
    env = os.environ if env is None else env
    row = next(v for v in VARIABLES if v.env == "WSUPLOAD_LOG_FORMAT")
    raw = env.get(row.env, "")
    try:
        return str(row.read(raw)) if raw.strip() else TEXT
    except ValueError:
        return TEXT


def current_job_id() -> str | None:
    """The job this thread runs: its lease's (``tasks.recovery.lease``), else the Celery task's it executes, if any."""
    held = lease.current()
    if held is not None:
        return held.job_id
    celery = sys.modules.get("celery")  # not loaded (a command that logs a warning): no task runs here
    task = getattr(celery, "current_task", None)
    if not task or task.name not in _JOB_TASKS:  # the proxy is false outside a task
        return None
    request = task.request
    return job_id_of(getattr(request, "args", None), getattr(request, "kwargs", None), getattr(request, "id", None))


class JobContext(logging.Filter):
    """Gives a record that names no job the ``job_id`` of the job its thread runs (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            try:
                job_id = current_job_id()
            except Exception:  # a log line must never fail for want of its context
                job_id = None
            if job_id is not None:
                record.job_id = job_id
        return True


class Handoff(logging.handlers.QueueHandler):
    """Puts each record on the writer thread's queue as it is (``write_from_one_thread``).

    The record factory (``tasks.observe.redaction``) has already rendered its message
    and traceback into text, so nothing on it changes later; a record it did not render
    (no secret registered) is rendered here, as the standard ``QueueHandler`` does.
    """

    listener: Writer | None = None
    """The writer thread's listener: the handlers that write what this hands off."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.args or record.exc_info:
            prepared: logging.LogRecord = super().prepare(record)
            return prepared
        return record


class Writer(logging.handlers.QueueListener):
    """The writer thread; ``stop`` (drain, then end) may be called more than once (a caller, then exit)."""

    def stop(self) -> None:
        if self._thread is not None:
            super().stop()


class SecondCache:
    """A formatter's ``formatTime`` that makes each second's text once (``%(asctime)s``).

    Every line of a worker's text log starts with its time; the standard ``formatTime``
    converts and formats it whole for each line. The writer thread formats every line, one
    after another, so the last second's text is kept and only the milliseconds change.
    Used only where the result is the standard one: no ``datefmt``, a formatter that does
    not override ``formatTime``, and the standard converters (``time.localtime``/``gmtime``).
    """

    def __init__(self, formatter: logging.Formatter) -> None:
        self.formatter = formatter
        self.last: tuple[int, str] = (-1, "")
        """The last second and its text, replaced whole (a formatter another thread shares stays right)."""

    @staticmethod
    def fits(formatter: logging.Formatter | None) -> bool:
        return (
            formatter is not None
            and type(formatter).formatTime is logging.Formatter.formatTime
            and formatter.datefmt is None
            and formatter.converter in (time.localtime, time.gmtime)
            and bool(formatter.default_msec_format)
        )

    def __call__(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        formatter = self.formatter
        if datefmt is not None:
            return logging.Formatter.formatTime(formatter, record, datefmt)
        second, last = int(record.created), self.last
        if last[0] != second:
            moment = formatter.converter(record.created)
            last = self.last = (second, time.strftime(formatter.default_time_format, moment))
        return formatter.default_msec_format % (last[1], record.msecs)  # type: ignore[operator]


def write_from_one_thread(logger: logging.Logger) -> Writer | None:
    """Move ``logger``'s handlers to one writer thread; it gets a ``Handoff`` in their place.

    Filters that read the calling thread (``JobContext``) run before the hand-off; the
    handlers keep their own formatters, levels and filters. Once per logger; the writer
    drains the queue at exit. Returns the listener (None if there was nothing to move).
    """
    if not logger.handlers or any(isinstance(h, Handoff) for h in logger.handlers):
        return None
    handlers = list(logger.handlers)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handoff = Handoff(records)
    if any(isinstance(f, JobContext) for h in handlers for f in h.filters):
        handoff.addFilter(JobContext())  # the job of the thread that logs, not the writer's
    for handler in handlers:
        if SecondCache.fits(handler.formatter):
            assert handler.formatter is not None
            handler.formatter.formatTime = SecondCache(handler.formatter)  # type: ignore[method-assign]
    listener = Writer(records, *handlers, respect_handler_level=True)
    handoff.listener = listener
    for handler in handlers:
        logger.removeHandler(handler)
    logger.addHandler(handoff)
    listener.start()
    atexit.register(listener.stop)
    return listener


def timestamp(created: float) -> str:
    """A record's time as the documents write times: ISO 8601, UTC, milliseconds, ``Z``."""
    moment = datetime.fromtimestamp(created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clip_end(text: str, limit: int = MAX_EXC_CHARS) -> str:
    """``text`` itself when short; else how much was left out and its end."""
    if len(text) <= limit:
        return text
    return f"…[{len(text) - limit} characters before]{text[-limit:]}"


def _value(value: Any) -> Any:
    """A field's value fit to write: numbers as they are, anything else as redacted, bounded text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return clip(redact(str(value)), SHOWN_CHARS)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (``json.dumps`` escapes every newline and control character)."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is rather than lose the line
            message = f"{record.msg!r} % {record.args!r}"
        line: dict[str, Any] = {
            "ts": timestamp(record.created),
            "level": record.levelname.lower(),
            "event": clip(redact(message), MAX_LOG_CHARS),
            "logger": record.name,
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = _value(value)
        line["host"], line["pid"] = HOST, record.process
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = clip_end(redact(record.exc_text))
        if record.stack_info:
            line["stack"] = clip_end(redact(record.stack_info))
        return json.dumps(line)


def use_json(*loggers: logging.Logger | None) -> None:
    """Write these loggers' handlers' lines as JSON, each with its job's context."""
    for logger in loggers:
        for handler in logger.handlers if logger is not None else ():
            handler.setFormatter(JsonFormatter())
            if not any(isinstance(f, JobContext) for f in handler.filters):
                handler.addFilter(JobContext())
    _json_celery_notices()


def setup_cli(env: Mapping[str, str] | None = None, stream: IO[str] | None = None) -> None:
    """For every command, until (for a worker) Celery sets up its logging: in JSON mode, warnings and
    errors (and the commands' own notices) as JSON lines on stderr.

    The text format keeps Python's own fallback (the bare message of a warning or
    worse). Commands' output and their one-line errors are not logs: they stay text.
    """
    root = logging.getLogger()
    if log_format(env) != JSON or root.handlers:
        return
    root.addHandler(logging.StreamHandler(stream or sys.stderr))
    logging.getLogger(CLI_LOGGER).setLevel(logging.INFO)
    use_json(root)
    # Python's warnings too (Celery's SecurityWarning comes before the worker's logging is set up).
    logging.captureWarnings(True)


def _say(msg: str, f: Any = sys.__stderr__) -> None:
    """Celery's notices from its signal handlers ("worker: Warm shutdown"), as JSON lines.

    Celery writes them with ``os.write`` from the handler, bypassing logging, whose
    locks a signal handler must not take: so does this.
    """
    now = timestamp(datetime.now(UTC).timestamp())
    line: dict[str, Any] = {"ts": now, "level": "info", "event": str(msg).strip(), "logger": "celery.apps.worker"}
    line |= {"host": HOST, "pid": os.getpid()}
    # No such stream: a notice is not worth failing a stop for.
    with contextlib.suppress(AttributeError, OSError, ValueError):
        os.write(f.fileno(), (json.dumps(line) + "\n").encode())


def _json_celery_notices() -> None:
    """Route ``celery.apps.worker.safe_say``, the one text Celery prints past logging while a worker runs, to ``_say``.

    (Its banner is the other: ``wsupload worker`` passes ``--quiet`` in JSON mode.) Only where a
    Celery worker is loaded: other commands need not pay for importing one.
    """
    worker = sys.modules.get("celery.apps.worker")
    if worker is not None and hasattr(worker, "safe_say"):
        worker.safe_say = _say  # type: ignore[attr-defined]  # untyped in celery-types
