"""The one redaction: the worker's secrets out of every log record and stored text.

The API key and the callback secret live in the worker's environment only. Any
text can still carry them by accident — a server's error message that echoes
the key, an exception from a library, a traceback — so call sites are not
trusted to remember: ``protect`` registers the secrets once per process
(``protecting``, a secret of one request's lifetime, such as a signed upload URL),
``install_log_redaction`` cleans every log record as it is made (message,
arguments, traceback, stack; the message also clipped to ``MAX_LOG_CHARS``, so
no producer's input makes a huge line), and the result store passes every
document it writes through ``redact``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from wsupload.tasks.observe.bounds import MAX_LOG_CHARS, clip

MASK = "[redacted]"


class Redactor:
    """Replaces each registered secret, raw or as JSON or ``repr`` escape it, with ``[redacted]``."""

    def __init__(self) -> None:
        self._forms: tuple[str, ...] = ()
        self._lasting: set[str] = set()
        self._passing: Counter[str] = Counter()
        self._lock = threading.Lock()

    @staticmethod
    def _forms_of(secret: str) -> set[str]:
        # As it is, inside a JSON string, and inside a repr (%r, an exception's args).
        return {secret, json.dumps(secret)[1:-1], repr(secret)[1:-1]}

    def _rebuild(self) -> None:
        # Longest first: a secret that contains another is replaced whole.
        self._forms = tuple(sorted(self._lasting | set(self._passing), key=len, reverse=True))

    def protect(self, *secrets: str | None) -> None:
        with self._lock:
            for secret in secrets:
                if secret:
                    self._lasting |= self._forms_of(secret)
            self._rebuild()

    @contextlib.contextmanager
    def protecting(self, *secrets: str | None) -> Iterator[None]:
        """Mask ``secrets`` while the block runs (kept per use: concurrent blocks may share one)."""
        forms: Counter[str] = Counter()
        for secret in secrets:
            if secret:
                forms.update(self._forms_of(secret))
        with self._lock:
            self._passing.update(forms)
            self._rebuild()
        try:
            yield
        finally:
            with self._lock:
                self._passing.subtract(forms)
                self._passing = +self._passing  # drop the forms no block holds any more
                self._rebuild()

    @property
    def active(self) -> bool:
        return bool(self._forms)

    def __call__(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text


REDACTOR = Redactor()
"""This process's secrets: the worker registers them at start-up."""


def protect(*secrets: str | None) -> None:
    """Register secrets (None and empty are ignored) and make sure log records are cleaned."""
    REDACTOR.protect(*secrets)
    if REDACTOR.active:
        install_log_redaction()


def protecting(*secrets: str | None) -> contextlib.AbstractContextManager[None]:
    """Mask ``secrets`` (a signed URL's query) in every log record and stored text while the block runs."""
    install_log_redaction()
    return REDACTOR.protecting(*secrets)


def redact(text: str) -> str:
    return REDACTOR(text)


_formatter = logging.Formatter()
_installed: list[Callable[..., logging.LogRecord]] = []


def redacted_record(record: logging.LogRecord, redactor: Redactor = REDACTOR) -> logging.LogRecord:
    """``record`` with its message, traceback and stack already rendered and cleaned.

    The message is rendered now (``msg % args``) so no formatter can render the
    raw arguments later; the traceback goes into ``exc_text``, which formatters
    print as it is, instead of ``exc_info``, which they would render again. The
    exceptions among the arguments stay on the record, unrendered, as ``arg_errors``:
    for a filter that judges a line by its error (``worker.tls.QuietRefusals``).
    """
    if not redactor.active:
        return record
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging would report it; keep what we can
        message = f"{record.msg!r} % {record.args!r}"
    given = record.args if isinstance(record.args, tuple) else ()
    record.arg_errors = tuple(arg for arg in given if isinstance(arg, BaseException))
    record.msg, record.args = clip(redactor(message), MAX_LOG_CHARS), ()
    if record.exc_info:
        record.exc_text = redactor(_formatter.formatException(record.exc_info))
        record.exc_info = None
    elif record.exc_text:
        record.exc_text = redactor(record.exc_text)
    if record.stack_info:
        record.stack_info = redactor(record.stack_info)
    return record


def install_log_redaction() -> None:
    """Clean every log record of this process as it is made (logging's record factory).

    A factory, not a handler filter: it runs for every logger and handler,
    including those Celery and other libraries add later, and in forked pool
    children. Installed once per process.
    """
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redacted_record(previous(*args, **kwargs))

    _installed.append(previous)
    logging.setLogRecordFactory(factory)
