"""The Lua scripts wsupload runs in Redis: one ``.lua`` file each, in this folder, read once.

``load(name)`` is the text of ``<name>.lua``, read through ``importlib.resources`` (so
from an installed wheel too) and kept. ``script(client, name)`` registers it on a client
(redis-py's ``Script``: ``EVALSHA``, and ``SCRIPT LOAD`` then ``EVALSHA`` again on
``NOSCRIPT``); a caller makes its ``Script`` once, when it is built, and calls it
(``client=pipe`` inside a pipeline). Each file starts with what it takes and
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
from importlib import resources

import redis
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
