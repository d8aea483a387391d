"""Prometheus metrics: the worker's (``WSUPLOAD_METRICS_PORT``) and the queue-depth exporter (``wsupload metrics``).

``WorkerMetrics`` is the ``tasks.observe.telemetry`` sink that turns what the job code
reports into counters, histograms and a gauge; ``QueueDepth`` is a collector
that reads the length of the interactive and bulk queues from the broker at
scrape time. A worker serves both, with its process's own metrics, from a
daemon thread started on ``worker_ready`` and stopped on ``worker_shutdown``
(``WorkerEndpoint``, a ``worker.background`` loop);
``wsupload metrics`` serves the queue depths alone, for a monitoring host that
holds no API key. Both also say which queues are paused (``PausedQueues``,
``wsupload_queue_paused``).

One process, one registry: the worker runs Celery's threads pool, so every job
reports into this process's metrics. With ``--processes N`` (``worker.parent``), the
children record in prometheus_client's multi-process mode (``PROMETHEUS_MULTIPROC_DIR``,
a directory of the parent's; ``RECORD_ONLY``: no endpoint of their own) and the parent
serves their sum (``serve_children``): one scrape shows the whole worker.

Labels are bounded: an outcome, an error kind (``tasks.observe.telemetry`` maps anything
else to ``other``), a queue name from the settings, a lease event. Never a job id,
path, URL or secret. Serving metrics must never stop or block the worker: a
port that cannot be bound is logged and the worker runs without metrics, and a
Redis that does not answer within ``QUEUE_DEPTH_TIMEOUT`` leaves the queue depth
out of that scrape (``wsupload_queue_depth_up`` 0) instead of failing it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from wsupload.config.settings import Settings
from wsupload.tasks.observe import telemetry
from wsupload.tasks.store import pauses
from wsupload.tasks.store.results import FAILED, SUCCEEDED
from wsupload.worker.background import BackgroundLoop, FailureStreak
from wsupload.worker.worker_records import connect

log = logging.getLogger(__name__)

RECORD_ONLY = False
"""Set in a child of ``--processes N`` (``--metrics-to-parent``): metrics go to the multi-process files, unserved."""

QUEUE_DEPTH_TIMEOUT = 1.0
"""Seconds a scrape waits for Redis to give the queue lengths (Prometheus's own scrape timeout is 10 s)."""

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
"""One delivery of a job: from a refused file (milliseconds) to a large upload (minutes)."""
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 24 * 3600)
"""Enqueued to finished: queueing included, so a bulk backlog's hours fit."""
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
"""A fleet slot: nothing when the fleet is idle, a Retry-After when it was throttled."""


class WorkerMetrics:
    """The worker's metrics, in ``registry`` (the ``tasks.observe.telemetry.Sink`` the worker installs)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Counter(
            "wsupload_jobs",
            "Jobs ended by this worker, by outcome and error kind (kind=none for succeeded).",
            ["outcome", "kind"],
            registry=registry,
        )
        self.attempts = Counter(
            "wsupload_http_attempts", "Upload requests sent to the API (each attempt).", registry=registry
        )
        self.retries = Counter(
            "wsupload_retries",
            "Transient errors waited out before trying again, by error kind.",
            ["kind"],
            registry=registry,
        )
        self.bytes = Counter("wsupload_bytes_uploaded", "Bytes of the files uploaded successfully.", registry=registry)
        self.uploads = Counter(
            "wsupload_uploads",
            "Files uploaded successfully, by flow: binary (the binary endpoint) or direct (a ticket, then a PUT).",
            ["flow"],
            registry=registry,
        )
        self.lease_events = Counter(
            "wsupload_lease_recoveries",
            "Jobs moved between deliveries: lease_lost (this worker found a job's lease gone), handed_back"
            " (still running after the stop grace, back to its queue), resumed (this worker took up a job an"
            " earlier delivery left unfinished), acked_early (RabbitMQ: a job held half the consumer_timeout,"
            " or hung, now owed in Redis), swept_back (a sweep published a job again: in no queue and no one's"
            " hands, owed past its deadline, or dropped by RabbitMQ).",
            ["event"],
            registry=registry,
        )
        self.dedup_hits = Counter(
            "wsupload_dedup_hits", "Jobs that reused an earlier upload of the same bytes.", registry=registry
        )
        self.duration = Histogram(
            "wsupload_upload_duration_seconds",
            "Time one delivery of a job took on this worker (opening, retries and waits included), by outcome.",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "wsupload_job_latency_seconds",
            "From the job's created_at (enqueued) to its finished_at, by outcome.",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.limiter_waits = Histogram(
            "wsupload_fleet_limiter_wait_seconds",
            "Time an upload request waited for a slot under the fleet's rate or concurrency limit.",
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.running = Gauge(
            "wsupload_jobs_in_flight",
            "Jobs this worker is running now.",
            registry=registry,
            multiprocess_mode="livesum",  # children of --processes N: the live ones, summed
        )
        # Every known series from the start at 0, so increase() sees a kind's first job.
        self.jobs.labels(SUCCEEDED, telemetry.NONE)
        for kind in sorted(telemetry.FAILURE_KINDS):
            self.jobs.labels(FAILED, kind)
        for kind in sorted(telemetry.TRANSIENT_KINDS):
            self.retries.labels(kind)
        for event in telemetry.LEASE_EVENTS:
            self.lease_events.labels(event)
        for flow in telemetry.FLOWS:
            self.uploads.labels(flow)
        for outcome in telemetry.OUTCOMES:
            self.duration.labels(outcome)
            self.latency.labels(outcome)

    def job_ended(self, outcome: str, kind: str, duration_s: float | None, latency_s: float | None) -> None:
        self.jobs.labels(outcome, kind).inc()
        if duration_s is not None:
            self.duration.labels(outcome).observe(duration_s)
        if latency_s is not None:
            self.latency.labels(outcome).observe(latency_s)

    def attempt(self) -> None:
        self.attempts.inc()

    def retry(self, kind: str) -> None:
        self.retries.labels(kind).inc()

    def uploaded(self, nbytes: int, flow: str) -> None:
        self.bytes.inc(max(0, nbytes))
        self.uploads.labels(flow).inc()

    def dedup_hit(self) -> None:
        self.dedup_hits.inc()

    def limiter_wait(self, seconds: float) -> None:
        self.limiter_waits.observe(max(0.0, seconds))

    def lease_event(self, event: str) -> None:
        self.lease_events.labels(event).inc()

    def in_flight(self, delta: int) -> None:
        self.running.inc(delta)


class QueueDepth:
    """``wsupload_queue_depth{queue}``: LLEN of each queue, read from the broker at scrape time.

    One pipelined round trip per scrape, with a short timeout and no retry; a
    failure gives no depth sample (and ``wsupload_queue_depth_up`` 0), never an
    exception, and is logged once per streak.
    """

    def __init__(self, client: redis.Redis, queues: Sequence[str]) -> None:
        self.client = client
        self.queues = tuple(queues)
        self._streak = streak()

    def lengths(self) -> list[int]:
        pipe = self.client.pipeline(transaction=False)
        for queue in self.queues:
            pipe.llen(queue)
        return [int(n) for n in pipe.execute()]

    def describe(self) -> Iterable[Metric]:
        # Declared without samples, so registering does not read Redis.
        return self._families()

    def collect(self) -> Iterable[Metric]:
        depth, up = self._families()
        try:
            lengths = self.lengths()
        except Exception as exc:
            self._streak.failed(exc)
            up.add_metric([], 0)
            return [depth, up]
        self._streak.succeeded()
        for queue, length in zip(self.queues, lengths, strict=True):
            depth.add_metric([queue], int(length))
        up.add_metric([], 1)
        return [depth, up]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("wsupload_queue_depth", "Messages waiting on each queue (LLEN).", labels=["queue"]),
            GaugeMetricFamily("wsupload_queue_depth_up", "1 if the last scrape could read the queue depths."),
        )


def streak() -> FailureStreak:
    """A scrape that cannot read the depths: one line (no traceback) per streak."""
    return FailureStreak(
        log,
        "metrics: cannot read the queue depths (%s: %s); left out until Redis answers",
        "metrics: reading the queue depths again",
        expected=(Exception,),
    )


class AmqpQueueDepth(QueueDepth):
    """On RabbitMQ: the messages ready on each queue (a passive declare each, on a connection per scrape)."""

    def __init__(self, url: str, queues: Sequence[str]) -> None:
        self.url = url
        self.queues = tuple(queues)
        self._streak = streak()

    def lengths(self) -> list[int]:
        from wsupload.tasks.wire.amqp_publisher import ready_messages

        return ready_messages(self.url, self.queues, timeout=QUEUE_DEPTH_TIMEOUT)


def queue_depth(settings: Settings) -> QueueDepth:
    """The collector for this deployment's queues (interactive first), on the broker's Redis (or RabbitMQ)."""
    if settings.broker_is_amqp and settings.broker_url:
        return AmqpQueueDepth(settings.broker_url, [settings.queue, settings.bulk_queue])
    client = connect(settings.effective_broker_url, timeout=QUEUE_DEPTH_TIMEOUT)
    return QueueDepth(client, [settings.queue, settings.bulk_queue])


class PausedQueues:
    """``wsupload_queue_paused{queue}``: 1 while the queue is paused fleet-wide (``wsupload pause``), else 0.

    Read from the results Redis at scrape time (one ``SMEMBERS``); a failure gives no sample, logged once per streak.
    """

    def __init__(self, client: redis.Redis, queues: Sequence[str]) -> None:
        self.client = client
        self.queues = tuple(queues)
        self._streak = FailureStreak(
            log,
            "metrics: cannot read the paused queues (%s: %s); left out until Redis answers",
            "metrics: reading the paused queues again",
            expected=(Exception,),
        )

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        try:
            paused = pauses.paused(self.client)
        except Exception as exc:
            self._streak.failed(exc)
            return [family]
        self._streak.succeeded()
        for queue in self.queues:
            family.add_metric([queue], 1 if queue in paused else 0)
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "wsupload_queue_paused", "1 while the queue is paused fleet-wide (wsupload pause).", labels=["queue"]
        )


def paused_queues(settings: Settings) -> PausedQueues:
    """The collector of this deployment's paused queues, on the results Redis (``REDIS_URL``)."""
    return PausedQueues(connect(settings.redis_url, timeout=QUEUE_DEPTH_TIMEOUT), [settings.queue, settings.bulk_queue])


def process_collectors(registry: CollectorRegistry) -> None:
    """The process's CPU, memory, file descriptors, GC and Python version, as prometheus_client names them."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


@dataclass
class Endpoint:
    """A ``/metrics`` HTTP server running in a daemon thread."""

    server: Any
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(registry: CollectorRegistry, port: int, addr: str) -> Endpoint:
    """Serve ``registry`` at ``http://addr:port/metrics``; ``OSError`` if the port cannot be bound."""
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return Endpoint(server, thread)


class WorkerEndpoint(BackgroundLoop):
    """The worker's ``/metrics``, with its sink installed, from ``worker_ready`` to ``worker_shutdown``.

    Nothing to tick: the HTTP server answers from a thread of its own, and a scrape
    that cannot read the queue depths is logged by ``QueueDepth``.
    """

    name = "metrics"
    logger = log
    not_started = "metrics: not started; this worker runs without metrics"

    def __init__(self, endpoint: Endpoint | None, sink: WorkerMetrics) -> None:
        super().__init__(interval=None)
        self.endpoint = endpoint
        self.sink = sink

    def on_start(self) -> None:
        telemetry.install(self.sink)

    def on_stop(self) -> None:
        telemetry.install(None)
        if self.endpoint is not None:
            self.endpoint.stop()

    @classmethod
    def for_worker(cls, consumer: Any, settings: Settings) -> WorkerEndpoint | None:
        """Serving already; None when metrics are off or the port cannot be bound (logged: the worker runs on)."""
        if settings.metrics_port is None:
            return None
        registry = CollectorRegistry()
        sink = WorkerMetrics(registry)
        if RECORD_ONLY:
            log.info("metrics: recorded for the parent's endpoint (%s)", os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
            return cls(None, sink)
        registry.register(queue_depth(settings))
        registry.register(paused_queues(settings))
        process_collectors(registry)
        try:
            endpoint = serve(registry, settings.metrics_port, settings.metrics_addr)
        except OSError as exc:
            log.error(
                "metrics: cannot listen on %s:%d (%s); this worker runs without metrics",
                settings.metrics_addr,
                settings.metrics_port,
                exc.strerror or exc,
            )
            return None
        log.info("metrics: http://%s:%d/metrics", settings.metrics_addr, endpoint.port)
        return cls(endpoint, sink)


PROCESS_SUMS = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
)
"""The process metrics a parent reports as the sum over itself and its live children."""


class ChildrenProcesses:
    """A parent's ``process_*``: CPU, memory and file descriptors of it and its live children, summed."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids

    def collect(self) -> Iterable[Metric]:
        totals: dict[str, Metric] = {}
        for pid in [os.getpid(), *self.pids()]:
            for family in ProcessCollector(pid=lambda pid=pid: str(pid), registry=None).collect():  # type: ignore[misc]
                for sample in family.samples:
                    if sample.name not in PROCESS_SUMS:
                        continue
                    total = totals.get(sample.name)
                    if total is None:
                        total = totals[sample.name] = Metric(family.name, family.documentation, family.type)
                        total.add_sample(sample.name, {}, 0.0)
                    old = total.samples[0]
                    total.samples[0] = old._replace(value=old.value + sample.value)
        return list(totals.values())


def serve_children(settings: Settings, directory: str, pids: Callable[[], list[int]]) -> Endpoint:
    """The parent's ``/metrics``: every child's metrics added up (multi-process mode), the queue depths, the CPU.

    ``OSError`` if the port cannot be bound.
    """
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    registry.register(queue_depth(settings))
    registry.register(ChildrenProcesses(pids))
    PlatformCollector(registry=registry)
    assert settings.metrics_port is not None
    return serve(registry, settings.metrics_port, settings.metrics_addr)


WorkerEndpoint.follow_worker()
