"""The Lua scripts wsupload runs in Redis: one ``.lua`` file each, in this folder, read once.

``load(name)`` is the text of ``<name>.lua``, read through ``importlib.resources`` (so
from an installed wheel too) and kept. ``script(client, name)`` registers it on a client
(redis-py's ``Script``: ``EVALSHA``, and ``SCRIPT LOAD`` then ``EVALSHA`` again on
``NOSCRIPT``); a caller makes its ``Script`` once, when it is built, and calls it
(``client=pipe`` inside a pipeline). ``lean_script`` is the same for the few scripts
every job runs (``LeanScript``). Each file starts with what it takes and
answers: KEYS, ARGV, the reply.

A script made of another one names it on a line of its own, which ``load`` replaces
with that script's text, so no piece is written twice::

    --!include fencing_save

Around it the including file writes what the piece becomes (a ``local function``
wrapped around a whole script, a shebang line above it). Unexpanded, the line is a
comment: a file is valid Lua either way.

Never loaded as a ``Script``: the scripts that kombu's own ``MULTI`` carries
(``tasks.recovery.job_index``'s, in a restore) go as ``EVAL`` with their
text, because redis-py's pipeline asks ``SCRIPT EXISTS`` before every execute that
holds a ``Script`` (``Pipeline.load_scripts``): a round trip more per delivered message.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

import redis
from redis.client import Pipeline
from redis.commands.core import Script

_INCLUDE = re.compile(r"^--!include ([a-z0-9_]+)[ \t]*$", re.MULTILINE)


@functools.cache
def load(name: str) -> str:
    """The text of ``<name>.lua`` with its ``--!include`` lines expanded."""
    text = resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda found: load(found[1]).rstrip("\n"), text)


def script(client: redis.Redis, name: str) -> Script:
    """``name``'s script registered on ``client``: make it once, call it often."""
    return client.register_script(load(name))


def lean_script(client: redis.Redis, name: str) -> Script:
    """``script``, called without redis-py's per-command wrappers (``LeanScript``): for the calls every job makes."""
    return LeanScript(client, load(name))


class LeanScript(Script):
    """redis-py's ``Script``, whose call sends its ``EVALSHA`` on a connection directly.

    redis-py 8 wraps every command in a retry closure, timing and error counters for its
    observability hooks, and a deprecation check of the arguments: about a third of a
    script call's CPU here, on the calls every job makes (its claim, its outcome, its
    message's unacked record). This call sends and parses exactly as ``Redis.execute_command``
    does, on the connection it would use; anything off that path takes redis-py's own:
    a pipeline, a ``NOSCRIPT`` (the script is loaded and sent again), and a connection
    error or timeout (the connection is closed, and redis-py's call sends it again with
    the client's retries, as its own first failure would have; a client that retries
    nothing gets the error).
    """

    def __call__(self, keys: Sequence[Any] | None = None, args: Iterable[Any] | None = None, client: Any = None) -> Any:
        client = self.registered_client if client is None else client
        if not _plain_client(type(client)):
            return super().__call__(keys, args, client)
        keys, args = keys or [], tuple(args or ())
        single = client.connection
        conn: Any = single or client.connection_pool.get_connection()
        if single is not None:
            client.single_connection_lock.acquire()
        try:
            conn.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
            return client.parse_response(conn, "EVALSHA")
        except redis.exceptions.NoScriptError:
            pass  # a new master (a failover), or SCRIPT FLUSH: redis-py's call loads it
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()  # as redis-py's own first failure does; its retries follow
            if conn.retry.get_retries() == 0:
                raise  # a client that retries nothing: nor does this
        finally:
            try:
                if conn.should_reconnect():  # redis-py's maintenance notifications asked for it
                    conn.disconnect()
                    conn.connect()
            finally:
                if single is not None:
                    client.single_connection_lock.release()
                else:
                    client.connection_pool.release(conn)
        return super().__call__(keys, args, client)


_PLAIN: dict[type, bool] = {}


def _plain_client(cls: type) -> bool:
    """Whether ``cls`` is a client ``LeanScript`` sends on itself: a ``redis.Redis``, not a pipeline.

    Asked once per class: redis-py 8's client classes answer ``isinstance`` through
    ``typing.Protocol``'s check, tens of microseconds a time.
    """
    plain = _PLAIN.get(cls)
    if plain is None:
        plain = _PLAIN[cls] = issubclass(cls, redis.Redis) and not issubclass(cls, Pipeline)
    return plain
