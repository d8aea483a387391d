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

While Redis cannot be reached (a restart, a failover), every route answers 503 with
``Retry-After`` and ``{"detail": "…"}`` instead of failing with a traceback; an event stream
already open rides the outage out (``AsyncProducer.updates`` reconnects).

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
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wsupload import AsyncProducer, EnqueueError, InvalidInput, Settings, SourceNotAllowed, check_source


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


RETRY_AFTER = "5"
"""Seconds a 503 asks the caller to wait: about a Redis restart's."""


@app.exception_handler(RedisConnectionError)
@app.exception_handler(RedisTimeoutError)
async def redis_unreachable(request: Request, exc: Exception) -> JSONResponse:
    # An outage, not a bug: the caller may try again (other Redis errors stay 500s).
    detail = "the job store (Redis) cannot be reached just now; try again shortly"
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": RETRY_AFTER})


async def get_job(job_id: str, producer: ProducerDep) -> dict[str, Any]:
    """The job's document, or 404 (never enqueued, or expired)."""
    [doc] = await producer.status([job_id])
    if doc is None:
        raise HTTPException(404, f"no job {job_id!r} (never enqueued, or expired)")
    return doc


class Upload(BaseModel):
    source: str
    """An absolute path (or ``file://`` URL) under the allowed roots, or an ``s3://bucket/key``."""


def refuse_unless_allowed(source: str, settings: Settings) -> None:
    """An HTTP error for a source the workers would refuse, or that this app's callers must not name."""
    try:
        check_source(source, settings)  # with an allow-list unset, that kind of source is refused
    except SourceNotAllowed as exc:
        raise HTTPException(403, str(exc)) from None
    except InvalidInput as exc:
        raise HTTPException(422, str(exc)) from None


@app.post("/uploads", status_code=202)
async def create_upload(upload: Upload, producer: ProducerDep) -> dict[str, str]:
    # In a thread: resolving a path touches the disk, which may be a network mount.
    await asyncio.to_thread(refuse_unless_allowed, upload.source, producer.settings)
    try:
        (job,) = await producer.enqueue([upload.source])
    except InvalidInput as exc:
        raise HTTPException(422, str(exc)) from None
    except EnqueueError as exc:
        if not exc.queued:  # nothing was queued (or, when exc.in_doubt, Redis could not say)
            raise HTTPException(503, str(exc), headers={"Retry-After": RETRY_AFTER}) from None
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
