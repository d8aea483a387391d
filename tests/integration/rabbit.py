"""The RabbitMQ on 127.0.0.1:5672 (guest/guest), in a vhost of a test's own, driven through ``rabbitmqctl``.

Each vhost is ``wsupload-test-<uuid>``, made with ``add_vhost`` and ``set_permissions``
and removed with ``delete_vhost`` (its queues and messages with it), so runs never
see each other's queues. ``consumer_timeout`` reads and sets the server-wide
``consumer_timeout`` (RabbitMQ 3.10 has no per-queue one), for the tests of
``worker.amqp_leases`` to restore in a ``finally``.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator

HOST, PORT = "127.0.0.1", 5672
USER = PASSWORD = "guest"
CTL_TIMEOUT = 60


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
    ctl = shutil.which("rabbitmqctl") or "rabbitmqctl"
    done = subprocess.run([ctl, *args], capture_output=True, text=True, timeout=CTL_TIMEOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {(done.stderr or done.stdout).strip()[-300:]}")
    return done.stdout


def url_for(vhost: str, port: int = PORT) -> str:
    return f"amqp://{USER}:{PASSWORD}@{HOST}:{port}/{vhost}"


@contextlib.contextmanager
def vhost() -> Iterator[str]:
    """A fresh vhost's AMQP URL; the vhost is deleted afterwards."""
    name = f"wsupload-test-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, USER, ".*", ".*", ".*")
        yield url_for(name)
    finally:
        rabbitmqctl("delete_vhost", name)


def revoke(url: str) -> None:
    """guest may no longer write to the vhost of ``url`` (publishing there is refused)."""
    rabbitmqctl("set_permissions", "-p", url.rsplit("/", 1)[1], USER, ".*", "", ".*")


def grant(url: str) -> None:
    rabbitmqctl("set_permissions", "-p", url.rsplit("/", 1)[1], USER, ".*", ".*", ".*")


def consumer_timeout() -> str:
    """The server's consumer_timeout as Erlang prints ``application:get_env`` (e.g. ``{ok,1800000}``)."""
    return rabbitmqctl("eval", "application:get_env(rabbit, consumer_timeout).").strip()


def set_consumer_timeout(milliseconds: int) -> None:
    rabbitmqctl("eval", f"application:set_env(rabbit, consumer_timeout, {milliseconds}).")


def restore_consumer_timeout(before: str) -> None:
    """Put back what ``consumer_timeout()`` read (``undefined``: unset it)."""
    if before.startswith("{ok,") and before.endswith("}"):
        set_consumer_timeout(int(before[4:-1]))
    else:
        rabbitmqctl("eval", "application:unset_env(rabbit, consumer_timeout).")
