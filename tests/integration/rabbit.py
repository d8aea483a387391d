"""The RabbitMQ on 127.0.0.1:5672 (guest/guest), in a vhost of one's own: for tests and benchmarks.

``rabbitmqctl`` creates ``wsupload-<purpose>-<random>``, lets ``guest`` use it, and
deletes it (with every queue and message in it) on leaving, so runs never see each
other's queues. RabbitMQ itself is not started here: it is a service of the machine,
like the Redis on 6379. ``short_consumer_timeout`` shortens the server-wide
``consumer_timeout`` (RabbitMQ 3.10 has no per-queue one) for the workers of the
tests of ``worker.amqp_leases``, and restores it.

A test fixture, not the runtime: it lives under ``tests/`` so the wheel does not ship
it (``benchmarks/brokers.py`` imports it from here too).

A channel takes the ``consumer_timeout`` in force when it opens, and keeps it. A
worker started on RabbitMQ while it is short would have its deliveries taken back
after seconds, so workers start inside ``opening_channels`` (shared) and
``short_consumer_timeout`` waits for those in progress and holds off new ones
(exclusive) while its own workers start, through a lock file every run on this
machine shares, as they share the server: parallel tests (pytest-xdist), the
RabbitMQ phase of ``make test`` and other checkouts' runs. It also keeps two changes
from overlapping, so each restores what the server had, not the other's short value.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = [
    "HOST",
    "PASSWORD",
    "PORT",
    "USER",
    "RabbitUnavailable",
    "rabbit_vhost",
    "rabbitmqctl",
    "unavailable_reason",
    "url_for",
    "vhost",
]

HOST, PORT = "127.0.0.1", 5672
USER = PASSWORD = "guest"  # the machine's RabbitMQ login, for tests and benchmarks only
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


@contextlib.contextmanager
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


vhost = rabbit_vhost
"""A fresh vhost's AMQP URL; the vhost is deleted afterwards."""


def unacknowledged(url: str) -> list[int]:
    """The unacknowledged message count of every channel in the vhost of ``url`` that holds any.

    ``list_channels`` lists every channel on the server, whatever ``-p`` says: the vhost column picks ours.
    """
    vhost = url.rsplit("/", 1)[1]
    out = rabbitmqctl("list_channels", "-q", "--no-table-headers", "vhost", "messages_unacknowledged")
    rows = (line.rsplit("\t", 1) for line in out.splitlines() if "\t" in line)
    return [int(count) for name, count in rows if name == vhost and count.isdigit() and int(count)]


def server_env(key: str) -> str:
    """A ``rabbit`` application setting as Erlang prints ``application:get_env`` (e.g. ``{ok,1800000}``)."""
    return rabbitmqctl("eval", f"application:get_env(rabbit, {key}).").strip()


def set_server_env(key: str, value: int) -> None:
    rabbitmqctl("eval", f"application:set_env(rabbit, {key}, {value}).")


def restore_server_env(key: str, before: str) -> None:
    """Put back what ``server_env`` read (``undefined``: unset it)."""
    if before.startswith("{ok,") and before.endswith("}"):
        set_server_env(key, int(before[4:-1]))
    else:
        rabbitmqctl("eval", f"application:unset_env(rabbit, {key}).")


@contextlib.contextmanager
def short_consumer_timeout(milliseconds: int) -> Iterator[None]:
    """The server's consumer_timeout set to ``milliseconds`` for the channels opened meanwhile, restored after.

    A channel keeps the value in force when it opened: start the workers that are to have
    it inside, and leave. Meanwhile no other worker starts on RabbitMQ
    (``opening_channels``). Use it inside ``fast_channel_ticks``, or the timeout fires up
    to a minute late.
    """
    with _settings_lock(exclusive=True):
        before = server_env("consumer_timeout")
        try:
            set_server_env("consumer_timeout", milliseconds)
            yield
        finally:
            restore_server_env("consumer_timeout", before)


@contextlib.contextmanager
def fast_channel_ticks() -> Iterator[None]:
    """Every channel checks its deliveries' age each second, restored after.

    A channel checks on its tick (``channel_tick_interval``, 60 s by default, read at
    each tick). Harmless to other channels: a 30-minute timeout still takes 30 minutes.
    The lock keeps two changes from overlapping, so each restores what the server had.
    """
    with _exclusive(_LOCKS / "wsupload-rabbitmq-ticks.lock"):
        before = server_env("channel_tick_interval")
        try:
            set_server_env("channel_tick_interval", 1000)
            yield
        finally:
            restore_server_env("channel_tick_interval", before)


@contextlib.contextmanager
def opening_channels(env: Mapping[str, str]) -> Iterator[None]:
    """Around starting workers with ``env``: on RabbitMQ, not while ``short_consumer_timeout`` is in force."""
    if not env.get("WSUPLOAD_BROKER_URL", "").startswith("amqp"):
        yield
        return
    with _settings_lock(exclusive=False):
        yield


_LOCKS = Path(tempfile.gettempdir())


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    held = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield
    finally:
        os.close(held)


_held: list[bool] = []
"""This process's holds (True: exclusive), innermost last: one inside another is covered by the outer one."""


@contextlib.contextmanager
def _settings_lock(*, exclusive: bool) -> Iterator[None]:
    """A readers-writer lock on RabbitMQ's server-wide settings, across processes (flock).

    A writer first takes the gate, which new readers pass through, so readers starting
    one after another cannot keep it waiting.
    """
    if _held:
        if exclusive and not any(_held):
            raise RuntimeError("short_consumer_timeout inside opening_channels would wait for itself")
        _held.append(exclusive)
        try:
            yield
        finally:
            _held.pop()
        return
    gate = os.open(_LOCKS / "wsupload-rabbitmq-settings.gate", os.O_RDWR | os.O_CREAT, 0o666)
    lock = os.open(_LOCKS / "wsupload-rabbitmq-settings.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if not exclusive:
            fcntl.flock(gate, fcntl.LOCK_UN)
        _held.append(exclusive)
        try:
            yield
        finally:
            _held.pop()
    finally:
        os.close(lock)  # closing the descriptors releases the locks
        os.close(gate)
