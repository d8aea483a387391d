"""A real Redis Sentinel group on free loopback ports: a master, a replica and three sentinels.

All three are ``redis-server`` processes in a temporary directory each: the master and
the replica (``--replicaof``) require a password, and so do the sentinels (their own).
The sentinels watch the master with a quorum of 2, call it down after ``DOWN_AFTER_MS``
and fail over within ``FAILOVER_TIMEOUT_MS``, so a test sees a promotion in seconds.
Every wait polls a condition with a deadline.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from wsupload.worker.dev.local_services import free_port, wait_until

MASTER_NAME = "wsmaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
QUORUM = 2
SENTINELS = 3


@dataclass
class Server:
    """One redis-server process (a data node or a sentinel) and its port."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last write to anyone."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class SentinelGroup:
    directory: Path
    password: str
    sentinel_password: str
    master: Server | None = None
    replica: Server | None = None
    sentinels: list[Server] = field(default_factory=list)

    @property
    def url(self) -> str:
        """wsupload's Sentinel URL for database 0 of the group's master."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://:{self.password}@{hosts}/{MASTER_NAME}/0?sentinel_password={self.sentinel_password}"

    def start(self) -> SentinelGroup:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("no redis-server binary")
        master_port = free_port()
        self.master = self._data_node(binary, "master", master_port)
        self.replica = self._data_node(binary, "replica", free_port(), "--replicaof", "127.0.0.1", str(master_port))
        for n in range(SENTINELS):
            self.sentinels.append(self._sentinel(binary, n, master_port))
        wait_until(self.ready, 60, interval=0.1, what="the replica to sync and the sentinels to see each other")
        return self

    def _data_node(self, binary: str, name: str, port: int, *extra: str) -> Server:
        where = self.directory / name
        where.mkdir(parents=True)
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(where), "--save", ""]
        args += ["--appendonly", "no", "--requirepass", self.password, "--masterauth", self.password, *extra]
        return self._spawn(args, port, where / "server.log")

    def _sentinel(self, binary: str, n: int, master_port: int) -> Server:
        where = self.directory / f"sentinel-{n}"
        where.mkdir(parents=True)
        port = free_port()
        config = where / "sentinel.conf"  # the sentinel rewrites it: it must be its own, writable
        config.write_text(
            "\n".join(
                [
                    f"port {port}",
                    "bind 127.0.0.1",
                    f"dir {where}",
                    f"requirepass {self.sentinel_password}",
                    f"sentinel sentinel-pass {self.sentinel_password}",
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} {QUORUM}",
                    f"sentinel auth-pass {MASTER_NAME} {self.password}",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {MASTER_NAME} 1",
                    "",
                ]
            )
        )
        return self._spawn([binary, str(config), "--sentinel"], port, where / "sentinel.log")

    def _spawn(self, args: list[str], port: int, log: Path) -> Server:
        with open(log, "wb") as out:
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        return Server(port, process, log)

    def sentinel_client(self, server: Server) -> redis.Redis:
        return redis.Redis(port=server.port, password=self.sentinel_password, socket_timeout=1)

    def data_client(self, server: Server) -> redis.Redis:
        return redis.Redis(port=server.port, password=self.password, socket_timeout=1)

    def master_port(self) -> int | None:
        """The master's port as a majority of the sentinels name it now, if they agree."""
        named: dict[int, int] = {}
        for sentinel in self.sentinels:
            try:
                address: Any = self.sentinel_client(sentinel).sentinel_get_master_addr_by_name(MASTER_NAME)
            except redis.RedisError:
                continue
            if address:
                named[int(address[1])] = named.get(int(address[1]), 0) + 1
        agreed = [port for port, votes in named.items() if votes >= QUORUM]
        return agreed[0] if agreed else None

    def ready(self) -> bool:
        """Each sentinel sees the master, the replica and the two other sentinels; the replica is in sync."""
        assert self.master is not None
        assert self.replica is not None
        for server in (self.master, self.replica, *self.sentinels):
            if server.process.poll() is not None:
                raise RuntimeError(f"redis-server on port {server.port} exited:\n{server.log.read_text()[-2000:]}")
        try:
            if self.data_client(self.replica).info("replication").get("master_link_status") != "up":
                return False
            for sentinel in self.sentinels:
                state: Any = self.sentinel_client(sentinel).sentinel_master(MASTER_NAME)
                if int(state["num-other-sentinels"]) < SENTINELS - 1 or int(state["num-slaves"]) < 1:
                    return False
        except redis.RedisError:
            return False
        return self.master_port() == self.master.port

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.master):
            if server is not None:
                server.stop()
