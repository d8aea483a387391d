"""Every Redis key is built in tasks/store/keys.py, under the one prefix."""

import re
from pathlib import Path

from wsupload.tasks.store import keys

ROOT = Path(__file__).resolve().parents[2]


def test_no_other_module_builds_a_key() -> None:
    builders = re.compile(r"""f["']\{KEY_PREFIX\}|["']wsupload:[a-z]""")
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("config", "tasks", "worker")
        for path in (ROOT / folder).rglob("*.py")
        if path.name != "keys.py" and builders.search(path.read_text())
    ]
    assert offenders == []


def test_every_key_is_under_the_prefix() -> None:
    built = [keys.result("j"), keys.batch("b"), keys.batch_members("b"), keys.batch_name("n"), keys.staging("t", 0)]
    built += [keys.callback("j"), keys.dedup("d"), keys.scan_state("s"), keys.scan_seen("s"), keys.scan_lock("s")]
    built += [keys.EVENTS_CHANNEL, keys.ENDED_CHANNEL, keys.DEAD, keys.RATE_TAT, keys.RATE_ACTIVE, keys.RATE_PAUSE]
    built += [keys.BROKER_WRITE_PROBE, keys.worker("w"), keys.WORKERS, keys.stats(29_000_000)]
    built += [
        keys.pending("q"),
        keys.place_counter("q"),
        keys.last_taken("q"),
        keys.suspects("q"),
        keys.sweep_lock("q"),
    ]
    assert all(key.startswith("wsupload:") for key in built)
    assert len(set(built)) == len(built)


def test_each_queue_has_its_own_sweep_keys() -> None:
    per_queue = (keys.pending, keys.place_counter, keys.last_taken, keys.suspects, keys.sweep_lock)
    assert len({build(queue) for build in per_queue for queue in ("wsupload", "wsupload.bulk")}) == 10
