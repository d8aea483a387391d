"""The RabbitMQ on 127.0.0.1:5672 (guest/guest), in a vhost of a test's own (``worker.dev.rabbit``).

Each vhost is ``wsupload-test-<uuid>``, made with ``add_vhost`` and ``set_permissions``
and removed with ``delete_vhost`` (its queues and messages with it), so runs never
see each other's queues. ``short_consumer_timeout`` shortens the server-wide
``consumer_timeout`` (RabbitMQ 3.10 has no per-queue one) for the tests of
``worker.amqp_leases``, and restores it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from wsupload.worker.dev.rabbit import (
    HOST,
    PASSWORD,
    PORT,
    USER,
    rabbit_vhost,
    rabbitmqctl,
    unavailable_reason,
    url_for,
)

__all__ = ["HOST", "PASSWORD", "PORT", "USER", "rabbitmqctl", "unavailable_reason", "url_for", "vhost"]

vhost = rabbit_vhost
"""A fresh vhost's AMQP URL; the vhost is deleted afterwards."""


def unacknowledged(url: str) -> list[int]:
    """The unacknowledged message count of every channel in the vhost of ``url`` that holds any."""
    out = rabbitmqctl("list_channels", "-p", url.rsplit("/", 1)[1], "-q", "messages_unacknowledged")
    return [int(line) for line in out.split() if line.isdigit() and int(line)]


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
    """The server's consumer_timeout set to ``milliseconds`` for channels opened meanwhile, restored after.

    A channel checks its deliveries' age on its tick (``channel_tick_interval``, 60 s by
    default), so the tick is made one second too, or a short timeout would fire up to a
    minute late.
    """
    before = {key: server_env(key) for key in ("consumer_timeout", "channel_tick_interval")}
    try:
        set_server_env("consumer_timeout", milliseconds)
        set_server_env("channel_tick_interval", 1000)
        yield
    finally:
        for key, value in before.items():
            restore_server_env(key, value)
