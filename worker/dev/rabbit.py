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
USER = PASSWORD = "guest"  # noqa: S105 - the machine's RabbitMQ login, for tests and benchmarks only
CTL_TIMEOUT = 60


class RabbitUnavailable(RuntimeError):
    """No RabbitMQ here to make a vhost on, or ``rabbitmqctl`` failed (the message says which)."""


def unavailable_reason() -> str | None:
    """Why RabbitMQ cannot be used here, or None."""
    if shutil.which("rabbitmqctl") is None:
        return "no rabbitmqctl on PATH (RabbitMQ is not installed)"
    try:
        socket.create_connection((HOST, PORT), timeout=2).close()
    except OSError as exc:
        return f"RabbitMQ does not answer on {HOST}:{PORT} ({exc})"
    return None


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl -q``; its output, or ``RabbitUnavailable`` with the end of what it said."""
    binary = shutil.which("rabbitmqctl")
    if binary is None:
        raise RabbitUnavailable("rabbitmqctl is not installed")
    done = subprocess.run([binary, "-q", *args], capture_output=True, text=True, timeout=CTL_TIMEOUT, check=False)
    if done.returncode != 0:
        raise RabbitUnavailable(f"rabbitmqctl {' '.join(args)}: {(done.stderr or done.stdout).strip()[-300:]}")
    return done.stdout


def url_for(vhost: str, port: int = PORT) -> str:
    return f"amqp://{USER}:{PASSWORD}@{HOST}:{port}/{vhost}"


@contextmanager
def rabbit_vhost(purpose: str = "test") -> Iterator[str]:
    """A fresh vhost for guest; yields its ``amqp://`` URL and deletes the vhost afterwards."""
    reason = unavailable_reason()
    if reason:
        raise RabbitUnavailable(reason)
    name = f"wsupload-{purpose}-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, USER, ".*", ".*", ".*")
        yield url_for(name)
    finally:
        rabbitmqctl("delete_vhost", name)
