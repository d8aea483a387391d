"""Moving a message aside: the dead-letter list, its job's outcome, one log line.

Used wherever a worker meets a message it cannot run as a job — the broker
transport (an envelope that is not kombu's), the consumer (no task name, an
unknown task, a body that does not decode, arguments that name no job) — so
that each ends the same way: an entry on ``wsupload:dead``, the job's document
``failed`` with kind ``invalid_message`` when a job can be recognised, and the
worker carries on. Never raises: a quarantine that cannot reach Redis logs the
message (bounded) instead, so a bad message can never stop the consumer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property

import redis

from wsupload.config.settings import Settings
from wsupload.errors import InvalidMessage
from wsupload.tasks.observe.bounds import clip
from wsupload.tasks.store.connections import redis_client
from wsupload.tasks.store.dead_letters import DEAD_KEY, DeadLetterStore
from wsupload.tasks.store.results import ResultStore

log = logging.getLogger(__name__)


class Quarantine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def _redis(self) -> redis.Redis:
        return redis_client(self.settings.redis_url)

    def __call__(
        self,
        raw: bytes | str,
        reason: str,
        *,
        queue: str | None = None,
        job_ids: Sequence[str] = (),
        is_upload: bool = False,
    ) -> None:
        """Record ``raw`` as dead; end each of ``job_ids``' jobs ``failed`` if it is an upload or has a document.

        A job id on some other task's message may be that task's own id, not a
        job: its document is touched only if one exists. A bulk message names
        several jobs; its dead-letter entry shows the first.
        """
        job_id = job_ids[0] if job_ids else None
        try:
            entry = DeadLetterStore(self._redis).add(raw, reason, queue=queue, job_id=job_id)
        except redis.RedisError as exc:
            shown = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            log.error("could not move a message aside (%s): %s; the message was: %s", exc, reason, clip(shown, 1000))
            return
        log.warning(
            "message moved to %s (entry %s, %s, queue %s): %s", DEAD_KEY, entry.id, _jobs(job_ids), queue, clip(reason)
        )
        store = ResultStore(self._redis, self.settings.result_ttl)
        for job_id in job_ids:
            try:
                if is_upload or store.get(job_id) is not None:
                    store.end_with_error(job_id, InvalidMessage(f"{clip(reason)} (dead-letter entry {entry.id})"))
            except redis.RedisError as exc:
                log.error("job %s: could not record its unreadable message: %s", job_id, exc)


def _jobs(job_ids: Sequence[str]) -> str:
    if len(job_ids) <= 1:
        return f"job {job_ids[0] if job_ids else None}"
    return f"{len(job_ids)} jobs, the first {job_ids[0]}"
