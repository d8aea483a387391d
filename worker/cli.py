"""The ``wsupload`` command: worker, enqueue, status, wait, cancel, batches, dead letters, workers, stats, health,
dev tools.

Exit codes: 0 success; 1 a job did not succeed (failed, cancelled, expired; ``health``: no fresh
heartbeat; ``cancel``: a job had already ended); 2 bad configuration, usage, an unknown job
to cancel or an unreachable service (one readable line, no traceback); 3 ``wait`` timed out.
A TLS certificate or host name that does not verify is bad configuration: the long-running
commands (worker, beat, metrics) check it before they start waiting for a broker (``worker.tls``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from wsupload.errors import ConfigError, TlsRefused, WsuploadError

if TYPE_CHECKING:
    from wsupload.config.settings import Settings
    from wsupload.worker import worker_records

# Each command imports what it needs when it runs: ``--help`` loads no redis-py, Celery or kombu,
# and ``enqueue``/``status`` load redis-py and the producer but never Celery or kombu
# (``tests/unit/test_cli_imports.py``). redis-py alone costs more to import than a whole ``--help``.

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_TIMEOUT = 0, 1, 2, 3


def safe_url(url: str) -> str:
    """A URL fit to print: any password replaced (every one of a Sentinel URL's, its options' too)."""
    from wsupload.config.redis_urls import masked

    return masked(url)


def _producer(settings: Settings) -> Any:
    from wsupload.worker.producer import Producer

    return Producer(settings)


def _check_tls(settings: Settings) -> None:
    from wsupload.worker.tls import check_at_start

    check_at_start(settings)


def cmd_worker(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from wsupload.config.settings import Settings
    from wsupload.worker import logs

    settings = Settings.from_env(worker=True)
    _check_tls(settings)
    if args.events:
        settings = replace(settings, task_events=True)
    json_logs = settings.log_format == logs.JSON
    concurrency = args.concurrency or settings.concurrency
    if args.node_name is None:  # not a child of --processes N: maybe a parent
        from wsupload.worker import parent, supervisor

        wanted = parent.processes_wanted(args.processes if args.processes is not None else settings.processes)
        shares = supervisor.split_concurrency(concurrency, wanted)
        if len(shares) > 1 or wanted > 1:
            parent.setup_logging(settings, args.loglevel)
        if len(shares) < wanted:
            parent.log.warning(
                "%d processes wanted, but WSUPLOAD_CONCURRENCY %d gives a thread to %d only: running %d",
                wanted,
                concurrency,
                len(shares),
                len(shares),
            )
        if len(shares) > 1:
            return parent.Parent(settings, shares, args.loglevel, args.only, args.events).run()
    else:
        from wsupload.worker import parent

        parent.die_with_parent(args.node_name)
    if args.metrics_to_parent:
        from wsupload.worker import metrics

        metrics.RECORD_ONLY = True
    # Deprecated variables are named as the worker starts (worker.app, for either entry point).
    from wsupload.worker.app import create_app

    app = create_app(settings)
    # Interactive first: with queue_order_strategy=priority the order is the priority.
    queues = {"interactive": [settings.queue], "bulk": [settings.bulk_queue]}.get(
        args.only, [settings.queue, settings.bulk_queue]
    )
    # celery-types declares start() as never returning; it returns the worker's exit code.
    start = cast(Callable[[list[str]], int | None], app.start)
    code = start(
        [
            # JSON logs: no banner, the one block of text Celery prints outside logging at start.
            *(["--quiet"] if json_logs else []),
            "worker",
            f"--loglevel={args.loglevel}",
            f"--queues={','.join(queues)}",
            f"--concurrency={concurrency}",
            "--pool=threads",
            f"--hostname={args.node_name or f'wsupload-{os.getpid()}@%h'}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    # Celery's exit code: 0 after SIGTERM, SIGINT or a remote shutdown (a warm stop).
    return int(code or EXIT_OK)


def cmd_beat(args: argparse.Namespace) -> int:
    import logging

    from wsupload.config.schedules import load_schedules
    from wsupload.config.settings import Settings
    from wsupload.worker import logs

    settings = Settings.from_env()
    if settings.schedules_path is None:
        raise ConfigError("WSUPLOAD_SCHEDULES: set it to a TOML file of [[schedule]] tables to run `wsupload beat`")
    schedules = load_schedules(settings.schedules_path)
    if not schedules:
        raise ConfigError(f"WSUPLOAD_SCHEDULES: {settings.schedules_path} defines no [[schedule]]")
    _check_tls(settings)
    from wsupload.worker.app import beat_schedule, create_app

    app = create_app(settings)
    app.conf.beat_schedule = beat_schedule(schedules, settings)
    json_logs = settings.log_format == logs.JSON
    for schedule in schedules:
        when = f"every {schedule.every:g} s" if schedule.every else f"cron {schedule.cron!r} (UTC)"
        line = f"schedule {schedule.name}: {schedule.source or schedule.manifest}, {when}"
        if json_logs:
            logging.getLogger(logs.CLI_LOGGER).info(line)  # a JSON line (main's setup_cli)
        else:
            print(line, flush=True)
    # JSON logs: no banner (text printed outside logging).
    app.Beat(loglevel=args.loglevel, schedule=str(settings.beat_state), quiet=json_logs).run()
    return EXIT_OK


def cmd_enqueue(args: argparse.Namespace) -> int:
    from wsupload.config.settings import Settings

    options = _job_options(args, dedup=args.dedup)
    producer = _producer(Settings.from_env())
    jobs = producer.enqueue(args.sources, bulk=args.bulk, options=options, expires_in=args.expires_in)
    if args.json:
        print(json.dumps([{"job_id": j.job_id, "source": j.source} for j in jobs]))
    else:
        for job in jobs:
            print(f"{job.job_id}  {job.source}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from wsupload.config.settings import Settings
    from wsupload.tasks.store.connections import redis_client
    from wsupload.tasks.store.results import ResultStore
    from wsupload.worker.progress import describe

    settings = Settings.from_env()
    # What Producer.status reads, without loading the producer's enqueueing half (documents only).
    docs = ResultStore(redis_client(settings.redis_url), settings.result_ttl).get_many(args.job_ids)
    if args.json:
        print(json.dumps(docs))
    else:
        for job_id, doc in zip(args.job_ids, docs, strict=True):
            print(describe(doc, job_id))
    return EXIT_OK


def cmd_wait(args: argparse.Namespace) -> int:
    from wsupload.config.settings import Settings
    from wsupload.worker.progress import JobProgress, describe

    producer = _producer(Settings.from_env())
    progress = None if args.json else JobProgress(args.job_ids, sys.stderr)
    try:
        outcome = producer.wait(args.job_ids, timeout=args.timeout, on_update=progress)
    finally:
        if progress:
            progress.close()
    if args.json:
        print(json.dumps(outcome.docs))
    else:
        for job_id, doc in zip(args.job_ids, outcome.docs, strict=True):
            print(describe(doc, job_id))
    if outcome.timed_out:
        print(f"wsupload: timed out after {args.timeout:g} s", file=sys.stderr)
        return EXIT_TIMEOUT
    return EXIT_OK if outcome.all_succeeded else EXIT_FAILED


def cmd_cancel(args: argparse.Namespace) -> int:
    """Exit 0: every job named is cancelled now; 1: one or more had already ended (left as they were);
    2: one or more are unknown."""
    from wsupload.config.settings import Settings

    outcomes = _producer(Settings.from_env()).cancel(args.job_ids)
    if args.json:
        print(json.dumps([{"job_id": o.job_id, "outcome": o.outcome, "status": o.status} for o in outcomes]))
    else:
        for outcome in outcomes:
            print(_cancel_line(outcome))
    if any(o.outcome == "unknown" for o in outcomes):
        return EXIT_ERROR
    return EXIT_OK if all(o.cancelled for o in outcomes) else EXIT_FAILED


def _cancel_line(outcome: Any) -> str:
    if outcome.cancelled:
        return f"{outcome.job_id}  cancelled"
    if outcome.outcome == "ended":
        return f"{outcome.job_id}  not cancelled: it had already ended {outcome.status}; left as it was"
    return f"{outcome.job_id}  not cancelled: unknown (never enqueued, or its result expired)"


def _cancel_batch(producer: Any, batch_id: str, as_json: bool) -> int:
    """Exit 0: one or more members were cancelled now; 1: none, every member had already ended."""
    outcomes = producer.cancel_batch(batch_id)
    ended: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.outcome == "ended":
            ended[outcome.status] = ended.get(outcome.status, 0) + 1
    cancelled = sum(1 for o in outcomes if o.cancelled)
    unknown = sum(1 for o in outcomes if o.outcome == "unknown")
    if as_json:
        print(json.dumps({"batch_id": batch_id, "cancelled": cancelled, "ended": ended, "unknown": unknown}))
    else:
        had = ", ".join(f"{n} {status}" for status, n in sorted(ended.items())) or "none"
        line = f"batch {batch_id}: {cancelled} cancelled of {len(outcomes)}; already ended, left as they were: {had}"
        print(line + (f"; {unknown} unknown (expired)" if unknown else ""))
    return EXIT_OK if cancelled else EXIT_FAILED


def _job_options(args: argparse.Namespace, dedup: bool) -> dict[str, Any]:
    from wsupload.tasks.wire.options import JobOptions

    options = JobOptions(dedup=dedup, callback_url=args.callback_url)
    JobOptions.parse(options.to_message())  # the same checks a worker makes, before anything is sent
    return options.to_message()


def cmd_ingest(args: argparse.Namespace) -> int:
    from wsupload.config.settings import Settings
    from wsupload.tasks.sources.discovery import Found, discover, read_manifest, single

    settings = Settings.from_env()
    found: list[Found] = []
    for spec in args.sources:
        found.extend(discover(spec, settings, args.glob))
    for manifest in args.manifest:
        try:
            found.extend(single(source) for source in read_manifest(manifest))
        except OSError as exc:
            raise WsuploadError(f"cannot read manifest {manifest}: {exc.strerror}") from None
    if not found:
        raise WsuploadError("nothing to ingest: no matching files, objects or manifest lines")
    producer = _producer(settings)
    # Explicit either way: a batch deduplicates unless told not to, and to_message() leaves False out.
    options = {**_job_options(args, dedup=not args.no_dedup), "dedup": not args.no_dedup}
    batch = producer.enqueue_batch(
        found, name=args.batch, bulk=not args.interactive, options=options, expires_in=args.expires_in
    )
    total_bytes = sum(item.size or 0 for item in found)
    print(
        f"batch {batch.batch_id}{f' ({batch.name})' if batch.name else ''}: {len(batch.jobs)} jobs, {total_bytes} bytes"
    )
    if not (args.wait or args.output):
        return EXIT_OK
    return _finish_batch(producer, batch.batch_id, args.timeout, args.output, args.format)


def _finish_batch(producer: Any, batch_id: str, timeout: float | None, output: Path | None, fmt: str) -> int:
    from wsupload.worker.progress import BatchProgress, InFlight

    in_flight = InFlight(producer.redis, batch_id, lambda job_id: (producer.store.get(job_id) or {}).get("batch_id"))
    progress = BatchProgress(sys.stderr, in_flight)
    try:
        info, timed_out = producer.wait_batch(batch_id, timeout=timeout, on_update=progress)
    finally:
        progress.close()
    others = "".join(f", {info[end]} {end}" for end in ("cancelled", "expired") if info.get(end))
    print(f"{info['succeeded']} succeeded, {info['failed']} failed{others} of {info['total']}")
    if output is not None:
        print(f"results: {_export(producer, batch_id, output, fmt)} rows in {output}")
    if timed_out:
        print(f"wsupload: timed out after {timeout:g} s", file=sys.stderr)
        return EXIT_TIMEOUT
    return EXIT_OK if info["succeeded"] >= info["total"] else EXIT_FAILED  # any other end: not all succeeded


def _export(producer: Any, batch_id: str, output: Path | None, fmt: str) -> int:
    """Write the batch's results manifest to ``output`` (stdout if None); returns the rows."""
    from wsupload.tasks.store.batches import export_row, write_export

    rows = (export_row(j, d) for j, d in producer.batches.docs(batch_id))
    if output is None:
        return write_export(rows, sys.stdout, fmt)
    with open(output, "w", newline="", encoding="utf-8") as out:
        return write_export(rows, out, fmt)


def cmd_batch(args: argparse.Namespace) -> int:
    from wsupload.config.settings import Settings

    producer = _producer(Settings.from_env())
    batch_id = producer.batches.resolve(args.batch)
    if batch_id is None:
        raise WsuploadError(f"no batch named or numbered {args.batch!r} (never created, or expired)")
    if args.action == "results":
        _export(producer, batch_id, args.output, args.format)
        return EXIT_OK
    if args.action == "wait":
        return _finish_batch(producer, batch_id, args.timeout, args.output, args.format)
    if args.action == "cancel":
        return _cancel_batch(producer, batch_id, args.json)
    info = producer.batches.get(batch_id)
    info = {**(info or {}), "statuses": producer.batches.status_counts(batch_id)}
    if args.json:
        print(json.dumps(info))
    else:
        counters = ("total", "done", "succeeded", "failed", "cancelled", "expired", "bytes_total", "bytes_done")
        for key in ("batch_id", "name", *counters):
            print(f"{key:<12} {info.get(key)}")
        for key in ("created_at", "started_at", "finished_at"):
            print(f"{key:<12} {info.get(key) or '-'}")
        print("statuses     " + ", ".join(f"{n} {s}" for s, n in sorted(info["statuses"].items())))
    return EXIT_OK


def cmd_dead(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from wsupload.config.settings import Settings
    from wsupload.tasks.store.connections import redis_client
    from wsupload.tasks.store.dead_letters import DEAD_KEY, DeadLetterStore

    settings = Settings.from_env()
    store = DeadLetterStore(redis_client(settings.redis_url))
    ids = None if args.all else args.ids
    if args.action in ("requeue", "purge") and not (args.all or args.ids):
        raise WsuploadError(f"dead {args.action}: name entry ids, or --all")
    if args.action == "list":
        entries = store.entries(limit=args.limit)
        if args.json:
            print(json.dumps([asdict(entry) for entry in entries]))
            return EXIT_OK
        print(f"{store.count()} message(s) in {DEAD_KEY}" + (f", newest {len(entries)} shown" if args.limit else ""))
        for entry in entries:
            where = f"queue={entry.queue or '-'}  job={entry.job_id or '-'}"
            print(f"{entry.id}  {entry.at}  {where}  {entry.raw_bytes} bytes")
            print(f"    {entry.reason}")
        return EXIT_OK
    if args.action == "requeue":
        if settings.broker_is_amqp:
            # The entries hold Redis-broker messages' form; LPUSHed onto a list, no worker would read them.
            raise WsuploadError(
                "dead requeue: not available with RabbitMQ as the broker; the entries are kept"
                " (`wsupload dead list --json` shows each message's job and source: enqueue those again)"
            )
        done, refused = store.requeue(ids, default_queue=settings.queue)
        print(f"requeued {done} message(s)")
        for entry_id in refused:
            print(f"wsupload: {entry_id} not requeued: only part of it was kept (truncated)", file=sys.stderr)
        return EXIT_OK if not refused else EXIT_FAILED
    print(f"purged {store.purge(ids)} message(s)")
    return EXIT_OK


PROBE_TIMEOUT = 2.0
"""Seconds ``workers`` and ``health`` wait for Redis: a probe answers well inside a container's healthcheck timeout."""


def _heartbeats() -> tuple[list[worker_records.WorkerRecord], list[worker_records.SupervisorRecord]]:
    """The workers' records and those of the parents of ``--processes N`` (their children's states)."""
    import redis

    from wsupload.config.settings import Settings
    from wsupload.worker import worker_records

    client = worker_records.connect(Settings.from_env().redis_url, timeout=PROBE_TIMEOUT)
    try:
        return worker_records.read_records(client), worker_records.read_supervisors(client)
    except redis.ResponseError as exc:  # unreachable is main()'s to say; this is a refusal (ACL, wrong type)
        raise WsuploadError(f"Redis refused to read the heartbeats: {exc}") from None


def cmd_pause(args: argparse.Namespace) -> int:
    """Pause (or, ``resume``, resume) a queue fleet-wide: one line saying what changed."""
    from wsupload.config.settings import Settings

    producer = _producer(Settings.from_env())
    if args.command == "pause":
        changed = producer.pause(args.queue)
        done = "paused: workers start no new job of it (running ones finish)" if changed else "was already paused"
    else:
        changed = producer.resume(args.queue)
        done = "resumed: workers take its jobs again" if changed else "was not paused"
    queue = producer.queue_named(args.queue)
    print(f"queue {queue} {done}")
    return EXIT_OK


def cmd_workers(args: argparse.Namespace) -> int:
    from wsupload.tasks.store.results import utcnow
    from wsupload.worker import worker_records

    records, parents = _heartbeats()
    if args.json:
        print(json.dumps([record.to_json() for record in records]))
    else:
        from wsupload.config.settings import Settings
        from wsupload.tasks.store import pauses

        now = utcnow()
        client = worker_records.connect(Settings.from_env().redis_url, timeout=PROBE_TIMEOUT)
        paused = frozenset(pauses.paused(client))
        print("\n".join(worker_records.render(records, now, paused) + worker_records.render_supervisors(parents, now)))
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    import socket

    from wsupload.tasks.store.results import utcnow
    from wsupload.worker import worker_records

    records, parents = _heartbeats()
    verdict = worker_records.judge_all(
        records, parents, utcnow(), args.max_age, host=socket.gethostname(), name=args.name
    )
    if verdict.healthy:
        print(verdict.message)
        return EXIT_OK
    print(f"wsupload: unhealthy: {verdict.message}", file=sys.stderr)
    return EXIT_FAILED


def cmd_metrics(args: argparse.Namespace) -> int:
    import signal
    import threading

    from wsupload.config.settings import Settings

    settings = Settings.from_env()
    port = args.port or settings.metrics_port
    if port is None:
        raise WsuploadError("metrics: give --port, or set WSUPLOAD_METRICS_PORT")
    addr = args.addr or settings.metrics_addr
    _check_tls(settings)
    from prometheus_client import CollectorRegistry

    from wsupload.worker import metrics

    registry = CollectorRegistry()
    registry.register(metrics.queue_depth(settings))
    registry.register(metrics.paused_queues(settings))
    try:
        endpoint = metrics.serve(registry, port, addr)
    except OSError as exc:
        raise WsuploadError(f"metrics: cannot listen on {addr}:{port}: {exc.strerror or exc}") from None
    queues = f"{settings.queue}, {settings.bulk_queue}"
    where = safe_url(settings.effective_broker_url)
    print(f"serving the depths of {queues} (Redis {where}) at http://{addr}:{endpoint.port}/metrics", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    endpoint.stop()
    return EXIT_OK


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is from 1 to 65535 (got {port})")
    return port


def cmd_stats(args: argparse.Namespace) -> int:
    import redis

    from wsupload.config.settings import Settings
    from wsupload.tasks.store.results import utcnow
    from wsupload.worker import stats, worker_records

    settings = Settings.from_env()
    results = worker_records.connect(settings.redis_url, timeout=PROBE_TIMEOUT)
    broker = results
    depths = None
    if settings.broker_is_amqp and settings.broker_url:
        depths = _rabbitmq_depths(settings.broker_url)
    elif not settings.broker_is_results_redis:
        broker = worker_records.connect(settings.effective_broker_url, timeout=PROBE_TIMEOUT)

    def lines() -> list[str]:
        return stats.as_lines(stats.read(settings, results, broker, utcnow(), depths), args.json)

    if args.watch is None:
        try:
            print("\n".join(lines()))
        except redis.ResponseError as exc:  # unreachable is main()'s to say; this is a refusal (ACL, wrong type)
            raise WsuploadError(f"Redis refused to read the statistics: {exc}") from None
        return EXIT_OK

    def frame() -> list[str]:
        try:
            return lines()
        except redis.RedisError as exc:  # a watch outlives an outage: it says so, and tries again
            return stats.unreachable(exc, utcnow(), args.json, args.watch)

    stats.watch(frame, sys.stdout, args.watch, as_json=args.json)
    return EXIT_OK


def _rabbitmq_depths(url: str) -> Callable[[list[str]], list[int]]:
    """Reads the messages waiting on RabbitMQ queues; a failure is one line."""

    def depths(queues: list[str]) -> list[int]:
        import amqp

        from wsupload.tasks.wire.amqp_publisher import ready_messages

        try:
            return ready_messages(url, queues, timeout=PROBE_TIMEOUT)
        except (OSError, amqp.exceptions.AMQPError) as exc:
            raise WsuploadError(f"cannot read the queue depths from RabbitMQ {safe_url(url)}: {exc}") from None

    return depths


def cmd_acl_rules(args: argparse.Namespace) -> int:
    import shlex
    from urllib.parse import unquote, urlsplit

    from wsupload.config.settings import Settings
    from wsupload.tasks.store import acl

    if args.control and args.role != "operator":
        raise WsuploadError("acl-rules: --control is for the operator role")
    settings = Settings.from_env()
    if args.role == "rabbitmq":
        vhost = unquote(urlsplit(settings.broker_url or "").path.removeprefix("/")) or "/"
        print(shlex.join(["rabbitmqctl", *acl.rabbitmq_permissions(settings).command(vhost, args.user or "wsupload")]))
        return EXIT_OK
    print(acl.setuser_line(acl.rules(args.role, settings, control=args.control), args.user or f"wsupload-{args.role}"))
    return EXIT_OK


def _dev_tool(name: str) -> Any:
    """A module of ``wsupload.worker.dev``, which production images leave out."""
    try:
        return importlib.import_module(f"wsupload.worker.dev.{name}")
    except ModuleNotFoundError:
        raise WsuploadError(
            f"`wsupload {name}` is a development tool, and this installation leaves them out (wsupload.worker.dev)"
        ) from None


def cmd_sandbox(args: argparse.Namespace) -> int:
    SandboxServer = _dev_tool("sandbox").SandboxServer

    server = SandboxServer(
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        max_bytes=args.max_bytes,
        latency=args.latency,
        read_rate=args.read_rate or 0,
        storage_dir=args.storage,
        hash_uploads=not args.no_hash,
    )
    print(f"sandbox listening on {server.url} (API key from --api-key / WSUPLOAD_SANDBOX_API_KEY)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    return int(_dev_tool("demo").run_demo(real=args.real))


def _positive_duration(text: str) -> float:
    from wsupload.config.parsers import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _interval(text: str) -> float:
    seconds = _positive_duration(text)
    if seconds < 0.1:
        raise argparse.ArgumentTypeError(f"must be at least 0.1 s (got {text!r})")
    return seconds


def _processes(text: str) -> int | str:
    from wsupload.config.parsers import parse_processes

    try:
        value = parse_processes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value != "auto" and not 1 <= int(value) <= 256:
        raise argparse.ArgumentTypeError(f"from 1 to 256, or auto (got {value})")
    return value


def _concurrency(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 512:
        raise argparse.ArgumentTypeError(f"from 1 to 512 (got {value})")
    return value


def _size(text: str) -> int:
    from wsupload.config.parsers import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    from wsupload.worker.beat_timing import MISSED_BEATS, RECORD_TTL

    parser = argparse.ArgumentParser(prog="wsupload", description="Upload media to WaveSpeedAI through a Celery queue.")
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="run a worker (needs WAVESPEED_API_KEY)")
    worker.add_argument("--concurrency", type=_concurrency, help="upload threads in all (default WSUPLOAD_CONCURRENCY)")
    worker.add_argument(
        "--processes",
        type=_processes,
        help="worker processes, each with its share of the threads: N, or auto (default WSUPLOAD_PROCESSES)",
    )
    # Given by the parent of --processes N to each child (worker.parent): not for users.
    worker.add_argument("--node-name", help=argparse.SUPPRESS)
    worker.add_argument("--metrics-to-parent", action="store_true", help=argparse.SUPPRESS)
    worker.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    worker.add_argument(
        "--only", choices=["interactive", "bulk"], help="serve one queue (default: both, interactive first)"
    )
    worker.add_argument(
        "--events", action="store_true", help="send task events for Flower (default WSUPLOAD_TASK_EVENTS)"
    )
    worker.set_defaults(handler=cmd_worker)

    beat = commands.add_parser("beat", help="run the scheduled batch runs of WSUPLOAD_SCHEDULES (Celery beat)")
    beat.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    beat.set_defaults(handler=cmd_beat)

    enqueue = commands.add_parser("enqueue", help="enqueue uploads; prints one job id per source")
    enqueue.add_argument("--json", action="store_true", help='print [{"job_id", "source"}]')
    enqueue.add_argument("--bulk", action="store_true", help="use the bulk queue (default: interactive)")
    enqueue.add_argument("--dedup", action="store_true", help="reuse an earlier upload of the same bytes")
    enqueue.add_argument("--callback-url", help="POST the result document here when the job ends")
    enqueue.add_argument(
        "--expires-in",
        type=_positive_duration,
        metavar="DURATION",
        help="end `expired`, unsent, if no attempt starts within this long (seconds, or 30s, 5m, 1h)",
    )
    enqueue.add_argument("sources", nargs="+", metavar="SOURCE")
    enqueue.set_defaults(handler=cmd_enqueue)

    status = commands.add_parser("status", help="show jobs' result documents")
    status.add_argument("--json", action="store_true", help="print the list of result documents")
    status.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    status.set_defaults(handler=cmd_status)

    wait = commands.add_parser(
        "wait",
        help="block until jobs end: exit 0 all succeeded, 1 any did not (failed, cancelled, expired), 3 timed out",
    )
    wait.add_argument("--json", action="store_true", help="print the list of result documents")
    wait.add_argument("--timeout", type=_positive_duration, help="give up after this long (seconds, or 5m, 1h)")
    wait.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    wait.set_defaults(handler=cmd_wait)

    cancel = commands.add_parser(
        "cancel", help="cancel jobs: exit 0 all cancelled now, 1 any had already ended (left as it was), 2 unknown"
    )
    cancel.add_argument("--json", action="store_true", help='print [{"job_id", "outcome", "status"}]')
    cancel.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    cancel.set_defaults(handler=cmd_cancel)

    ingest = commands.add_parser("ingest", help="enqueue a batch: files, directories, s3:// prefixes, manifests")
    ingest.add_argument("sources", nargs="*", metavar="SOURCE", help="file, directory, s3://bucket/prefix/ or key")
    ingest.add_argument("--manifest", action="append", type=Path, default=[], help="paths/keys: lines, CSV or JSONL")
    ingest.add_argument("--glob", action="append", default=[], help="only names matching (repeatable; default: media)")
    ingest.add_argument("--batch", metavar="NAME", help="a name to find the batch by later")
    ingest.add_argument("--wait", action="store_true", help="watch progress until every job ends")
    ingest.add_argument("--timeout", type=_positive_duration, help="with --wait: give up after this long")
    ingest.add_argument("--output", type=Path, help="write the results manifest here (implies --wait)")
    ingest.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    ingest.add_argument("--interactive", action="store_true", help="use the interactive queue (default: bulk)")
    ingest.add_argument("--no-dedup", action="store_true", help="upload again even if the same bytes were")
    ingest.add_argument("--callback-url", help="POST each job's result document here when it ends")
    ingest.add_argument(
        "--expires-in",
        type=_positive_duration,
        metavar="DURATION",
        help="a job not started within this long ends `expired`, unsent (seconds, or 30s, 5m, 1h)",
    )
    ingest.set_defaults(handler=cmd_ingest)

    batch = commands.add_parser("batch", help="a batch's status, results manifest, wait for it, or cancel it")
    batch.add_argument("action", choices=["status", "results", "wait", "cancel"])
    batch.add_argument("batch", metavar="BATCH", help="batch id or name")
    batch.add_argument("--json", action="store_true", help="status (or what cancel did) as JSON")
    batch.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    batch.add_argument("--output", type=Path, help="results: write here instead of stdout")
    batch.add_argument("--timeout", type=_positive_duration, help="wait: give up after this long")
    batch.set_defaults(handler=cmd_batch)

    dead = commands.add_parser("dead", help="messages the workers could not run: list, requeue or purge them")
    dead.add_argument("action", choices=["list", "requeue", "purge"])
    dead.add_argument("ids", nargs="*", metavar="ID", help="entry ids (from `dead list`)")
    dead.add_argument("--all", action="store_true", help="requeue or purge every entry")
    dead.add_argument("--limit", type=int, help="list: the newest N only")
    dead.add_argument("--json", action="store_true", help="list as JSON")
    dead.set_defaults(handler=cmd_dead)

    for name, what in (("pause", "pause a queue fleet-wide: no new job of it starts"), ("resume", "resume a queue")):
        change = commands.add_parser(name, help=f"{what} (kept in Redis, across worker restarts)")
        change.add_argument("queue", metavar="QUEUE", help="the queue's name, or interactive / bulk")
        change.set_defaults(handler=cmd_pause)

    workers = commands.add_parser("workers", help="list the live workers and the jobs each one runs")
    workers.add_argument("--json", action="store_true", help="print their heartbeat records")
    workers.set_defaults(handler=cmd_workers)

    stats = commands.add_parser(
        "stats", help="queue depths, jobs in flight, jobs ended in the last minute and hour, live workers"
    )
    stats.add_argument("--json", action="store_true", help="one JSON object (with --watch: one per line)")
    stats.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=_interval,
        metavar="SECONDS",
        help="redraw every SECONDS (default 2) until Ctrl-C",
    )
    stats.set_defaults(handler=cmd_stats)

    health = commands.add_parser(
        "health", help="exit 0 if a worker on this host beats and Redis answers, else 1 (2: Redis unreachable)"
    )
    health.add_argument("--name", help="this worker only (its Celery node name, see `wsupload workers`)")
    health.add_argument(
        "--max-age",
        type=_positive_duration,
        default=RECORD_TTL,
        help=(f"the newest beat may be this old (default {RECORD_TTL:g} s: {MISSED_BEATS} beats)"),
    )
    health.set_defaults(handler=cmd_health)

    metrics = commands.add_parser(
        "metrics", help="serve the queue depths to Prometheus (needs REDIS_URL only, never the API key)"
    )
    metrics.add_argument("--port", type=_port, help="listen here (default WSUPLOAD_METRICS_PORT)")
    metrics.add_argument("--addr", help="listen on this address (default WSUPLOAD_METRICS_ADDR, 0.0.0.0)")
    metrics.set_defaults(handler=cmd_metrics)

    acl_rules = commands.add_parser(
        "acl-rules",
        help="print a role's Redis ACL rule (ACL SETUSER …, add a password) or the RabbitMQ user's permissions",
    )
    acl_rules.add_argument("role", choices=["producer", "worker", "operator", "rabbitmq"])
    acl_rules.add_argument("--user", help="the user's name (default wsupload-ROLE; rabbitmq: wsupload)")
    acl_rules.add_argument("--control", action="store_true", help="operator: also `celery inspect` and Flower")
    acl_rules.set_defaults(handler=cmd_acl_rules)

    sandbox = commands.add_parser("sandbox", help="run a local WaveSpeed-compatible upload server")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8765)
    sandbox.add_argument("--api-key", default=os.environ.get("WSUPLOAD_SANDBOX_API_KEY", "sandbox-key"))
    sandbox.add_argument("--max-bytes", type=_size, help="answer 413 above this size")
    sandbox.add_argument("--latency", type=_positive_duration, default=0.0, help="delay before each answer")
    sandbox.add_argument("--read-rate", type=_size, help="read request bodies at this many bytes a second (e.g. 4MiB)")
    sandbox.add_argument("--storage", type=Path, help="keep uploads here so download_url serves them")
    sandbox.add_argument("--no-hash", action="store_true", help="skip SHA-256 of uploads (benchmarks: ~1 GB/s saved)")
    sandbox.set_defaults(handler=cmd_sandbox)

    demo = commands.add_parser("demo", help="upload sample media through the queue, starting what is missing")
    demo.add_argument("--real", action="store_true", help="use the real API (WAVESPEED_API_KEY) instead of the sandbox")
    demo.set_defaults(handler=cmd_demo)
    return parser


def _redis_errors(*names: str) -> tuple[type[BaseException], ...]:
    """redis-py's exception classes by name: none unless a command loaded redis-py (only then can one occur)."""
    module = sys.modules.get("redis")
    return () if module is None else tuple(getattr(module, name) for name in names)


def main(argv: Sequence[str] | None = None) -> int:
    code = _run(argv)
    if argv is None:
        # Run as the program (the console script, ``python -m``): the process ends next. What is alive now
        # moves to gc's permanent generation, so the collections of the interpreter's shutdown skip it (what
        # that saves: benchmarks/NOTES.md). A caller passing argv (a test) keeps its gc as it was.
        gc.freeze()
    return code


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if os.environ.get("WSUPLOAD_LOG_FORMAT", "").strip():  # unset or empty is text: nothing to set up
        from wsupload.worker import logs

        logs.setup_cli()  # WSUPLOAD_LOG_FORMAT=json: what commands log is JSON too (their output is not a log)
    try:
        return int(args.handler(args))
    except TlsRefused as exc:
        print(f"wsupload: {exc}", file=sys.stderr)
    except ConfigError as exc:
        print("wsupload: configuration error:\n  " + str(exc).replace("\n", "\n  "), file=sys.stderr)
    except _redis_errors("ConnectionError", "TimeoutError") as exc:
        print(_unreachable_line(exc), file=sys.stderr)
    except _redis_errors("ResponseError") as exc:  # an ACL user without the right, a wrong key type…
        print(f"wsupload: Redis refused the command: {exc}", file=sys.stderr)
    except WsuploadError as exc:
        print(f"wsupload: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("wsupload: interrupted", file=sys.stderr)
    return EXIT_ERROR


def _unreachable_line(exc: BaseException) -> str:
    from wsupload.config.settings import Settings
    from wsupload.worker import tls

    url = os.environ.get("REDIS_URL", Settings.redis_url)
    cause = tls.refusal(exc)
    if cause is not None:
        return f"wsupload: {tls.refused_line('Redis', url, cause)}"
    return f"wsupload: cannot reach Redis at {safe_url(url)}: {exc}"


if __name__ == "__main__":
    sys.exit(main())
