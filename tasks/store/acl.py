"""Redis ACL rules for wsupload's three roles, built from the key names wsupload and kombu use.

``rules(role, settings)`` is what a role may touch: key patterns (read, or read and
write), pub/sub channels and commands; ``setuser(rules)`` is that as the arguments
of ``ACL SETUSER``, which ``wsupload acl-rules ROLE`` prints and the ACL tests apply. The
patterns come from ``keys`` (wsupload's), ``KOMBU_KEYS`` (kombu's Redis transport) and the
queue names in ``settings``; the commands of each role's Lua scripts are read from the
scripts themselves, since Redis checks a script's calls against its caller's rules. Nothing
here connects to Redis. docs/security.md explains each line.

The roles:

- ``producer``: enqueue (documents, batches, the queue lists, the sweep's line), read
  documents and batches, wait (``SUBSCRIBE`` to the ended channel), cancel.
- ``worker``: everything a worker does (jobs, leases, sweeps, heartbeats, rate limit,
  dead letters, scheduled runs, Celery's remote control); also ``wsupload beat`` and
  ``wsupload dead requeue|purge``.
- ``operator``: read only: ``stats``, ``workers``, ``health``, ``metrics``, ``dead list``.
  ``control=True`` adds what ``celery inspect``/``control`` and Flower need, which is
  power over the workers (``shutdown``, ``revoke``): a separate decision.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from wsupload.config.settings import Settings
from wsupload.tasks.store import keys, lua

ROLES = ("producer", "worker", "operator")

KOMBU_SEP = "\x06\x16"
"""kombu's separator: a queue ``q`` at priority 3 is the list ``q\\x06\\x163`` (``Channel._q_for_pri``)."""
KOMBU_KEYS = ("unacked", "unacked_index", "unacked_mutex")
"""kombu's Redis transport: delivered messages (hash), their delivery times (sorted set), the restore lock."""
KOMBU_BINDINGS = ("_kombu.binding.*", "_kombu.binding_permanent.*", "_kombu.binding_deadlines")
"""kombu's exchange tables (sets), kept by ``_queue_bind`` and swept by its ``SWEEP_BINDINGS`` script."""
PIDBOX_LISTS = ("*.celery.pidbox", f"*.celery.pidbox{KOMBU_SEP}*")
"""Celery's remote control: each worker's command list and each caller's ``<uuid>.reply.celery.pidbox``."""
READ, READ_WRITE = "read", "read-write"

_CALL = re.compile(r"\b[a-z_.]+\(\s*'([A-Z]+)'")
"""A call whose first argument is a command's name: ``redis.call('GET', …)``, and a helper that passes its
first argument on to ``redis.call`` (``slices('LPUSH', …)`` in enqueue_commit.lua)."""

CONNECTION = ("PING", "HELLO", "SELECT")
"""Every client: redis-py's handshake (``HELLO``), ``SELECT`` for a database other than 0. Not ``CLIENT
SETINFO`` (Redis 7.2+), which Redis 7.0 does not know and redis-py sends without needing an answer."""
SCRIPTS = ("EVAL", "EVALSHA", "SCRIPT|LOAD", "SCRIPT|EXISTS")
"""redis-py's ``Script``: ``EVALSHA``, ``SCRIPT LOAD`` on ``NOSCRIPT``, ``SCRIPT EXISTS`` in a pipeline."""

PRODUCER_SCRIPTS = ("enqueue_commit", "early_acks_owe", "early_acks_remove_if", "cancel")
"""The scripts a producer runs (``cancel``: ``Producer.cancel``)."""
WORKER_ONLY_SCRIPTS = (
    "dead_letters_move_back", "early_acks_claim_due", "fencing_claim", "fencing_save", "fencing_save_then_claim",
    "job_index_push", "job_index_put_back", "job_index_take", "lease_renew", "lease_stamp", "markers_seen",
    "lost_sweep_redeliver", "lost_sweep_snapshot", "rate_limit_acquire", "rate_limit_pause", "rate_limit_renew_slots",
    "unacked_record", "unacked_remove",
)  # fmt: skip
"""The rest: a unit test fails when a new script is in neither list, so that someone decides whose it is."""
PRODUCER_COMMANDS = (
    *CONNECTION,
    *SCRIPTS,
    "GET", "MGET", "EXISTS", "HGETALL", "HGET", "LRANGE", "LLEN",  # documents, batches, their members
    "SET", "RPUSH", "EXPIRE", "DEL", "UNLINK",  # a batch's staged messages (tasks.enqueue)
    "SUBSCRIBE", "UNSUBSCRIBE",  # wait
    "MULTI", "EXEC", "DISCARD",
    "TIME",  # expires_in: a deadline on Redis's clock
    "SADD", "SREM", "SMEMBERS", "PUBLISH",  # pause, resume
)  # fmt: skip
WORKER_COMMANDS = (
    *CONNECTION,
    *SCRIPTS,
    "GET", "SET", "MGET", "DEL", "UNLINK", "EXISTS", "EXPIRE", "PEXPIRE", "INCR", "INCRBY", "TYPE", "TIME",
    "LPUSH", "RPUSH", "LPUSHX", "RPOP", "BRPOP", "LLEN", "LRANGE", "LREM", "LTRIM",
    "HSET", "HSETNX", "HGET", "HMGET", "HGETALL", "HDEL", "HINCRBY",
    "ZADD", "ZRANGE", "ZRANGEBYSCORE", "ZREVRANGEBYSCORE", "ZSCORE", "ZMSCORE", "ZREM", "ZREMRANGEBYSCORE", "ZCARD",
    "SADD", "SREM", "SMEMBERS",
    "PUBLISH", "SUBSCRIBE", "UNSUBSCRIBE", "PSUBSCRIBE", "PUNSUBSCRIBE",
    "MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH",
    "WAIT",  # WSUPLOAD_REPLICA_WAIT: an outcome waits for a replica
)  # fmt: skip
OPERATOR_COMMANDS = (*CONNECTION, "LLEN", "LRANGE", "HGETALL", "ZRANGE", "MGET", "SMEMBERS")
CONTROL_COMMANDS = (
    "PUBLISH", "PSUBSCRIBE", "PUNSUBSCRIBE", "SUBSCRIBE", "UNSUBSCRIBE", "BRPOP", "LLEN", "DEL", "LPUSHX",
    "SADD", "SREM", "SMEMBERS", "GET", "SET", "ZRANGE", "HGET", "LPUSH", "RPUSH", "ZREM", "HDEL",
    "MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH", "TIME", "EVAL", "EVALSHA", "SCRIPT|LOAD", "SCRIPT|EXISTS",
)  # fmt: skip
"""A Celery client's remote control (``celery inspect``, Flower): its reply list, the pidbox channel, and the
restore of expired deliveries that every kombu Redis channel runs (``unacked*``)."""


@dataclass(frozen=True)
class Grant:
    """One key or channel pattern a role may use, and why (docs/security.md's tables)."""

    pattern: str
    access: str
    why: str

    @property
    def token(self) -> str:
        """The ``ACL SETUSER`` token: ``%R~pattern`` (read), ``~pattern`` (read and write), ``&channel``."""
        if self.access == "channel":
            return f"&{self.pattern}"
        return f"%R~{self.pattern}" if self.access == READ else f"~{self.pattern}"


@dataclass(frozen=True)
class Rules:
    role: str
    keys: tuple[Grant, ...]
    channels: tuple[Grant, ...]
    commands: tuple[str, ...]


def queue_lists(queue: str) -> tuple[str, str]:
    """kombu's lists of a queue: the queue's name, and its priority-suffixed twins."""
    return queue, f"{queue}{KOMBU_SEP}*"


def _db(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


def pidbox_channel(settings: Settings) -> str:
    """kombu's fanout topic for Celery's broadcast commands: ``/{db}.celery.pidbox`` (``keyprefix_fanout``)."""
    return f"/{_db(settings.effective_broker_url)}.celery.pidbox"


def events_channel(settings: Settings) -> str:
    """Task and worker events (``WSUPLOAD_TASK_EVENTS``, Flower): ``/{db}.celeryev/<routing key>``."""
    return f"/{_db(settings.effective_broker_url)}.celeryev/*"


def script_commands(names: tuple[str, ...]) -> tuple[str, ...]:
    """Every command the named Lua scripts call, read from their text."""
    return _calls(lua.load(name) for name in names)


def kombu_script_commands() -> tuple[str, ...]:
    """The commands of kombu's own scripts (its binding tables' refresh and sweep), read from kombu."""
    from kombu.transport import redis as kombu_redis

    return _calls(getattr(kombu_redis, name) for name in ("REFRESH_BINDING", "SWEEP_BINDINGS"))


def _calls(texts: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({call.upper() for text in texts for call in _CALL.findall(text)}))


def _queues(settings: Settings, access: str, why: str) -> tuple[Grant, ...]:
    return tuple(
        Grant(pattern, access, why) for queue in (settings.queue, settings.bulk_queue) for pattern in queue_lists(queue)
    )


def _every(key: str) -> str:
    """The pattern of every key like ``key``: its last part made ``*`` (``wsupload:dead`` → ``wsupload:*``)."""
    return key.rsplit(":", 1)[0] + ":*"


def rules(role: str, settings: Settings, *, control: bool = False) -> Rules:
    """What ``role`` may touch, for this deployment's queue names (``control``: operator only)."""
    queues = (settings.queue, settings.bulk_queue)
    grants: tuple[Grant, ...]
    channels: tuple[Grant, ...]
    if role == "producer":
        grants = (
            Grant(keys.result("*"), READ_WRITE, "documents, their generation and cancel keys"),
            Grant(keys.batch("*"), READ_WRITE, "batch counters and member lists"),
            Grant(keys.batch_name("*"), READ_WRITE, "a named batch's id"),
            Grant(_every(keys.staging("*", 0)), READ_WRITE, "a batch's messages being staged"),
            *(Grant(keys.pending(q), READ_WRITE, "the lost-message sweep's line") for q in queues),
            *(Grant(keys.place_counter(q), READ_WRITE, "the sweep's place counter") for q in queues),
            *(Grant(keys.owed(q), READ_WRITE, "RabbitMQ broker: jobs owed until published") for q in queues),
            *(Grant(keys.owed_calls(q), READ_WRITE, "RabbitMQ broker: the owed jobs' calls") for q in queues),
            *(Grant(keys.entered(q), READ_WRITE, "RabbitMQ broker: the jobs put on the queue") for q in queues),
            Grant(_every(keys.stats(0)), READ_WRITE, "cancel counts the job in its minute"),
            Grant(keys.PAUSED, READ_WRITE, "pause and resume: the paused queues"),
            *_queues(settings, READ_WRITE, "enqueue pushes messages (Redis broker)"),
            *(
                Grant(name, READ_WRITE, "cancel.lua is given the channels' names among its keys")
                for name in (keys.EVENTS_CHANNEL, keys.ENDED_CHANNEL, keys.CANCEL_CHANNEL)
            ),
        )
        channels = (
            Grant(keys.ENDED_CHANNEL, "channel", "wait; cancel publishes the end"),
            Grant(keys.EVENTS_CHANNEL, "channel", "cancel publishes the status change"),
            Grant(keys.CANCEL_CHANNEL, "channel", "cancel tells the running worker"),
            Grant(keys.PAUSE_CHANNEL, "channel", "pause and resume tell the workers"),
        )
        commands = PRODUCER_COMMANDS + script_commands(PRODUCER_SCRIPTS)
    elif role == "worker":
        grants = (
            Grant(_every(keys.DEAD), READ_WRITE, "every wsupload key (tasks/store/keys.py)"),
            Grant("", READ_WRITE, "the empty name: a job with no batch passes '' as fencing_save.lua's batch key"),
            *_queues(settings, READ_WRITE, "the queue lists"),
            *(Grant(name, READ_WRITE, "kombu's deliveries and leases") for name in KOMBU_KEYS),
            *(Grant(name, READ_WRITE, "kombu's exchange tables") for name in KOMBU_BINDINGS),
            *(Grant(name, READ_WRITE, "Celery's remote control lists") for name in PIDBOX_LISTS),
            Grant("celery", READ_WRITE, "Celery's default queue: a client's link/errback tasks"),
        )
        channels = (
            Grant(keys.EVENTS_CHANNEL, "channel", "status changes"),
            Grant(keys.ENDED_CHANNEL, "channel", "final documents"),
            Grant(keys.CANCEL_CHANNEL, "channel", "cancel requests"),
            Grant(keys.PAUSE_CHANNEL, "channel", "queues paused and resumed"),
            Grant(pidbox_channel(settings), "channel", "Celery's broadcast commands (PSUBSCRIBE)"),
            Grant(events_channel(settings), "channel", "task events (WSUPLOAD_TASK_EVENTS, Flower)"),
        )
        all_scripts = tuple(sorted(p.removesuffix(".lua") for p in _lua_files()))
        commands = WORKER_COMMANDS + script_commands(all_scripts) + kombu_script_commands()
    elif role == "operator":
        grants = (
            *_queues(settings, READ, "stats and metrics: queue depths (LLEN)"),
            Grant(_every(keys.stats(0)), READ, "stats: jobs ended per minute"),
            Grant(keys.WORKERS, READ, "workers, health, stats: the live workers' names"),
            Grant(keys.worker("*"), READ, "their heartbeat records"),
            Grant(keys.SUPERVISORS, READ, "workers, health: the --processes parents' names"),
            Grant(keys.supervisor("*"), READ, "their records (their children's states)"),
            Grant(keys.PAUSED, READ, "stats, workers, metrics: the paused queues"),
            Grant(keys.DEAD, READ, "dead list"),
        )
        channels = ()
        commands = OPERATOR_COMMANDS
        if control:
            grants += (
                *(
                    Grant(name, READ_WRITE, "celery inspect: its reply list, the workers' command lists")
                    for name in PIDBOX_LISTS
                ),
                Grant("_kombu.binding.*", READ_WRITE, "kombu's exchange tables (the reply binding)"),
                Grant("_kombu.binding_permanent.*", READ_WRITE, "kombu's exchange tables"),
                Grant("_kombu.binding_deadlines", READ_WRITE, "kombu's expiring reply bindings"),
                *(
                    Grant(name, READ_WRITE, "kombu's restore of expired deliveries, run by every channel")
                    for name in KOMBU_KEYS
                ),
                *_queues(settings, READ_WRITE, "where that restore puts messages back"),
                Grant(keys.BROKER_WRITE_PROBE, READ_WRITE, "wsupload's transport checks Redis takes writes"),
                Grant("celeryev.*", READ_WRITE, "Flower's event receiver: its queue, which kombu reads as lists"),
            )
            channels = (
                Grant(pidbox_channel(settings), "channel", "Celery's broadcast commands"),
                Grant(events_channel(settings), "channel", "Flower: task and worker events"),
            )
            commands = OPERATOR_COMMANDS + CONTROL_COMMANDS + kombu_script_commands()
    else:
        raise ValueError(f"no role {role!r}: one of {', '.join(ROLES)}")
    return Rules(role, grants, channels, tuple(dict.fromkeys(commands)))


def _lua_files() -> list[str]:
    from importlib import resources

    return [p.name for p in resources.files(lua.__name__).iterdir() if p.name.endswith(".lua")]


def setuser(found: Rules) -> list[str]:
    """The arguments of ``ACL SETUSER`` after the user's name: reset, then every grant (add a password)."""
    return [
        "reset",
        "on",
        *(grant.token for grant in found.keys),
        *(grant.token for grant in found.channels),
        "-@all",
        *(f"+{command.lower()}" for command in found.commands),
    ]


def quoted(token: str) -> str:
    """A token as redis-cli and an ACL file read it: kombu's separator bytes as ``\\x06\\x16`` in double quotes."""
    if all(32 < ord(c) < 127 and c not in "\"'\\" for c in token):
        return token
    body = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else f"\\x{ord(c):02x}" for c in token)
    return f'"{body}"'


def setuser_line(found: Rules, user: str) -> str:
    """``ACL SETUSER <user> …`` for redis-cli (in an ACL file: ``user <user> …``)."""
    return " ".join(["ACL", "SETUSER", user, *(quoted(t) for t in setuser(found))])


@dataclass(frozen=True)
class RabbitPermissions:
    """A RabbitMQ user's permissions in its vhost: three regular expressions on queue and exchange names."""

    configure: str
    """Declare and delete: the wsupload queues (the producer declares them too), Celery's exchanges and the
    queues of its remote control and events."""
    write: str
    """Publish to an exchange (``amq.default``: the default exchange, which wsupload's producer publishes to),
    and bind a queue."""
    read: str
    """Consume from a queue, and bind from an exchange."""

    def command(self, vhost: str, user: str) -> list[str]:
        return ["set_permissions", "-p", vhost, user, self.configure, self.write, self.read]


def rabbitmq_permissions(settings: Settings) -> RabbitPermissions:
    """The one user of producers and workers, limited to this deployment's queues and Celery's own names.

    Celery's names: ``celery`` (its default queue: a client's link tasks), ``celery.pidbox`` and
    ``reply.celery.pidbox`` (remote control) with each worker's ``<node>.celery.pidbox`` and each
    caller's ``<uuid>.reply.celery.pidbox`` queue, ``celeryev`` and its ``celeryev.<uuid>`` queues (events).
    """
    ours = "|".join(re.escape(q) for q in (settings.queue, settings.bulk_queue))
    celery = r"celery|celeryev(\..+)?|(.+\.)?(reply\.)?celery\.pidbox"
    names = f"^({ours}|{celery})$"
    return RabbitPermissions(configure=names, write=f"^({ours}|{celery}|amq\\.default)$", read=names)
