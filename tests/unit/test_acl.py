"""The ACL rules (tasks.store.acl) cover the keys each role uses and no more, match kombu, and are the ones documented.

The integration tests (tests/integration/test_acl.py) run them against a real Redis
and RabbitMQ; these keep them from drifting from keys.py, the Lua scripts, kombu and
docs/security.md.
"""

import inspect
import re
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from kombu.transport.redis import PRIORITY_STEPS, Channel

from wsupload.config import Settings
from wsupload.tasks.store import acl, keys, lua

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings.from_env({})
ADMIN = {"FLUSHALL", "FLUSHDB", "CONFIG", "KEYS", "DEBUG", "SHUTDOWN", "ACL", "MONITOR", "CLIENT", "SCRIPT|FLUSH"}
ADMIN |= {"SCRIPT|KILL", "FUNCTION", "MIGRATE", "RESTORE", "SAVE", "BGSAVE", "REPLICAOF", "SLAVEOF", "MODULE", "SCAN"}
READS = {"PING", "HELLO", "SELECT", "LLEN", "LRANGE", "HGETALL", "ZRANGE", "MGET", "SMEMBERS"}


def allowed(found: acl.Rules, key: str, *, write: bool = False) -> bool:
    return any(
        fnmatchcase(key, grant.pattern) and (grant.access == acl.READ_WRITE or not write) for grant in found.keys
    )


def test_docs_security_shows_what_acl_rules_prints() -> None:
    page = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    for role in acl.ROLES:
        assert acl.setuser_line(acl.rules(role, SETTINGS), f"wsupload-{role}") in page, f"{role}: run acl-rules"
    control = acl.setuser_line(acl.rules("operator", SETTINGS, control=True), "wsupload-operator")
    assert control in page
    permissions = acl.rabbitmq_permissions(SETTINGS)
    assert all(regex in page for regex in (permissions.configure, permissions.write, permissions.read))


@pytest.mark.parametrize("role", acl.ROLES)
def test_no_role_has_an_admin_command(role: str) -> None:
    for control in (False, True) if role == "operator" else (False,):
        commands = set(acl.rules(role, SETTINGS, control=control).commands)
        assert commands & ADMIN == set()


def test_the_operator_only_reads() -> None:
    found = acl.rules("operator", SETTINGS)
    assert set(found.commands) <= READS
    assert {grant.access for grant in found.keys} == {acl.READ}
    assert found.channels == ()
    assert not allowed(found, keys.result("j"))


def test_every_wsupload_key_is_the_workers_and_the_producer_has_only_its_own() -> None:
    worker, producer = acl.rules("worker", SETTINGS), acl.rules("producer", SETTINGS)
    q = SETTINGS.queue
    ours = [keys.result("j"), keys.generation("j"), keys.batch("b"), keys.batch_members("b"), keys.batch_name("n")]
    ours += [keys.staging("t", 3), keys.pending(q), keys.place_counter(q), keys.owed(q), keys.owed_calls(q), q]
    theirs = [keys.dedup("d"), keys.RATE_TAT, keys.worker("w"), keys.WORKERS, keys.DEAD, keys.suspects(q)]
    theirs += [keys.sweep_lock(q), keys.callback("j"), keys.scan_state("s"), "unacked", "_kombu.binding.celery"]
    for key in ours + theirs:
        assert allowed(worker, key, write=True), key
    for key in ours:
        assert allowed(producer, key, write=True), key
    for key in theirs:
        assert not allowed(producer, key), key


Q = SETTINGS.queue
EVERY_KEY = {
    # keys.py's name: (an example, the roles that may read it, the roles that may write it)
    "BROKER_WRITE_PROBE": (keys.BROKER_WRITE_PROBE, {"worker"}, {"worker"}),
    "CANCEL_CHANNEL": (keys.CANCEL_CHANNEL, {"worker", "producer"}, {"worker", "producer"}),
    "EVENTS_CHANNEL": (keys.EVENTS_CHANNEL, {"worker", "producer"}, {"worker", "producer"}),
    "ENDED_CHANNEL": (keys.ENDED_CHANNEL, {"worker", "producer"}, {"worker", "producer"}),
    "DEAD": (keys.DEAD, {"worker", "operator"}, {"worker"}),
    "RATE_ACTIVE": (keys.RATE_ACTIVE, {"worker"}, {"worker"}),
    "RATE_PAUSE": (keys.RATE_PAUSE, {"worker"}, {"worker"}),
    "RATE_TAT": (keys.RATE_TAT, {"worker"}, {"worker"}),
    "UNACKED_INDEX": (keys.UNACKED_INDEX, {"worker"}, {"worker"}),
    "WORKERS": (keys.WORKERS, {"worker", "operator"}, {"worker"}),
    "SUPERVISORS": (keys.SUPERVISORS, {"worker", "operator"}, {"worker"}),
    "supervisor": (keys.supervisor("p"), {"worker", "operator"}, {"worker"}),
    "PAUSED": (keys.PAUSED, {"worker", "producer", "operator"}, {"worker", "producer"}),
    "PAUSE_CHANNEL": (keys.PAUSE_CHANNEL, {"worker"}, {"worker"}),
    "batch": (keys.batch("b"), {"worker", "producer"}, {"worker", "producer"}),
    "batch_members": (keys.batch_members("b"), {"worker", "producer"}, {"worker", "producer"}),
    "batch_name": (keys.batch_name("n"), {"worker", "producer"}, {"worker", "producer"}),
    "callback": (keys.callback("j"), {"worker"}, {"worker"}),
    "cancel": (keys.cancel("j"), {"worker", "producer"}, {"worker", "producer"}),
    "dedup": (keys.dedup("d"), {"worker"}, {"worker"}),
    "entered": (keys.entered(Q), {"worker", "producer"}, {"worker", "producer"}),
    "marker": (keys.marker(Q), {"worker"}, {"worker"}),
    "generation": (keys.generation("j"), {"worker", "producer"}, {"worker", "producer"}),
    "last_taken": (keys.last_taken(Q), {"worker"}, {"worker"}),
    "owed": (keys.owed(Q), {"worker", "producer"}, {"worker", "producer"}),
    "owed_calls": (keys.owed_calls(Q), {"worker", "producer"}, {"worker", "producer"}),
    "owed_lock": (keys.owed_lock(Q), {"worker"}, {"worker"}),
    "pending": (keys.pending(Q), {"worker", "producer"}, {"worker", "producer"}),
    "place_counter": (keys.place_counter(Q), {"worker", "producer"}, {"worker", "producer"}),
    "result": (keys.result("j"), {"worker", "producer"}, {"worker", "producer"}),
    "scan_lock": (keys.scan_lock("s"), {"worker"}, {"worker"}),
    "scan_seen": (keys.scan_seen("s"), {"worker"}, {"worker"}),
    "scan_state": (keys.scan_state("s"), {"worker"}, {"worker"}),
    "staging": (keys.staging("t", 0), {"worker", "producer"}, {"worker", "producer"}),
    "stats": (keys.stats(29_000_000), {"worker", "producer", "operator"}, {"worker", "producer"}),
    "suspects": (keys.suspects(Q), {"worker"}, {"worker"}),
    "sweep_lock": (keys.sweep_lock(Q), {"worker"}, {"worker"}),
    "worker": (keys.worker("w@h"), {"worker", "operator"}, {"worker"}),
}


def test_every_name_in_keys_py_is_given_to_the_roles_that_use_it() -> None:
    """A new key (pausing a queue, a deadline…) fails here until someone decides who may use it."""
    public = {
        name
        for name, value in vars(keys).items()
        if not name.startswith("_") and name != "KEY_PREFIX" and (isinstance(value, str) or inspect.isfunction(value))
    }
    assert public == set(EVERY_KEY), "give the new key to its roles in tasks/store/acl.py, and list it here"
    found = {role: acl.rules(role, SETTINGS) for role in acl.ROLES}
    for name, (key, readers, writers) in EVERY_KEY.items():
        assert {role for role, rules in found.items() if allowed(rules, key)} == readers, name
        assert {role for role, rules in found.items() if allowed(rules, key, write=True)} == writers, name


def test_the_queue_lists_at_every_priority_are_granted() -> None:
    worker = acl.rules("worker", SETTINGS)
    for queue in (SETTINGS.queue, SETTINGS.bulk_queue):
        for step in PRIORITY_STEPS:
            name = queue if not step else f"{queue}{acl.KOMBU_SEP}{step}"
            assert allowed(worker, name, write=True), name
    assert not allowed(worker, "someone-elses-queue")


def test_kombus_names_are_kombus() -> None:
    assert (Channel.unacked_key, Channel.unacked_index_key, Channel.unacked_mutex_key) == acl.KOMBU_KEYS
    assert Channel.sep == acl.KOMBU_SEP
    assert Channel.keyprefix_fanout == "/{db}."
    # kombu 5.7's expiring binding tables; the type stubs predate them.
    permanent, deadlines = (getattr(Channel, f"keyprefix_binding_{n}") for n in ("permanent", "deadlines"))
    binding_patterns = [Channel.keyprefix_queue % "x", permanent % "x"]
    assert all(any(fnmatchcase(name, p) for p in acl.KOMBU_BINDINGS) for name in binding_patterns)
    assert deadlines in acl.KOMBU_BINDINGS
    assert acl.pidbox_channel(Settings.from_env({"REDIS_URL": "redis://h:6379/3"})) == "/3.celery.pidbox"


def test_every_command_of_every_script_is_the_workers() -> None:
    names = tuple(p.stem for p in (ROOT / "tasks" / "store" / "lua").glob("*.lua"))
    called = set(acl.script_commands(names))
    assert "LPUSH" in acl.script_commands(("enqueue_commit",))  # through its slices() helper
    assert called <= set(acl.rules("worker", SETTINGS).commands)
    assert set(acl.script_commands(acl.PRODUCER_SCRIPTS)) <= set(acl.rules("producer", SETTINGS).commands)
    assert all(re.fullmatch(r"[A-Z]+", command) for command in called), called
    assert all(lua.load(name) for name in acl.PRODUCER_SCRIPTS)


def test_every_script_is_given_to_a_role() -> None:
    names = {p.stem for p in (ROOT / "tasks" / "store" / "lua").glob("*.lua")}
    assert set(acl.PRODUCER_SCRIPTS) | set(acl.WORKER_ONLY_SCRIPTS) == names, (
        "add it to acl.PRODUCER_SCRIPTS or WORKER_ONLY_SCRIPTS"
    )
    assert not set(acl.PRODUCER_SCRIPTS) & set(acl.WORKER_ONLY_SCRIPTS)


def test_kombus_separator_is_written_as_escapes_for_redis_cli() -> None:
    assert acl.quoted(f"~q{acl.KOMBU_SEP}*") == '"~q\\x06\\x16*"'
    assert acl.quoted("~wsupload:*") == "~wsupload:*"
    line = acl.setuser_line(acl.rules("producer", SETTINGS), "p")
    assert line.startswith("ACL SETUSER p reset on ")
    assert acl.KOMBU_SEP not in line


def test_the_rabbitmq_user_is_held_to_the_wsupload_queues_and_celerys_names() -> None:
    permissions = acl.rabbitmq_permissions(SETTINGS)
    names = ["wsupload", "wsupload.bulk", "celery", "celeryev", "celeryev.1f0c", "celery.pidbox"]
    names += ["reply.celery.pidbox", "wsupload-12@host.celery.pidbox", "9a72.reply.celery.pidbox"]
    for name in names:
        assert re.fullmatch(permissions.configure, name), name
        assert re.fullmatch(permissions.read, name), name
    for name in ("other", "wsupload-bulk", "wsuploadx", "amq.fanout", "celery.pidboxes"):
        assert not re.fullmatch(permissions.configure, name), name
    assert re.fullmatch(permissions.write, "amq.default")
    assert not re.fullmatch(permissions.read, "amq.default")
