"""Every benchmark, side by side with its baselines, in one run: ``make bench``.

Writes ``benchmarks/RESULTS.md`` (medians over repeated runs, ratios against the
baselines, the machine) and ``benchmarks/results.png``. Everything talks to
servers on loopback started here: a private redis-server, the sandbox in its own
process, real ``wsupload worker`` processes. Quick mode (``--quick``) shrinks
sizes and repeats to check the harness, not to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psutil

from benchmarks import overhead
from benchmarks.baselines import curl
from wsupload.config import Settings
from wsupload.config.settings import UPLOAD_TASK_NAME
from wsupload.worker.dev.local_services import LocalRedis, WorkerProcess, free_port, start_redis, wait_until
from wsupload.worker.producer import Producer

HERE = Path(__file__).resolve().parent
KEY = "bench-key"
CONCURRENCY = (32,)
"""Workers' pool sizes (and the direct baseline's threads) for the many-files runs."""
MIB = 1024 * 1024


@dataclass
class Row:
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
    port = free_port()
    # No hashing: it would make the sandbox, not the client, the bottleneck on large files.
    args = [sys.executable, "-m", "wsupload.worker.cli", "sandbox", "--port", str(port), "--api-key", KEY, "--no-hash"]
    with process([*args, "--latency", str(latency)]):
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url), 20, what="the sandbox")
        yield url


def _answers(url: str) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(url + "/_sandbox/uploads", timeout=1).close()
        return True
    except OSError:
        return False


class Fleet:
    """A private Redis plus ``count`` workers against one sandbox."""

    def __init__(self, redis: LocalRedis, url: str, work: Path, *, count: int, concurrency: int) -> None:
        self.env = overhead.clean_env() | {"REDIS_URL": redis.url, "WAVESPEED_BASE_URL": url, "WAVESPEED_API_KEY": KEY}
        self.env["WSUPLOAD_MAX_BYTES"] = str(2 * 1024 * MIB)
        self.producer = Producer(Settings.from_env({k: v for k, v in self.env.items() if k != "WAVESPEED_API_KEY"}))
        self.workers = [
            WorkerProcess(env=self.env, log_path=work / f"worker-{n}.log", concurrency=concurrency).start()
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
        return elapsed

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


def baseline(mode: str, url: str, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.baselines", mode, url, KEY, *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out))


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


def vm_hwm(pid: int) -> int:
    """Peak resident memory of a process so far (bytes), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def bench_large(redis: LocalRedis, work: Path, size: int, repeats: int) -> list[Row]:
    path = make_media(work / "large.mp4", size)
    rows = []
    with sandbox() as url:
        fleet = Fleet(redis, url, work, count=1, concurrency=1)
        try:
            (child,) = fleet.processes()  # the worker's one process: its upload threads are in it
            fleet.run([str(make_media(work / "warm.mp4", MIB))])  # the child's session and imports are warm
            idle_peak = vm_hwm(child.pid)
            # Interleaved, so curl and the queue meet the same machine conditions.
            curl_times, queue_times = [], []
            for _ in range(repeats):
                curl_times.append(curl(url, KEY, str(path)))
                queue_times.append(fleet.run([str(path)]))
            growth = vm_hwm(child.pid) - idle_peak
        finally:
            fleet.stop()
        drain_port = free_port()
        with process([sys.executable, "-m", "benchmarks.drain", str(drain_port)]):
            drain_url = f"http://127.0.0.1:{drain_port}"
            wait_until(lambda: _port_open(drain_port), 10, what="the drain server")
            drain_times = [curl(drain_url, KEY, str(path)) for _ in range(repeats)]
        example = baseline("api_example", url, str(path))  # last: its 2 GB would disturb the others
    gib = size / (1024 * MIB)
    label = f"{gib:g} GiB" if gib >= 1 else f"{size // MIB} MiB"
    rows.append(
        Row(
            f"{label} file through the queue, enqueue → succeeded",
            median(queue_times),
            "s",
            "curl -F",
            median(curl_times),
            "≤ 1.25 × curl",
            median(queue_times) <= 1.25 * median(curl_times),
            runs=queue_times,
        )
    )
    rows.append(
        Row(
            f"{label}: worker's peak RSS growth over idle",
            growth / MIB,
            "MiB",
            "the API page's example (peak RSS)",
            example["peak_rss"] / MIB,
            "< 32 MiB",
            growth < 32 * MIB,
        )
    )
    rows.append(
        Row(
            f"{label}: the API page's example, wall time",
            example["seconds"],
            "s",
            "curl -F",
            median(curl_times),
            note="baseline",
        )
    )
    rows.append(
        Row(
            f"{label}: curl to the sandbox vs curl to a drain-only server (sandbox cost)",
            median(curl_times),
            "s",
            "curl to drain",
            median(drain_times),
            note="sandbox check",
            runs=curl_times,
        )
    )
    return rows


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


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


def bench_many(redis: LocalRedis, work: Path, count: int, levels: tuple[int, ...], repeats: int) -> list[Row]:
    """Many small files at each concurrency level; two workers at the first level."""
    folder = work / "small"
    folder.mkdir(exist_ok=True)
    files = [str(make_media(folder / f"f{n:04d}.mp4", 200 * 1000)) for n in range(count)]
    rows = []
    with sandbox(latency=0.05) as url:
        sequential = baseline("api_example", url, *files[: max(20, count // 10)])
        example_rate = max(20, count // 10) / sequential["seconds"]
        first_rate = 0.0
        for concurrency in levels:
            direct = [count / baseline("direct", url, str(concurrency), *files)["seconds"] for _ in range(repeats)]
            one = Fleet(redis, url, work, count=1, concurrency=concurrency)
            try:
                runs = [busy_cores(lambda f=one: count / f.run(files)) for _ in range(repeats)]  # type: ignore[misc]
            finally:
                one.stop()
            rate, cores = median([r for r, _ in runs]), median([c for _, c in runs])
            first_rate = first_rate or rate
            rows += [
                Row(
                    f"{count} × 200 KB, 50 ms latency, one worker (concurrency {concurrency})",
                    rate,
                    "jobs/s",
                    f"direct thread pool ({concurrency} sessions)",
                    median(direct),
                    "≥ 0.8 × direct",
                    rate >= 0.8 * median(direct),
                    runs=[r for r, _ in runs],
                    note=cpu_note(cores),
                ),
                Row(
                    f"same (concurrency {concurrency}), against the API page's example (sequential)",
                    rate,
                    "jobs/s",
                    "API page's example",
                    example_rate,
                    "≥ 15 × example",
                    rate >= 15 * example_rate,
                    note=cpu_note(cores),
                ),
            ]
        two = Fleet(redis, url, work, count=2, concurrency=levels[0])
        try:
            runs = [busy_cores(lambda: count / two.run(files)) for _ in range(repeats)]
        finally:
            two.stop()
    rate, cores = median([r for r, _ in runs]), median([c for _, c in runs])
    rows.append(
        Row(
            f"same, two worker processes (2 × {levels[0]})",
            rate,
            "jobs/s",
            "one worker",
            first_rate,
            "≥ 1.7 × one worker",
            rate >= 1.7 * first_rate,
            runs=[r for r, _ in runs],
            note=cpu_note(cores),
        )
    )
    return rows


def bench_enqueue(redis: LocalRedis, count: int, repeats: int) -> list[Row]:
    settings = Settings.from_env({"REDIS_URL": redis.url, "WSUPLOAD_QUEUE": "bench-nobody-listens"})
    producer = Producer(settings)
    sources = [f"/media/{n}.png" for n in range(count)]
    fast, slow = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        producer.enqueue(sources)
        fast.append(time.perf_counter() - start)
        producer.redis.flushdb()
        start = time.perf_counter()
        with producer.app.producer_or_acquire() as publisher:
            for n, source in enumerate(sources):
                producer.app.send_task(
                    UPLOAD_TASK_NAME, args=[str(n), source], queue=settings.queue, producer=publisher
                )
        slow.append(time.perf_counter() - start)
        producer.redis.flushdb()
    return [
        Row(
            f"enqueue {count} jobs (producer API)",
            median(fast),
            "s",
            "Celery send_task per job",
            median(slow),
            "< 2 s",
            median(fast) < 2,
            runs=fast,
        )
    ]


def bench_latency(redis: LocalRedis, work: Path) -> list[Row]:
    files = [str(make_media(work / f"z{n:04d}.mp4", 10 * 1000)) for n in range(30)]
    with sandbox() as url:
        fleet = Fleet(redis, url, work, count=1, concurrency=overhead.CONCURRENCY)
        try:
            fleet.run(files[:10])  # warm
            latencies = []
            for path in files[10:]:
                (job,) = fleet.producer.enqueue([path])
                outcome = fleet.producer.wait([job.job_id], timeout=60)
                returned = time.time()
                finished = datetime.fromisoformat(outcome.docs[0]["finished_at"]).timestamp()  # type: ignore[index]
                latencies.append((returned - finished) * 1000)
        finally:
            fleet.stop()
    return [
        Row(
            "completion → caller: wait() returns after the job ends (median)",
            median(latencies),
            "ms",
            target="< 50 ms",
            met=median(latencies) < 50,
            runs=latencies,
        )
    ]


def bench_overhead(work: Path, count: int, rounds: int) -> list[Row]:
    """CPU per job: against a direct uploader, against the first-measured code (alternating), and where it goes."""
    ref = overhead.FIRST_MEASURED
    files = [str(make_media(work / f"b{n:04d}.mp4", 10 * 1000)) for n in range(count)]
    now = overhead.Version("now", sys.executable)
    before = overhead.Version("before", overhead.install(ref, work / "before")) if overhead.commit_exists(ref) else None
    with sandbox() as url:
        overhead.compare([before, now] if before else [now], files, url, KEY, work, rounds, floor_of=now)
        direct = baseline("direct", url, str(overhead.CONCURRENCY), *files)
        local = start_redis()
        try:
            upload, whole = overhead.job_split(local.url, url, KEY, files, rounds)
        finally:
            local.stop()
    now_cpu, worker = median(now.samples), median(now.worker_share)
    split = f"worker {worker:.2f} ms + producer {now_cpu - worker:.2f} ms"
    name = f"CPU per job, queue path (worker + producer): now vs commit {ref}, alternating rounds"
    return [
        Row(
            "CPU per job, queue path (worker + producer), zero-latency sandbox",
            now_cpu,
            "ms",
            "direct thread pool, CPU per upload",
            direct["cpu"] / count * 1000,
            note=split,
        ),
        Row(
            name,
            now_cpu,
            "ms",
            f"commit {ref} (first measured; its own pinned dependencies)",
            median(before.samples),
            "≤ 0.5 × before",
            now_cpu <= 0.5 * median(before.samples),
            runs=now.samples,
            note=f"{split}; where it goes: the next two rows",
        )
        if before
        else Row(name, float("nan"), "ms", note=f"commit {ref} is not in this clone (shallow?): not measured"),
        Row(
            "of which Celery + kombu: worker CPU for a message whose task returns at once",
            median(now.floor),
            "ms",
            "queue path now, worker CPU per job",
            worker,
            runs=now.floor,
            note="what no change to the task can cut",
        ),
        Row(
            "in one process, no queue: the job's own bookkeeping (whole job − upload)",
            whole - upload,
            "ms",
            "the upload itself (UploadClient)",
            upload,
            note="Redis reads/writes, validation, retry wrapper; one thread, no other load",
        ),
    ]


def bench_leases(work: Path, quick: bool) -> list[Row]:
    """Failover, memory and throughput against the visibility-timeout design, side by side (``leases.py``)."""
    from benchmarks import leases

    ref = leases.PREVIOUS_DESIGN
    if not overhead.commit_exists(ref):
        return [Row("leases vs visibility timeout", float("nan"), "", note=f"commit {ref} is not in this clone")]
    return leases.bench(work, ref, quick=quick)


def bench_bulk(work: Path, quick: bool) -> list[Row]:
    """Bulk messages beside one message per job and the direct pool, rounds alternating (``bulk.py``)."""
    from benchmarks import bulk

    count, rounds = (100, 1) if quick else (1000, 3)
    out: list[Row] = []
    for name, load in bulk.WORKLOADS.items():
        out += bulk.rows(load, count, bulk.run_workload(load, count, rounds, work / name))
    return out


def bench_brokers(redis: LocalRedis, work: Path, quick: bool) -> list[Row]:
    """Enqueue and end-to-end small uploads on each broker, rounds alternating (``brokers.py``)."""
    from benchmarks import brokers

    return brokers.bench(
        redis,
        work,
        enqueue_count=1000 if quick else 10_000,
        jobs=100 if quick else 1000,
        concurrency=32,
        rounds=1 if quick else 3,
    )


def machine() -> str:
    info = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "?")
    memory = psutil.virtual_memory().total / 1024**3
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, redis-server (private, no persistence), loopback only"
    )


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


def report(rows: list[Row], seconds: float, quick: bool) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Produced by `make bench` on {datetime.now().strftime('%Y-%m-%d %H:%M')} in {seconds:.0f} s"
        + (" (**quick mode: sizes shrunk, not for quoting**)" if quick else "")
        + ".",
        "",
        f"Machine: {machine()}.",
        "",
        *table(rows),
    ]
    lines += ["", "Individual runs (for the medians above):", ""]
    for row in rows:
        if len(row.runs) > 1:
            lines.append(f"- {row.name}: " + ", ".join(f"{v:.3g}" for v in row.runs))
    return "\n".join(lines) + "\n"


def chart(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [(row.name[:60], row.ratio) for row in rows if row.ratio is not None]
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(ratios) + 1.5))
    ax.barh([n for n, _ in ratios], [r for _, r in ratios], color="#3b7dd8")
    ax.axvline(1.0, color="grey", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("ratio to baseline (result ÷ baseline)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat: checks the harness")
    args = parser.parse_args()
    quick = args.quick
    started = time.perf_counter()
    redis = start_redis()
    steps: list[tuple[str, Callable[[Path], list[Row]]]] = [
        ("large file", lambda w: bench_large(redis, w, (64 if quick else 1024) * MIB, 1 if quick else 5)),
        ("many small files", lambda w: bench_many(redis, w, 100 if quick else 1000, CONCURRENCY, 1 if quick else 3)),
        ("enqueue", lambda w: bench_enqueue(redis, 1000 if quick else 10_000, 1 if quick else 3)),
        ("completion latency", lambda w: bench_latency(redis, w)),
        ("CPU per job", lambda w: bench_overhead(w, 100 if quick else 1000, 1 if quick else 5)),
        ("leases vs visibility timeout", lambda w: bench_leases(w, quick)),
        ("bulk messages", lambda w: bench_bulk(w, quick)),
        ("Redis broker vs RabbitMQ broker", lambda w: bench_brokers(redis, w, quick)),
    ]
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory(prefix="wsupload-bench-") as tmp:
            for name, step in steps:
                print(f"benchmark: {name} …", flush=True)
                work = Path(tmp) / name.replace(" ", "-")
                work.mkdir()
                for row in step(work):
                    rows.append(row)
                    print(f"  {row.name}: {row.value:.3g} {row.unit}", flush=True)
    finally:
        redis.stop()
    text = report(rows, time.perf_counter() - started, quick)
    (HERE / ("RESULTS.quick.md" if quick else "RESULTS.md")).write_text(text + NOTES)
    chart(rows, HERE / ("results.quick.png" if quick else "results.png"))
    print(text)


NOTES = """
## How to read this

- Every figure comes from servers on this machine's loopback started by the run: a
  private redis-server, the sandbox (`wsupload sandbox --no-hash`) in its own process,
  and real `wsupload worker` processes (threads pool). Baselines run in their own processes.
  Medians over the repeats listed under the table; the 1 GiB queue and curl runs are
  interleaved so both meet the same machine conditions.
- **The sandbox is not the bottleneck**: "curl to the sandbox vs curl to a drain-only
  server" compares it with `benchmarks/drain.py`, which only reads and discards the
  body; a ratio near 1 means the sandbox costs the upload nothing. (With SHA-256 of
  every upload switched on, as in the tests, it was ~1.9x slower than the drain on a
  64 MiB file in this session: hence `--no-hash` here.)
- "Peak RSS growth" is the worker process's `VmHWM` after the uploads minus its `VmHWM`
  after a warm-up job; the API page's example is its whole process's peak RSS.
- "Completion → caller" runs from a job's `finished_at` (written by the worker) to
  the moment `Producer.wait` returns in the caller, on one clock.
- "CPU per job" sums user+system time of every worker process and the producer over
  1,000 jobs against a zero-latency sandbox, divided by the jobs (median of the five
  "now" rounds below; the worker runs 4 threads, the direct uploader 4 threads).
- "now vs commit d3f35f6" is the before/after for that figure, measured in this run:
  `benchmarks/overhead.py` installs the commit the benchmarks first reported (with
  its own pinned dependencies) into a venv of its own, gives it its own Redis and
  worker beside this checkout's, and alternates rounds between the two. CPU time on
  this virtual machine drifts by ±15 % within minutes (the direct uploader's figure
  moved from 1.4 to 2.4 ms between two sessions of the same day), so only a same-run
  comparison can tell a cut from the drift. `python -m benchmarks.overhead --before
  REF` runs it alone against any commit.
- The failover, pause, Redis-kill, memory and pool rows ("SIGKILLed mid-upload", "SIGTERM
  mid-upload", "worker paused (SIGSTOP)", "Redis (AOF everysec) kill -9ed", "worker memory",
  "concurrency 32") come
  from `benchmarks/leases.py`: this checkout
  and the last commit of the visibility-timeout design, each installed into a venv of
  its own with its own pinned dependencies, each with its own Redis and workers. A
  failover case runs two workers (concurrency 2) and kills the one whose upload the
  sandbox is holding; waits stop at a cap ("> 120 s"). Memory is RSS summed over the
  worker's whole process tree (which counts pages prefork children share once per
  child; USS, the private pages, in the note), idle after a warm-up and peak while
  the files upload. `python -m benchmarks.leases --before REF [--only kill,grace,pause,redis-kill,rss,throughput]`
  runs them alone.
- "worker paused (SIGSTOP)": a 20-file batch through one worker (concurrency 2) whose
  first upload the sandbox holds 30 s; once the other 19 jobs have ended a second worker
  starts and the first's process group is SIGSTOPped, then SIGCONTed once the second
  worker has ended the held job and the held answer is back, so the paused worker wakes
  holding an answer for a job it lost. It counts the uploads the sandbox saw, the final
  documents published on `wsupload:ended` (one per job is right), the batch's counters
  and the refused writes the paused worker logs (`…; this delivery stops`). Before runs
  at VT 20 s (at its default VT the job would wait an hour); its paused worker, woken,
  publishes a second final document and counts the job twice.
- "Redis (AOF everysec) kill -9ed 3 times": each run is one 300-file batch (small
  files, the sandbox answering after 20 ms so uploads are in flight) through one
  worker (concurrency 4), with a fresh Redis (`appendonly yes`, `appendfsync
  everysec`) that is SIGKILLed once 30, 110 and 190 jobs have ended and restarted
  on the same port and directory; 20 runs per version (3 in quick mode), the
  versions alternating run by run. A run fails when a job has not ended 60 s after
  Redis answers again after the last kill (counted "lost", although the note says
  where those jobs' messages were: a job in kombu's unacked hash comes back after
  the visibility timeout, one in no queue nor unacked never does), or when the
  worker exits (nothing restarts it; the note says how often). The seconds row is
  the median from Redis answering again to the batch's last job ended, "> 60" for
  a failed run.
- The 10-minute upload (`python -m benchmarks.leases --only long`, or `--long`
  beside other rows) is **not** in `make bench` nor in `--quick`: it lasts over ten
  minutes. A healthy slow upload keeps bytes moving: a proxy lets its 150 MiB body
  through to the sandbox at 256 KiB/s, so neither the write timeout (10 s a block)
  nor the read timeout (120 s) ends it; a held answer (the sandbox's stall) would
  meet the read timeout in every version. Two workers, default delivery settings;
  it reports the requests the sandbox saw, the job's status and attempts, for this
  checkout, the previous design at its default VT (3600 s, hard time limit 3240 s:
  10 minutes pass there too) and at VT 300 s (hard limit 270 s: the bound that
  design puts on an upload's length).
- The broker rows ("RabbitMQ broker" against "Redis broker") come from
  `benchmarks/brokers.py` (`python -m benchmarks.brokers` runs them alone): the run's
  private Redis holds the results for both, RabbitMQ is the machine's server
  (127.0.0.1:5672) in a vhost made for the run and deleted after; rounds alternate
  between the brokers. Enqueue goes onto a queue nobody consumes; end to end is one
  worker against the zero-latency sandbox, enqueue to the last job's success.
- "a message whose task returns at once" sends `wsupload.upload` messages without a
  job id (dropped by the task after one log line): the worker's CPU for the
  message's whole trip through Celery and kombu, with no job work in it.

## What the numbers say, and what was chosen from them

- **Large files stream at the network's pace in flat memory.** The queue path's 1 GiB
  upload takes about curl's time or less (1 MiB socket blocks; curl sends smaller
  ones) while the worker's peak RSS does not move; the API page's example holds
  about twice the file in memory and takes an order of magnitude longer.
- **On this 2-core machine the many-files runs are CPU-bound, not network-bound.**
  The "cores busy" notes show it: the machine is saturated at both concurrency
  levels, so the queue path's rate is its CPU per job divided into two cores,
  while the direct uploader spends about a third of that per upload. That is why
  ≥ 0.8x the direct uploader and ≥ 15x the API page's example are not met at the
  same level, and why a second worker beside the first adds only what CPU is left,
  not 1.7x: the "when CPU is not the limit" condition of that target does not hold
  on 2 cores. The figures also move with the VM: the same code enqueued 10,000 jobs
  in 0.45 s and uploaded 1,000 files at 233 jobs/s (0.81x direct, 16 processes)
  in an earlier run on this machine kind where a direct upload cost 1.4 ms of CPU,
  against about 2.5 ms in the run above. Ratios taken in one run are comparable;
  absolute figures across runs are not.
- **Pool and concurrency defaults: the threads pool, 32 threads, one worker process
  per core.** With leases and fencing carrying the no-duplicate guarantee, no Celery
  time limit is needed, and prefork's only remaining argument went with them. Measured
  side by side with the prefork design: one process of ~70-80 MB RSS at 32 threads
  against ~1.7 GB for 33 prefork processes, idle and during uploads (the "worker
  memory" rows); a killed or stopped worker's job back in about a lease (the failover
  rows). The price is the GIL: one threads-pool process keeps ~1.3 of 2 cores busy, so
  on this machine it moves 0.65x what prefork 32 moved (157 vs 240 jobs/s in the
  "concurrency 32" rows), and two worker processes of 32 threads (the "two worker
  processes" row, 247 jobs/s) match prefork's rate at a twelfth of its memory. Hence:
  run one `wsupload worker` per core (compose: scale the worker service), each with
  `WSUPLOAD_CONCURRENCY` threads. Neither design reaches 0.8x the direct thread pool
  here: the queue path's CPU per job (3.4x a direct upload, the "CPU per job" rows) is
  the limit on 2 cores. Hence **bulk messages** (default 32 jobs a message for bulk
  calls on Redis): after the per-job cuts, with Celery's and kombu's ~1 ms per message
  shared by a message's jobs, the queue path reaches the direct pool's rate at about its
  CPU per job (the "K job(s) a message" rows, a batch of 1,000 enqueued as a user would,
  beside one message per job and the direct pool in the same rounds;
  `benchmarks/BULK.md` has the profile and the redelivery check). K = 32 was chosen over
  8 for the zero-latency CPU figure; an even split over a multiple of 32 messages keeps one
  worker's threads busy. Since the first full run with bulk messages (1.53x there), three
  cuts on that path: the upload threads keep a Redis connection each (redis-py 8's pool
  checkout added about half again to every claim and outcome call), uploads go through
  the session's adapter instead of `Session.send`, and the consumer checks a bulk
  message as a whole, leaving each job's reading to the task: 0.87x the CPU per job
  before them (same run, `benchmarks.overhead --bulk`; `BULK.md`). Then two more: a job's
  claim rides in the same Lua call as the outcome of the job before it (one Redis round
  trip a job; 0.92x), and `Producer.wait` reads a busy batch's ends together (at most one
  wake-up per 10 ms after ends came) instead of one socket read each. gevent was not
  taken: it needs monkey-patching before anything is imported and would stall every
  upload while one hashes a file for dedup. A thread costs kilobytes; the HTTP and S3
  connection pools are sized to `WSUPLOAD_CONCURRENCY`.
- **Per-job overhead: reported, cut by a quarter to a third (0.65x to 0.73x the
  first-measured code across three full runs), not halved; the cause is measured.** Cuts,
  each found with a profiler (py-spy on the worker, cProfile on the task body
  in-process), their effect measured in same-run comparisons:
  Celery's per-task log lines, the limiter's round trip when no limit is set, one
  document write, the producer's quadratic rescan (the first round of cuts);
  requests reading the whole environment twice per upload, now once at start-up,
  and the multipart body leaving in one send instead of three (0.96x on their own,
  within noise; kept, as it also stops a ~/.netrc entry from replacing the Bearer
  header), kombu building a Redis client for every message's unacked bookkeeping, and the
  producer waking twice per job and reading each document back, now once from
  `wsupload:ended` (the three together: 0.79x against the commit before them).
  Tried and dropped: hiredis (1.00x in a same-run comparison, twice, the second with
  the per-thread connections: replies here are a few bytes), gevent (needs
  monkey-patching before anything is imported and would stall every upload while one
  hashes a file for dedup), and one Lua call in
  place of the MULTI/EXEC for each document write (1.06x: no gain). Why it does not
  halve, from the last three rows: a job's CPU is Celery's and kombu's trip for the
  message (the "returns at once" row: fetch, unacked bookkeeping, hand-over to a pool
  thread and back, ack; several thread wake-ups, each dear on this VM), plus the
  upload, plus the job's own bookkeeping, which in one process without other load
  costs about as much as the upload itself: its document read, the write that
  records the attempt before the upload and the one that records the outcome, each
  a Redis round trip. Those writes are what the guarantees rest on (a file that
  kills workers stops after WSUPLOAD_MAX_ATTEMPTS because the attempt is recorded
  first; the outcome is recorded before the ack; fencing adds the claim, one round
  trip that also reads the document). Under the fleet's load
  every one of those round trips costs more than alone, which is why the queue
  path's figure is well above the sum of the rows. Halving would mean giving up one
  of those guarantees, not trimming code.
- **Enqueueing** builds Celery's message directly (`tasks/wire/encode.py`) and pipelines
  documents and messages: 7-10x faster than `send_task` per job.
- **Completion → caller** takes a few milliseconds: `wait` is woken by the job's
  final document on `wsupload:ended`, with no polling loop (at most one wake-up per
  10 ms, so the ends of a busy batch are read together).
"""


if __name__ == "__main__":
    main()
