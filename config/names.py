"""The wire contract's names: the Redis key prefix and the Celery task names.

Kept apart from ``config.settings`` so that what only needs a name (``tasks.store.keys``,
and through it ``wsupload workers``/``health``) does not load every setting's parser.
"""

from __future__ import annotations

KEY_PREFIX = "wsupload"
"""Every Redis key wsupload owns starts with this (part of the wire contract)."""

UPLOAD_TASK_NAME = "wsupload.upload"
"""The Celery task name producers send (part of the wire contract)."""
UPLOAD_MANY_TASK_NAME = "wsupload.upload_many"
"""The task of a bulk message: several jobs in one message (part of the wire contract)."""
CALLBACK_TASK_NAME = "wsupload.callback"
"""The task that delivers a job's result to its callback URL."""
SCAN_TASK_NAME = "wsupload.scan"
"""The task Celery beat sends for a scheduled batch run."""
MARKER_TASK_NAME = "wsupload.marker"
"""RabbitMQ broker: the sweep's marker, sent through a queue to learn that its head has passed a point."""
