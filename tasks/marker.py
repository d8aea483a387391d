"""The Celery task ``wsupload.marker``: a worker met the sweep's marker on a queue (RabbitMQ as the broker).

The marker sweep (``tasks.recovery.markers``) publishes one through a queue to learn
that the queue's head has passed the moment it was sent; meeting it records
``seen_at`` if it is still the queue's outstanding marker. It runs on a thread like
an upload, so this worker's earlier deliveries have all started when it runs. Never
retried: a marker lost or met by no one is replaced by the sweep.
"""

from __future__ import annotations

import logging

from celery import shared_task

from wsupload.config.settings import MARKER_TASK_NAME
from wsupload.tasks import runtime
from wsupload.tasks.observe.bounds import clip
from wsupload.tasks.store import keys, lua

log = logging.getLogger(__name__)


@shared_task(name=MARKER_TASK_NAME, ignore_result=True)
def marker(queue: object, token: object) -> None:
    if not isinstance(queue, str) or not isinstance(token, str):
        log.warning("marker: malformed (queue %s, token %s); ignored", clip(repr(queue)), clip(repr(token)))
        return
    client = runtime.current().redis
    seen = client.eval(lua.load("markers_seen"), 1, keys.marker(queue), token)
    log.debug("marker %s on queue %s: %s", clip(token), clip(queue), "met" if seen else "not the outstanding one")
