"""Local stand-ins for real services: a private Redis and a worker subprocess.

Used by ``wsupload demo`` and by the integration tests, never by a production
worker. A private ``redis-server`` on a free port is preferred; fakeredis's TCP
server is the fallback where no redis-server binary exists (it works, but
Celery through it was measured about 40x slower).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import redis
from celery import Celery

from wsupload.tasks.store.connections import redis_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def redis_answers(url: str) -> bool:
    try:
        return bool(redis_client(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


@dataclass
class LocalRedis:
    """A redis-server (or fakeredis) this process started and will stop."""

    url: str
    kind: str
    process: subprocess.Popen[bytes] | None = None
    _fake: Any = None
    _dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    def kill(self) -> None:
        """SIGKILL the server: no shutdown save, clients see their connections reset."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._fake is not None:
            self._fake.shutdown()
            self._fake.server_close()
        if self._dir is not None:
            self._dir.cleanup()


def start_redis(
    *,
    persistent: bool = False,
    port: int | None = None,
    directory: Path | None = None,
    extra_args: Sequence[str] = (),
) -> LocalRedis:
    """Start a private Redis on a free loopback port; ``persistent`` turns on AOF.

    ``extra_args`` go to redis-server as they are (``--maxmemory 20mb``, ``--appendfsync everysec``).
    Restart one on the same port and directory to keep its data: ``start_redis(port=…, directory=…)``.
    A free port is free when chosen, not when redis-server binds it (another test's server
    may bind it first): a port chosen here that turns out taken is replaced by another,
    ``PORT_TRIES`` times at most.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        if persistent:
            raise RuntimeError("a persistent local Redis needs the redis-server binary")
        return _start_fakeredis(port or free_port())
    for _ in range(0 if port else PORT_TRIES - 1):
        with contextlib.suppress(PortTaken):  # taken since free_port chose it: choose another
            return _start_redis_server(binary, free_port(), persistent, directory, extra_args)
    return _start_redis_server(binary, port or free_port(), persistent, directory, extra_args)


PORT_TRIES = 5


class PortTaken(RuntimeError):
    """redis-server could not have the port: it exited at start, or another server answers there."""


def _start_redis_server(
    binary: str, port: int, persistent: bool, directory: Path | None, extra_args: Sequence[str]
) -> LocalRedis:
    tmp = None
    if directory is None:
        tmp = tempfile.TemporaryDirectory(prefix="wsupload-redis-")
        directory = Path(tmp.name)
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", ""]
    args += ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
    args += list(extra_args)
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    local = LocalRedis(url=url, kind="redis-server", process=process, _dir=tmp)
    try:
        answering = wait_until(lambda: process.poll() is not None or server_pid(url), 15, what="redis-server to answer")
    except BaseException:
        local.stop()
        raise
    if process.poll() is not None:
        local.stop()
        raise PortTaken(f"redis-server on port {port} exited with status {process.returncode} (port taken?)")
    if answering != process.pid:
        local.stop()
        raise PortTaken(f"redis-server on port {port}: another server (pid {answering}) answers there")
    return local


def server_pid(url: str) -> int | None:
    """The process id of the Redis answering at ``url``, once it has loaded its data; None until then."""
    client = redis_client(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        info = client.info()  # the default sections: server (process_id) and persistence (loading)
    except (redis.RedisError, OSError):  # nothing there yet, still loading, or not a Redis
        return None
    finally:
        client.close()
    return None if int(info.get("loading", 0)) else int(info["process_id"])


def _start_fakeredis(port: int) -> LocalRedis:
    from fakeredis import TcpFakeServer

    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True).start()
    return LocalRedis(url=f"redis://127.0.0.1:{port}/0", kind="fakeredis", _fake=server)


DEMO_S3_ENV = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class LocalS3:
    """moto's S3 server in a thread: a stand-in store for the demo."""

    url: str
    client: Any
    _server: Any

    @property
    def env(self) -> dict[str, str]:
        """What a worker needs to read from it."""
        return {**DEMO_S3_ENV, "WSUPLOAD_S3_ENDPOINT_URL": self.url, "WSUPLOAD_S3_ADDRESSING_STYLE": "path"}

    def put(self, bucket: str, key: str, data: bytes) -> str:
        self.client.put_object(Bucket=bucket, Key=key, Body=data)
        return f"s3://{bucket}/{key}"

    def stop(self) -> None:
        self._server.stop()


def start_s3(bucket: str) -> LocalS3 | None:
    """A local S3 server with ``bucket`` created, or None where moto is not installed."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        return None
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=url,
        region_name=DEMO_S3_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=DEMO_S3_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DEMO_S3_ENV["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=bucket)
    return LocalS3(url=url, client=client, _server=server)


def stop_group(process: subprocess.Popen[Any], timeout: float = 20) -> None:
    """SIGTERM the group of a process started in its own session; SIGKILL it if still there after ``timeout``."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):  # the group may have exited meanwhile
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class WorkerProcess:
    """``wsupload worker`` as a child process in its own process group.

    ``processes``: ``--processes`` (None: ``WSUPLOAD_PROCESSES`` of ``env``, else its default);
    with more than one, the process is the parent and ``hostnames`` its children's node names.
    """

    env: Mapping[str, str]
    log_path: Path
    concurrency: int = 2
    loglevel: str = "info"
    processes: int | str | None = None
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        args = [sys.executable, "-m", "wsupload.worker.cli", "worker", "--concurrency", str(self.concurrency)]
        args += ["--loglevel", self.loglevel]
        args += ["--processes", str(self.processes)] if self.processes is not None else []
        self.process = subprocess.Popen(
            args, env=dict(self.env), stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def wait_ready(self, app: Celery, timeout: float = 60) -> None:
        """Until the worker answers a ping; fails early, with its log, if it exits."""

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited with status {self.process.returncode}:\n{self.log_tail()}")
            names = self.hostnames
            return len(app.control.ping(destination=names, timeout=0.5) or []) == len(names)

        try:
            wait_until(ready, timeout, interval=0.1, what="the worker to answer a ping")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log_tail()}") from None

    @property
    def hostname(self) -> str:
        """The Celery node name ``wsupload worker`` gives itself."""
        assert self.process is not None
        return f"wsupload-{self.process.pid}@{socket.gethostname()}"

    @property
    def children(self) -> int:
        """How many worker processes it runs: 1, or the children of its parent (``worker.supervisor``'s plan)."""
        from wsupload.worker import parent, supervisor

        setting = self.processes if self.processes is not None else self.env.get("WSUPLOAD_PROCESSES", "auto")
        wanted = parent.processes_wanted(supervisor.AUTO if str(setting).strip().lower() == "auto" else int(setting))
        return len(supervisor.split_concurrency(self.concurrency, wanted))

    @property
    def hostnames(self) -> list[str]:
        """The node names of its worker processes: its own (one process), else its children's."""
        assert self.process is not None
        if self.children == 1:
            return [self.hostname]
        from wsupload.worker import supervisor

        host = socket.gethostname()
        return [supervisor.child_name(self.process.pid, k, host) for k in range(1, self.children + 1)]

    def kill(self) -> None:
        """SIGKILL the whole process group: the parent and every pool child."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 20) -> None:
        if self.process is not None:
            stop_group(self.process, timeout)
        if self._log:
            self._log.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no worker log)"
