"""A guard in kombu's Redis channel: a message that is not a kombu envelope never reaches kombu.

kombu's Redis transport takes a message off the list (BRPOP, or RPOP when
polling) and decodes it in the consumer's event loop. Anything that is not
the JSON envelope kombu wrote — ``garbage{``, ``[1,2,3]``, ``"x"``, a body that
is not the base64 its ``body_encoding`` says — raises there, outside any
handler Celery has, and the worker exits with "Unrecoverable error"; the
message is restored and kills the next worker too. ``PoisonGuard`` checks
each message where it is read, exactly as kombu will decode it, and hands
what fails to the quarantine (``worker.quarantine``): the dead-letter list and,
if the envelope names a job, its failed document.

``_brpop_read`` and ``_get`` follow kombu 5.7's own, with the check added;
``tests/unit/test_poison.py`` runs kombu's message decoding against them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from queue import Empty
from typing import Any, ClassVar

from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from wsupload.tasks.observe.bounds import clip
from wsupload.tasks.wire.decode import is_upload_task, jobs_named, valid_job_id

log = logging.getLogger(__name__)
Quarantine = Callable[..., None]
"""``(raw, reason, *, queue, job_ids, is_upload)``: see ``worker.quarantine.Quarantine``."""


def envelope_problem(payload: object) -> str | None:
    """What stops kombu from reading ``payload`` as a message, or None.

    kombu indexes these without checking: ``properties.delivery_tag`` (the
    unacked index's member), ``properties.delivery_info.exchange`` and
    ``routing_key`` (recorded for a restore), ``body`` (decoded by encoding).
    """
    if not isinstance(payload, dict):
        return f"the message is a JSON {type(payload).__name__}, not an object"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "the message has no 'properties' object"
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str) or not tag:
        return "'properties.delivery_tag' is not a non-empty string"
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or not all(isinstance(info.get(k), str) for k in ("exchange", "routing_key")):
        return "'properties.delivery_info' lacks string 'exchange' and 'routing_key'"
    if not isinstance(payload.get("body"), str | None):
        return "'body' is not a string"
    encoding = properties.get("body_encoding")
    if not isinstance(encoding, str | None):
        return "'properties.body_encoding' is not a string"
    headers = payload.get("headers")
    if not isinstance(headers, dict | None):
        return "'headers' is not an object"
    return None


def envelope_jobs(payload: object) -> tuple[list[str], bool]:
    """The jobs an envelope names, and whether it is an upload message (``tasks.wire.decode.jobs_named``).

    Another task's message names its task id, which may be a job's.
    """
    headers = payload.get("headers") if isinstance(payload, dict) else None
    if not isinstance(headers, dict):
        return [], False
    if is_upload_task(headers.get("task")):
        return jobs_named(headers), True
    task_id = headers.get("id")
    return ([str(task_id)] if valid_job_id(task_id) else []), False


class PoisonGuard:
    """Mixin for ``kombu.transport.redis.Channel``; must come before it in the bases."""

    quarantine: ClassVar[Quarantine | None] = None
    """Set by the worker's app (``worker.app.create_app``); None: log the message and drop it."""

    # What kombu's Channel provides.
    client: Any
    connection: Any
    connection_errors: tuple[type[BaseException], ...]
    sep: str
    priority_steps: Any
    _queue_cycle: Any
    _in_poll: Any
    Message: Any

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # A broken connection: disconnect so the next poll reconnects (as kombu does).
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            payload = self._readable(item, dest)
            if payload is not None:
                self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()  # type: ignore[attr-defined]

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        with self.conn_or_acquire() as client:  # type: ignore[attr-defined]
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))  # type: ignore[attr-defined]
                if item:
                    self._maybe_update_queues_expire(client, queue)  # type: ignore[attr-defined]
                    payload = self._readable(item, queue)
                    if payload is None:
                        raise Empty()  # moved aside: the next poll reads the next message
                    return payload
            self._maybe_update_queues_expire(client, queue)  # type: ignore[attr-defined]
            raise Empty()

    _read: tuple[object, str] | None = None
    """The last envelope ``_readable`` passed, and its text as Redis held it."""

    def text_of(self, payload: object) -> str | None:
        """``payload``'s JSON text as it was read, if it is the envelope ``_readable`` passed last."""
        read = self._read
        return read[1] if read is not None and read[0] is payload else None

    def _readable(self, item: bytes | str, queue: str) -> dict[str, Any] | None:
        """The envelope, if kombu can read it as a message; else None, and it is quarantined."""
        payload: object = None
        self._read = None
        try:
            text = bytes_to_str(item)
            payload = loads(text)
            problem = envelope_problem(payload)
            if problem is None:
                self.Message(payload, channel=self)  # decodes the body exactly as delivery will
        except Exception as exc:  # whatever kombu's decoding raises, the message is at fault
            problem = f"{type(exc).__name__}: {clip(str(exc))}"
        if problem is None:
            assert isinstance(payload, dict)
            self._read = (payload, text)
            return payload
        job_ids, is_upload = envelope_jobs(payload)
        reason = f"not a readable message envelope: {problem}"
        if self.quarantine is None:
            text = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
            log.error("dropping a message (%s): %s", reason, clip(text, 1000))
        else:
            self.quarantine(item, reason, queue=queue, job_ids=job_ids, is_upload=is_upload)
        return None
