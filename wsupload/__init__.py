"""wsupload: upload media to WaveSpeedAI through a Celery queue.

The producer's public face, one import away::

    from wsupload import Producer, Settings

    producer = Producer(Settings.from_env())  # REDIS_URL; never the API key
    jobs = producer.enqueue(["/srv/media/cat.png"])
    outcome = producer.wait([job.job_id for job in jobs], timeout=60)

From asyncio (FastAPI, Starlette, aiohttp), ``AsyncProducer`` is its twin::

    async with AsyncProducer(Settings.from_env()) as producer:
        jobs = await producer.enqueue(["/srv/media/cat.png"])
        outcome = await producer.wait([job.job_id for job in jobs], timeout=60)

Every error wsupload raises on purpose is in ``wsupload.errors``, drawn there as one
tree. ``wsupload.__version__`` is the installed distribution's version.

The subpackages (``wsupload.config``, ``wsupload.tasks``, ``wsupload.worker``) are the
repository's ``config/``, ``tasks/`` and ``worker/`` folders; their layout is not part
of the public face. Names load on first use, so ``import wsupload`` stays cheap for a
web backend that only needs the errors or the settings.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    __version__: str
    from wsupload.config.settings import Settings
    from wsupload.errors import (
        ConfigError,
        EnqueueError,
        InvalidInput,
        JobError,
        PermanentError,
        SourceNotAllowed,
        TlsRefused,
        TransientError,
        UploadError,
        WsuploadError,
    )
    from wsupload.tasks.enqueue import Batch, Job
    from wsupload.tasks.sources.checks import check_source
    from wsupload.tasks.store.cancels import CancelOutcome
    from wsupload.worker.async_producer import AsyncProducer
    from wsupload.worker.producer import Producer, WaitOutcome

_WHERE = {
    "AsyncProducer": "wsupload.worker.async_producer",
    "Producer": "wsupload.worker.producer",
    "WaitOutcome": "wsupload.worker.producer",
    "Job": "wsupload.tasks.enqueue",
    "Batch": "wsupload.tasks.enqueue",
    "CancelOutcome": "wsupload.tasks.store.cancels",
    "EnqueueError": "wsupload.errors",
    "Settings": "wsupload.config.settings",
    "WsuploadError": "wsupload.errors",
    "ConfigError": "wsupload.errors",
    "TlsRefused": "wsupload.errors",
    "UploadError": "wsupload.errors",
    "PermanentError": "wsupload.errors",
    "TransientError": "wsupload.errors",
    "InvalidInput": "wsupload.errors",
    "SourceNotAllowed": "wsupload.errors",
    "check_source": "wsupload.tasks.sources.checks",
    "JobError": "wsupload.errors",
}

__all__ = [
    "AsyncProducer",
    "Batch",
    "CancelOutcome",
    "ConfigError",
    "EnqueueError",
    "InvalidInput",
    "Job",
    "JobError",
    "PermanentError",
    "Producer",
    "Settings",
    "SourceNotAllowed",
    "TlsRefused",
    "TransientError",
    "UploadError",
    "WaitOutcome",
    "WsuploadError",
    "check_source",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        # From the installed distribution's metadata: one version, the one pyproject.toml declares.
        from importlib.metadata import version

        globals()[name] = value = version("wsupload")
        return value
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wsupload' has no attribute {name!r}")
