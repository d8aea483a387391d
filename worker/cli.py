"""The ``wsupload`` command: worker, enqueue, status, wait, sandbox, demo.

Exit codes: 0 success; 1 a job failed; 2 bad configuration, usage or an
unreachable service (one readable line, no traceback); 3 ``wait`` timed out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import redis

from config.errors import ConfigError, WsuploadError
from config.settings import Settings, parse_duration, parse_size
from tasks import results
from tasks.results import JobDoc

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_TIMEOUT = 0, 1, 2, 3


def safe_url(url: str) -> str:
    """A URL fit to print: any password replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def describe(doc: JobDoc | None, job_id: str) -> str:
    if doc is None:
        return f"{job_id}  unknown (never enqueued, or its result expired)"
    line = f"{job_id}  {doc['status']:<9}  attempts={doc['attempts']}  {doc['source']}"
    if doc["status"] == results.SUCCEEDED:
        line += f"\n    -> {doc['result']['download_url']} (expires {doc['expires_at']})"
    elif doc["status"] == results.FAILED:
        error = doc["error"]
        line += f"\n    !! {error['kind']}: {error['message']}"
    elif doc.get("last_error"):
        line += f"\n    .. last error {doc['last_error']['kind']}: {doc['last_error']['message']}"
    return line


class Progress:
    """A one-line live summary on a terminal; one line per finished job otherwise."""

    def __init__(self, job_ids: Sequence[str], stream: TextIO) -> None:
        self.job_ids = list(job_ids)
        self.stream = stream
        self.tty = stream.isatty()
        self.reported: set[str] = set()

    def __call__(self, docs: list[JobDoc | None]) -> None:
        counts: dict[str, int] = {}
        for job_id, doc in zip(self.job_ids, docs, strict=True):
            status = doc["status"] if doc else "unknown"
            counts[status] = counts.get(status, 0) + 1
            if not self.tty and status in (*results.TERMINAL, "unknown") and job_id not in self.reported:
                self.reported.add(job_id)
                print(f"{job_id}  {status}", file=self.stream, flush=True)
        if self.tty:
            done = sum(counts.get(s, 0) for s in (*results.TERMINAL, "unknown"))
            detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            print(f"\r{done}/{len(self.job_ids)} done ({detail})\033[K", end="", file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.stream)


def _producer(settings: Settings) -> Any:
    from worker.producer import Producer

    return Producer(settings)


def cmd_worker(args: argparse.Namespace) -> int:
    settings = Settings.from_env(worker=True)
    from worker.app import create_app

    app = create_app(settings)
    concurrency = args.concurrency or settings.concurrency
    # Interactive first: with queue_order_strategy=priority the order is the priority.
    queues = {"interactive": [settings.queue], "bulk": [settings.bulk_queue]}.get(
        args.only, [settings.queue, settings.bulk_queue]
    )
    app.worker_main(
        [
            "worker",
            f"--loglevel={args.loglevel}",
            f"--queues={','.join(queues)}",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            f"--hostname=wsupload-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )  # exits the process when the worker stops


def cmd_enqueue(args: argparse.Namespace) -> int:
    jobs = _producer(Settings.from_env()).enqueue(args.sources)
    if args.json:
        print(json.dumps([{"job_id": j.job_id, "source": j.source} for j in jobs]))
    else:
        for job in jobs:
            print(f"{job.job_id}  {job.source}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    docs = _producer(Settings.from_env()).status(args.job_ids)
    if args.json:
        print(json.dumps(docs))
    else:
        for job_id, doc in zip(args.job_ids, docs, strict=True):
            print(describe(doc, job_id))
    return EXIT_OK


def cmd_wait(args: argparse.Namespace) -> int:
    producer = _producer(Settings.from_env())
    progress = None if args.json else Progress(args.job_ids, sys.stderr)
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


def cmd_sandbox(args: argparse.Namespace) -> int:
    from worker.sandbox import SandboxServer

    server = SandboxServer(
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        max_bytes=args.max_bytes,
        latency=args.latency,
        storage_dir=args.storage,
    )
    print(f"sandbox listening on {server.url} (API key from --api-key / WSUPLOAD_SANDBOX_API_KEY)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from worker.demo import run_demo

    return run_demo(real=args.real)


def _positive_duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsupload", description="Upload media to WaveSpeedAI through a Celery queue.")
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="run a worker (needs WAVESPEED_API_KEY)")
    worker.add_argument("--concurrency", type=int, help="pool processes (default WSUPLOAD_CONCURRENCY)")
    worker.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    worker.add_argument(
        "--only", choices=["interactive", "bulk"], help="serve one queue (default: both, interactive first)"
    )
    worker.set_defaults(handler=cmd_worker)

    enqueue = commands.add_parser("enqueue", help="enqueue uploads; prints one job id per source")
    enqueue.add_argument("--json", action="store_true", help='print [{"job_id", "source"}]')
    enqueue.add_argument("sources", nargs="+", metavar="SOURCE")
    enqueue.set_defaults(handler=cmd_enqueue)

    status = commands.add_parser("status", help="show jobs' result documents")
    status.add_argument("--json", action="store_true", help="print the list of result documents")
    status.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    status.set_defaults(handler=cmd_status)

    wait = commands.add_parser("wait", help="block until jobs finish: exit 0 all succeeded, 1 any failed, 3 timed out")
    wait.add_argument("--json", action="store_true", help="print the list of result documents")
    wait.add_argument("--timeout", type=_positive_duration, help="give up after this long (seconds, or 5m, 1h)")
    wait.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    wait.set_defaults(handler=cmd_wait)

    sandbox = commands.add_parser("sandbox", help="run a local WaveSpeed-compatible upload server")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8765)
    sandbox.add_argument("--api-key", default=os.environ.get("WSUPLOAD_SANDBOX_API_KEY", "sandbox-key"))
    sandbox.add_argument("--max-bytes", type=_size, help="answer 413 above this size")
    sandbox.add_argument("--latency", type=_positive_duration, default=0.0, help="delay before each answer")
    sandbox.add_argument("--storage", type=Path, help="keep uploads here so download_url serves them")
    sandbox.set_defaults(handler=cmd_sandbox)

    demo = commands.add_parser("demo", help="upload sample media through the queue, starting what is missing")
    demo.add_argument("--real", action="store_true", help="use the real API (WAVESPEED_API_KEY) instead of the sandbox")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print("wsupload: configuration error:\n  " + str(exc).replace("\n", "\n  "), file=sys.stderr)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        url = safe_url(os.environ.get("REDIS_URL", Settings.redis_url))
        print(f"wsupload: cannot reach Redis at {url}: {exc}", file=sys.stderr)
    except WsuploadError as exc:
        print(f"wsupload: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("wsupload: interrupted", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
