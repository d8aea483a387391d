"""A web app over wsupload's asyncio producer (FastAPI): enqueue an upload, read it, follow it, cancel it.

Run it beside the workers with their ``REDIS_URL`` and ``WSUPLOAD_*`` settings, where their
files are seen at the same paths, and never with ``WAVESPEED_API_KEY``: a producer needs
Redis only::

    pip install 'wsupload[examples]'
    WSUPLOAD_ALLOWED_ROOTS=/srv/media WSUPLOAD_ALLOWED_BUCKETS=s3://media \\
        uvicorn fastapi_app:app --app-dir examples

    POST   /uploads {"source": "/srv/media/cat.png"}  202 {"job_id": "…"}
    GET    /uploads/{job_id}                          the job's document (404: no such job)
    GET    /uploads/{job_id}/events                   text/event-stream: the document at each change, until it ends
    DELETE /uploads/{job_id}                          {"job_id", "outcome": cancelled | ended | unknown, "status"}

A web app must not let its callers name any file the workers can read. A local path is taken
only under ``WSUPLOAD_ALLOWED_ROOTS`` (symlinks and ``..`` resolved first, as the workers
do), an ``s3://`` key only under ``WSUPLOAD_ALLOWED_BUCKETS``; with the setting unset, that
kind of source is refused. A refused source is never enqueued: the answer is 403 (outside
the allowed places) or 422 (not a source the workers would read), with ``{"detail": "…"}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse
from pydantic import BaseModel

from wsupload import AsyncProducer, EnqueueError, InvalidInput, Settings
from wsupload.tasks.sources.local_files import inside_roots, local_path
from wsupload.tasks.sources.media import require_media_kind
from wsupload.tasks.sources.object_store import bucket_allowed, parse_object_url
from wsupload.tasks.sources.opener import scheme_of


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One producer for the app's life: its Redis pool and its one pub/sub connection are shared by every request.
    async with AsyncProducer(Settings.from_env()) as producer:
        app.state.producer = producer
        yield


app = FastAPI(title="wsupload example", lifespan=lifespan)


def get_producer(request: Request) -> AsyncProducer:
    producer: AsyncProducer = request.app.state.producer
    return producer


ProducerDep = Annotated[AsyncProducer, Depends(get_producer)]


async def get_job(job_id: str, producer: ProducerDep) -> dict[str, Any]:
    """The job's document, or 404 (never enqueued, or expired)."""
    [doc] = await producer.status([job_id])
    if doc is None:
        raise HTTPException(404, f"no job {job_id!r} (never enqueued, or expired)")
    return doc


class Upload(BaseModel):
    source: str
    """An absolute path (or ``file://`` URL) under the allowed roots, or an ``s3://bucket/key``."""


def check_source(source: str, settings: Settings) -> None:
    """Refuse (HTTPException) what the workers would refuse, or what this app's callers must not name."""
    try:
        if not source.strip() or "\x00" in source:
            raise InvalidInput("the source is empty or contains a NUL character")
        scheme = scheme_of(source)
        if scheme == "s3":
            url = parse_object_url(source)
            if not settings.allowed_buckets:
                raise HTTPException(403, "this app takes no s3:// keys: WSUPLOAD_ALLOWED_BUCKETS is unset")
            if not bucket_allowed(url, settings.allowed_buckets):
                raise HTTPException(403, f"{source!r} is outside WSUPLOAD_ALLOWED_BUCKETS")
            require_media_kind(url.filename)
        elif scheme in ("", "file"):
            path = local_path(source)
            resolved = path.resolve()  # symlinks and '..' first, as the workers do
            if not settings.allowed_roots:
                raise HTTPException(403, "this app takes no local paths: WSUPLOAD_ALLOWED_ROOTS is unset")
            if not inside_roots(resolved, settings.allowed_roots):
                raise HTTPException(403, f"{source!r} is outside WSUPLOAD_ALLOWED_ROOTS")
            require_media_kind(path.name)
            if not resolved.is_file():
                raise InvalidInput(f"{source!r} is not a file")
        else:
            raise InvalidInput(f"unsupported source {source!r}: expected an absolute path, file:// or s3://")
    except InvalidInput as exc:
        raise HTTPException(422, str(exc)) from None


@app.post("/uploads", status_code=202)
async def create_upload(upload: Upload, producer: ProducerDep) -> dict[str, str]:
    # In a thread: resolving a path touches the disk, which may be a network mount.
    await asyncio.to_thread(check_source, upload.source, producer.settings)
    try:
        (job,) = await producer.enqueue([upload.source])
    except InvalidInput as exc:
        raise HTTPException(422, str(exc)) from None
    except EnqueueError as exc:
        if not exc.queued:  # nothing was queued (or, when exc.in_doubt, Redis could not say)
            raise HTTPException(503, str(exc)) from None
        (job,) = exc.jobs  # committed, its message not confirmed by RabbitMQ: the workers' sweep sends it
    return {"job_id": job.job_id}


@app.get("/uploads/{job_id}")
async def read_upload(doc: Annotated[dict[str, Any], Depends(get_job)]) -> dict[str, Any]:
    return doc


@app.get("/uploads/{job_id}/events", response_class=EventSourceResponse, dependencies=[Depends(get_job)])
async def follow_upload(job_id: str, producer: ProducerDep) -> AsyncIterator[dict[str, Any]]:
    # Each item goes out as one `data: <JSON>` event. aclosing: a client that leaves early
    # gives back its share of the producer's subscription at once.
    async with aclosing(producer.updates([job_id])) as updates:
        async for update in updates:
            yield update


@app.delete("/uploads/{job_id}")
async def cancel_upload(job_id: str, producer: ProducerDep) -> JSONResponse:
    [outcome] = await producer.cancel([job_id])
    answer = {"job_id": job_id, "outcome": outcome.outcome, "status": outcome.status}
    return JSONResponse(answer, status_code=404 if outcome.outcome == "unknown" else 200)
