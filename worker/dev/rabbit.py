"""A RabbitMQ vhost of one's own on the machine's server: for tests and benchmarks, never a production worker.

``rabbitmqctl`` creates ``wsupload-<purpose>-<random>``, lets ``guest`` use it, and
deletes it (with every queue in it) on leaving, so runs never see each other's
queues. RabbitMQ itself is not started here: it is a service of the machine
(127.0.0.1:5672, guest/guest), like the Redis on 6379.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

HOST, PORT = "127.0.0.1", 5672


class RabbitUnavailable(RuntimeError):
    """No RabbitMQ here to make a vhost on (no rabbitmqctl, or nothing listening on the port)."""


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl`` (quietly); its output, or ``RabbitUnavailable`` saying why it failed."""
    binary = shutil.which("rabbitmqctl")
    if binary is None:
        raise RabbitUnavailable("rabbitmqctl is not installed")
    done = subprocess.run([binary, "-q", *args], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RabbitUnavailable(f"rabbitmqctl {args[0]} failed: {' '.join((done.stderr or done.stdout).split())[:200]}")
    return done.stdout


def listening(host: str = HOST, port: int = PORT) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


@contextmanager
def rabbit_vhost(purpose: str = "test") -> Iterator[str]:
    """A fresh vhost for guest; yields its ``amqp://`` URL and deletes the vhost afterwards."""
    if not listening():
        raise RabbitUnavailable(f"nothing listens on {HOST}:{PORT}")
    name = f"wsupload-{purpose}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{HOST}:{PORT}/{name}"
    finally:
        rabbitmqctl("delete_vhost", name)
