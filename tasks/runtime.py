"""What a worker process builds once and every task uses: settings, Redis, the HTTP client, the runner.

Built lazily on first use in each process and keyed by its pid, so a forked
process never reuses its parent's sockets and no task rebuilds settings or a
connection pool per message. The worker's upload threads share one runtime: the
Redis client, the requests session and boto3's client are thread-safe, with a
connection per thread (``WSUPLOAD_CONCURRENCY``). Tests replace ``current`` (or a task module's
use of it) with their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache, cached_property

import redis

from wsupload.config.settings import Settings
from wsupload.tasks.job import JobRunner
from wsupload.tasks.store import keys
from wsupload.tasks.store.connections import redis_client
from wsupload.tasks.store.results import ResultStore
from wsupload.tasks.wavespeed.client import UploadClient


@dataclass
class Runtime:
    settings: Settings

    @cached_property
    def redis(self) -> redis.Redis:
        return redis_client(self.settings.redis_url)

    @cached_property
    def store(self) -> ResultStore:
        settings = self.settings
        # On RabbitMQ a job's terminal write also takes it out of its queue's entered set (tasks.recovery.markers).
        entered = [keys.entered(q) for q in (settings.queue, settings.bulk_queue)] if settings.broker_is_amqp else []
        return ResultStore(
            self.redis, settings.result_ttl, replica_wait=settings.replica_wait, per_thread=True, entered=entered
        )

    @cached_property
    def runner(self) -> JobRunner:
        """The job runner and its HTTP session: only processes that upload build one."""
        settings = self.settings
        assert settings.api_key is not None
        client = UploadClient(
            base_url=settings.base_url,
            api_key=settings.api_key,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            connections=settings.concurrency,
            ticket_margin=settings.direct_ticket_margin,
        )
        return JobRunner(settings=settings, store=self.store, client=client)


@cache
def _for_pid(pid: int) -> Runtime:
    return Runtime(Settings.from_env(worker=True))


def current() -> Runtime:
    """This process's runtime (a worker's: the API key is required)."""
    return _for_pid(os.getpid())
