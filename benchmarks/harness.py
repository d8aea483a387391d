"""What every benchmark shares: result rows, media files, the sandbox, the baselines, workers, CPU notes, tables.

Imports nothing from ``benchmarks/``, so every benchmark module can import it at the
top without a cycle (``baselines.py`` is run in a process of its own, by name). It
never installs another version of the code (that is ``versions.py``) nor decides
what ``make bench`` runs (that is ``run.py``).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

from wsupload.config import Settings
from wsupload.tasks.store import keys
from wsupload.worker.dev.local_services import LocalRedis, WorkerProcess, free_port, wait_until
from wsupload.worker.producer import Producer

ROOT = Path(__file__).resolve().parents[1]
"""This checkout."""
KEY = "bench-key"
"""The API key the sandbox is started with and every uploader sends."""
MIB = 1024 * 1024
DIRECT_FLOW = {
    "WSUPLOAD_UPLOAD_FLOW": "direct",
    "WSUPLOAD_QUEUE": "bench-direct",
    "WSUPLOAD_BULK_QUEUE": "bench-direct.bulk",
}
"""A fleet of the direct flow (ticket, then PUT), on queues of its own: it can take turns with a binary fleet."""
ZERO_LATENCY_CONCURRENCY = 4
"""Threads of the worker (and of the direct pool beside it) in the zero-latency runs: CPU per job, latency."""


@dataclass
class Row:
    """One line of a results table: a figure, the baseline beside it, the target and whether it was met."""

    name: str
    value: float
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    runs: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if not self.baseline_value:
            return None
        return self.value / self.baseline_value


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(rows: list[Row]) -> list[str]:
    """The rows as a Markdown table: benchmark, result, baseline, baseline result, ratio, target, met."""
    lines = [
        "| benchmark | result | baseline | baseline result | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        base = f"{row.baseline_value:.3g} {row.unit}" if row.baseline_value is not None else ""
        ratio = f"{row.ratio:.2f}×" if row.ratio is not None else ""
        met = {True: "yes", False: "**no**", None: ""}[row.met]
        met = f"{met} ({row.note})" if met and row.note else met or row.note
        lines.append(
            f"| {row.name} | {row.value:.3g} {row.unit} | {row.baseline} | {base} | {ratio} | {row.target} | {met} |"
        )
    return lines


def clean_env() -> dict[str, str]:
    """This process's environment without wsupload's variables: a process started with it gets only what it is given.

    ``WSUPLOAD_PROCESSES=1``: a worker is one process, as each row measured it before ``--processes``
    (``processes.py`` measures ``auto`` against it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSUPLOAD_", "WAVESPEED_", "REDIS_URL"))}
    return env | {"WSUPLOAD_PROCESSES": "1"}


def make_media(path: Path, size: int) -> Path:
    """An MP4-looking file of ``size`` bytes of random content (written in 1 MiB blocks)."""
    block = os.urandom(MIB)
    with open(path, "wb") as out:
        out.write(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2")
        left = size - 24
        while left > 0:
            out.write(block[: min(left, MIB)])
            left -= MIB
    return path


@contextmanager
def process(args: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield child
    finally:
        child.terminate()
        child.wait(timeout=20)


@contextmanager
def sandbox(latency: float = 0.0) -> Iterator[str]:
    """This checkout's sandbox in its own process, answering after ``latency`` s; yields its URL."""
    port = free_port()
    # No hashing: it would make the sandbox, not the client, the bottleneck on large files.
    args = [sys.executable, "-m", "wsupload.worker.cli", "sandbox", "--port", str(port), "--api-key", KEY, "--no-hash"]
    with process([*args, "--latency", str(latency)]):
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url), 20, what="the sandbox")
        yield url


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/_sandbox/uploads", timeout=1).close()
        return True
    except OSError:
        return False


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def baseline(mode: str, url: str, *args: str) -> dict[str, float]:
    """One run of ``baselines.py MODE`` in its own process: its JSON report."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.baselines", mode, url, KEY, *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out))


class Fleet:
    """A private Redis plus ``count`` workers of this checkout against one sandbox.

    ``env``: more settings for the workers and the producer, such as
    ``WSUPLOAD_UPLOAD_FLOW``, or queues of its own so that two fleets can share the
    Redis and take turns (``name`` keeps their logs apart).
    """

    def __init__(
        self,
        redis: LocalRedis,
        url: str,
        work: Path,
        *,
        count: int,
        concurrency: int,
        env: dict[str, str] | None = None,
        name: str = "worker",
    ) -> None:
        self.env = clean_env() | {"REDIS_URL": redis.url, "WAVESPEED_BASE_URL": url, "WAVESPEED_API_KEY": KEY}
        self.env["WSUPLOAD_MAX_BYTES"] = str(2 * 1024 * MIB)
        self.env |= env or {}
        # What every job's result.method must say, so that a row is never measuring the other flow.
        self.method = {"binary": "upload", "direct": "direct"}.get(self.env.get("WSUPLOAD_UPLOAD_FLOW", "binary"))
        self.producer = Producer(Settings.from_env({k: v for k, v in self.env.items() if k != "WAVESPEED_API_KEY"}))
        self.workers = [
            WorkerProcess(env=self.env, log_path=work / f"{name}-{n}.log", concurrency=concurrency).start()
            for n in range(count)
        ]
        for worker in self.workers:
            worker.wait_ready(self.producer.app)

    def processes(self) -> list[psutil.Process]:
        """Every process of the workers: one each with the threads pool (its children, if any, too)."""
        found = []
        for worker in self.workers:
            if worker.process:
                main = psutil.Process(worker.process.pid)
                found += [main, *main.children(recursive=True)]
        return found

    def run(self, sources: list[str]) -> float:
        """Seconds from the first enqueue to the last job's success."""
        start = time.perf_counter()
        jobs = self.producer.enqueue(sources)
        outcome = self.producer.wait([j.job_id for j in jobs], timeout=3600)
        elapsed = time.perf_counter() - start
        assert outcome.all_succeeded, [d for d in outcome.docs if d and d["status"] != "succeeded"][:3]
        if self.method:
            methods = {d["result"].get("method") for d in outcome.docs if d}
            assert methods == {self.method}, f"uploaded by {methods}, not {self.method}"
        return elapsed

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and all its descendants so far."""
    parent = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in [parent, *parent.children(recursive=True)])


def busy_cores(run: Callable[[], float]) -> tuple[float, float]:
    """Run, returning its result and how many of the machine's cores were busy meanwhile."""
    psutil.cpu_percent(interval=None)
    result = run()
    return result, psutil.cpu_percent(interval=None) / 100 * (os.cpu_count() or 1)


def cpu_note(cores: float) -> str:
    """How busy the machine was; names the cause when it was saturated."""
    total = os.cpu_count() or 1
    busy = f"{cores:.1f} of {total} cores busy"
    return f"CPU-bound: {busy}" if cores >= 0.9 * total else busy


def within(predicate: Callable[[], bool], timeout: float, interval: float) -> bool:
    """Whether ``predicate`` held before ``timeout`` s passed (polled every ``interval``)."""
    try:
        return bool(wait_until(predicate, timeout, interval=interval))
    except TimeoutError:
        return False


class EndedCounter:
    """Counts the final documents published on ``wsupload:ended``, per job, from a thread of its own."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self.pubsub.subscribe(keys.ENDED_CHANNEL)
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self.pubsub.get_message(timeout=0.2)
            if message is not None:
                job = str(json.loads(message["data"]).get("job_id"))
                self.counts[job] = self.counts.get(job, 0) + 1

    def __enter__(self) -> EndedCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.pubsub.close()
        self.client.close()
