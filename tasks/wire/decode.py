"""Reading a ``wsupload.upload`` message's arguments: whatever a producer sent, a verdict.

Producers in any language write these messages, so nothing about them is
trusted. ``read_upload_call`` turns ``(args, kwargs)`` into an ``UploadCall``
or raises (``check_upload_call``, the consumer's check, raises the first two only):

- ``NoJobId``: no usable job id anywhere (not in the arguments, nor a task id
  that can stand for one): there is no document to record an outcome in, so
  the message goes to the dead-letter list;
- ``InvalidMessage`` (with ``job_id`` known): the arguments are not
  ``[job_id, source]`` + ``options``; the job ends ``failed``/``invalid_message``;
- ``InvalidInput``: a job whose source or options are refused; it ends
  ``failed``/``invalid_input`` like any bad source.

A bulk message (``wsupload.upload_many``, built by ``tasks.wire.encode.upload_many_message``)
is read by ``read_upload_many``: an ``InvalidMessage`` for the message as a whole
(its shape, or a ``wsupload_jobs`` header that does not list its jobs:
``check_upload_many``, all the consumer checks), else a verdict per job, so one
job's bad source fails that job alone. ``jobs_named``
reads the job ids a message's headers name, without decoding its body.

Pure: no Redis, no Celery; property-tested with arbitrary JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from wsupload.config.settings import MAX_JOBS_PER_MESSAGE, UPLOAD_MANY_TASK_NAME, UPLOAD_TASK_NAME
from wsupload.errors import InvalidInput, InvalidMessage, NoJobId, UploadError
from wsupload.tasks.observe.bounds import MAX_JOB_ID_CHARS, MAX_OPTIONS_CHARS, MAX_SOURCE_CHARS, clip
from wsupload.tasks.wire.options import JobOptions

PARAMETERS = ("job_id", "source", "options")
_JOB_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:-]{{0,{MAX_JOB_ID_CHARS - 1}}}")


@dataclass(frozen=True)
class UploadCall:
    job_id: str
    source: str
    options: JobOptions


@dataclass(frozen=True)
class Refused:
    """A job of a bulk message that cannot run: it ends ``failed`` with ``error``."""

    job_id: str
    source: str
    """The source as sent, bounded and printable (``shown``)."""
    error: UploadError


JOBS_HEADER = "wsupload_jobs"
"""A bulk message's header listing its jobs' ids, in order (``tasks.wire.encode``)."""
UPLOAD_TASKS = frozenset({UPLOAD_TASK_NAME, UPLOAD_MANY_TASK_NAME})
"""The tasks whose messages carry jobs."""


def valid_job_id(value: object) -> bool:
    """Letters, digits and ``. _ : -``, at most ``MAX_JOB_ID_CHARS``: safe in a Redis key and a log line."""
    return isinstance(value, str) and _JOB_ID.fullmatch(value) is not None


def shown(value: object) -> str:
    """A bounded, printable rendering of any argument for an error message."""
    try:
        text = value if isinstance(value, str) else json.dumps(value, default=repr)
    except (ValueError, RecursionError):
        text = type(value).__name__
    return clip(repr(text) if isinstance(value, str) else text)


def bind(args: object, kwargs: object) -> dict[str, Any]:
    """The arguments by parameter name, as Python would bind ``upload(job_id, source, options=None)``."""
    if not isinstance(args, list | tuple):
        raise InvalidMessage(f"args must be a list, got {type(args).__name__}")
    if not isinstance(kwargs, dict):
        raise InvalidMessage(f"kwargs must be an object, got {type(kwargs).__name__}")
    if len(args) > len(PARAMETERS):
        raise InvalidMessage(f"too many args ({len(args)}): expected [job_id, source] and optionally options")
    bound = dict(zip(PARAMETERS, args, strict=False))
    unknown = sorted(str(name) for name in kwargs if name not in PARAMETERS)
    if unknown:
        raise InvalidMessage(f"unknown keyword arguments {shown(unknown[:5])}; expected only {', '.join(PARAMETERS)}")
    twice = sorted(name for name in kwargs if name in bound)
    if twice:
        raise InvalidMessage(f"{', '.join(twice)} given both in args and kwargs")
    bound.update(kwargs)
    return bound


def job_id_of(args: object, kwargs: object, task_id: object = None) -> str | None:
    """The job a message is about, if it names one: its ``job_id`` argument, else its task id.

    Producers use the job id as the task id (the wire contract), so a message
    whose arguments are unreadable can still have its job's outcome recorded.
    """
    first = args[0] if isinstance(args, list | tuple) and args else None
    named = kwargs.get("job_id") if isinstance(kwargs, dict) else None
    for candidate in (first, named, task_id):
        if valid_job_id(candidate):
            return str(candidate)
    return None


def check_upload_call(args: object, kwargs: object, task_id: object = None) -> dict[str, Any]:
    """The message's arguments by name, if they are ``[job_id, source]`` + ``options`` at all;
    else ``InvalidMessage`` (``NoJobId`` when no job is named). What the consumer checks before
    a task runs: the source and options are the job's to judge (``InvalidInput``)."""
    job_id = job_id_of(args, kwargs, task_id)
    try:
        bound = bind(args, kwargs)
    except InvalidMessage as exc:
        if job_id is None:
            raise NoJobId(exc.message) from None
        raise
    if not valid_job_id(bound.get("job_id")):
        message = (
            "no job id: args must be [job_id, source]"
            if "job_id" not in bound
            else f"the job id {shown(bound['job_id'])} is not 1 to {MAX_JOB_ID_CHARS} letters, digits or . _ : -"
        )
        if job_id is None:
            raise NoJobId(message)
        raise InvalidMessage(message)
    if "source" not in bound:
        raise InvalidMessage("no source: args must be [job_id, source]")
    return bound


def read_upload_call(args: object, kwargs: object, task_id: object = None) -> UploadCall:
    """The call a message asks for, or the error that says why it cannot run (see the module doc)."""
    bound = check_upload_call(args, kwargs, task_id)
    source = bound["source"]
    if not isinstance(source, str):
        raise InvalidInput(f"the source must be a string, got {type(source).__name__}")
    if len(source) > MAX_SOURCE_CHARS:
        raise InvalidInput(
            f"the source is {len(source)} characters long, over the limit of {MAX_SOURCE_CHARS}: {clip(source)!r}"
        )
    options = bound.get("options")
    if options is not None and len(shown_json(options)) > MAX_OPTIONS_CHARS:
        raise InvalidInput(f"options are over the limit of {MAX_OPTIONS_CHARS} characters as JSON")
    return UploadCall(bound["job_id"], source, JobOptions.parse(options))


def shown_json(value: object) -> str:
    try:
        return json.dumps(value, default=repr)
    except (ValueError, RecursionError):
        return repr(value)


def is_upload_task(task: object) -> bool:
    """Whether a message's ``task`` header (any JSON value a producer sent) names a task that carries jobs."""
    return isinstance(task, str) and task in UPLOAD_TASKS


def jobs_named(headers: object) -> list[str]:
    """The jobs an upload message's headers name: its task id for ``wsupload.upload``, the
    ``wsupload_jobs`` header for ``wsupload.upload_many``; none for any other message, or for
    a header naming an invalid id or too many."""
    if not isinstance(headers, dict):
        return []
    task = headers.get("task")
    if task == UPLOAD_TASK_NAME:
        job_id = headers.get("id")
        return [str(job_id)] if valid_job_id(job_id) else []
    if task == UPLOAD_MANY_TASK_NAME:
        named = headers.get(JOBS_HEADER)
        if isinstance(named, list) and len(named) <= MAX_JOBS_PER_MESSAGE and all(map(valid_job_id, named)):
            return list(named)
    return []


def bulk_jobs_in(args: object) -> list[str]:
    """The valid job ids a bulk message's args name, at most ``MAX_JOBS_PER_MESSAGE`` (for its failure)."""
    items = args[0] if isinstance(args, list | tuple) and args and isinstance(args[0], list | tuple) else []
    ids = [item[0] for item in items[:MAX_JOBS_PER_MESSAGE] if isinstance(item, list | tuple) and item]
    return [job_id for job_id in ids if valid_job_id(job_id)]


def check_upload_many(args: object, kwargs: object, named: list[str] | None) -> list[list[Any] | tuple[Any, ...]]:
    """A bulk message's jobs, unread, if the message as a whole can run. ``named``: its
    ``wsupload_jobs`` header (None: not checked; the consumer has checked it).

    Raises ``InvalidMessage`` when the message is not ``[[[job_id, source], …]]`` +
    ``{"options": …}`` with 1 to ``MAX_JOBS_PER_MESSAGE`` distinct, valid job ids listed
    in that order by the header. What it does not check (a job's source and options)
    fails that job alone (``read_upload_many``), so the consumer checks no more than this.
    """
    if not (isinstance(args, list | tuple) and len(args) == 1 and isinstance(args[0], list | tuple)):
        raise InvalidMessage("args must be [[[job_id, source], ...]] (one list of jobs)")
    items = args[0]
    if not 1 <= len(items) <= MAX_JOBS_PER_MESSAGE:
        raise InvalidMessage(f"a bulk message carries 1 to {MAX_JOBS_PER_MESSAGE} jobs, this one {len(items)}")
    if not isinstance(kwargs, dict) or any(name != "options" for name in kwargs):
        raise InvalidMessage("the kwargs of a bulk message may hold only options")
    ids = [item[0] if isinstance(item, list | tuple) and item else None for item in items]
    if not all(map(valid_job_id, ids)):
        raise InvalidMessage(
            f"every job must be [job_id, source] with a job id of 1 to {MAX_JOB_ID_CHARS} letters, digits or . _ : -"
        )
    if len(set(ids)) != len(ids):  # one delivery would claim it twice
        raise InvalidMessage("a job appears twice in the message")
    if named is not None and ids != named:
        raise InvalidMessage(f"the {JOBS_HEADER} header does not list the message's jobs in order")
    return list(items)


def read_upload_many(args: object, kwargs: object, named: list[str] | None) -> list[UploadCall | Refused]:
    """Each job of a bulk message: its call, or why it cannot run (``Refused``: one job's bad
    source or options fail that job alone). Raises ``InvalidMessage`` as ``check_upload_many``."""
    items = check_upload_many(args, kwargs, named)
    assert isinstance(kwargs, dict)  # checked
    verdicts: list[UploadCall | Refused] = []
    for item in items:
        try:
            verdicts.append(read_upload_call(list(item), dict(kwargs)))
        except UploadError as exc:
            verdicts.append(Refused(str(item[0]), shown(item[1] if len(item) > 1 else ""), exc))
    return verdicts
