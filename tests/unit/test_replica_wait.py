"""``WSUPLOAD_REPLICA_WAIT``: a job's final write waits for a replica (``WAIT 1``) on the connection that wrote.

fakeredis has no ``WAIT``: its pipelines are wrapped so that WAIT is recorded and
answered with a chosen number of replicas; everything else (the fenced Lua save,
``NOSCRIPT``) is fakeredis's own. A real replica answers it in
``tests/integration/test_sentinel.py``.
"""

from __future__ import annotations

import logging
from typing import Any

import fakeredis
import pytest

from wsupload.tasks.store import results
from wsupload.tasks.store.results import ResultStore

NOW = results.utcnow()
DATA = {"type": "image", "download_url": "https://cdn/x.png", "filename": "x.png", "size": 7}


class Replicas:
    """A fakeredis client whose pipelines answer ``WAIT`` with ``count`` replicas, and remember each one."""

    def __init__(self, real: fakeredis.FakeRedis, count: int) -> None:
        self.real, self.count = real, count
        self.waits: list[tuple[int, int, list[str]]] = []
        """(replicas asked for, timeout in ms, the commands queued before it on the same pipeline)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def pipeline(self, transaction: bool = True) -> Any:
        return _Pipeline(self, self.real.pipeline(transaction=transaction))


class _Pipeline:
    def __init__(self, owner: Replicas, pipe: Any) -> None:
        self.owner, self.pipe, self.waited = owner, pipe, False
        self.queued: list[str] = []

    def __getattr__(self, name: str) -> Any:
        command = getattr(self.pipe, name)

        def queue(*args: Any, **kwargs: Any) -> Any:
            self.queued.append(name.upper())
            return command(*args, **kwargs)

        return queue

    def wait(self, replicas: int, timeout_ms: int) -> None:
        self.owner.waits.append((replicas, timeout_ms, list(self.queued)))
        self.waited = True

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        answers = list(self.pipe.execute(raise_on_error=raise_on_error))
        return [*answers, self.owner.count] if self.waited else answers


def store_with(replicas: int, wait: float = 0.25) -> tuple[ResultStore, Replicas]:
    client = Replicas(fakeredis.FakeRedis(), replicas)
    return ResultStore(client, ttl=3600, replica_wait=wait), client  # type: ignore[arg-type]


def ended(store: ResultStore, job_id: str) -> results.JobDoc:
    doc = results.new_doc(job_id, "/x.png", NOW)
    store.create([doc])
    return results.succeeded(doc, DATA, NOW, 3600)


def test_the_final_write_waits_for_one_replica_on_the_connection_that_wrote() -> None:
    store, client = store_with(replicas=1)
    doc = results.new_doc("j", "/x.png", NOW)
    store.create([doc])
    store.save(results.started(doc, NOW, None, "w"))  # not final: no wait
    assert client.waits == []
    assert store.save(results.succeeded(doc, DATA, NOW, 3600))
    assert client.waits == [(1, 250, ["EVALSHA"])]  # one pipeline: the write, then WAIT
    stored = store.get("j")
    assert stored is not None
    assert stored["status"] == results.SUCCEEDED


def test_off_by_default_no_final_write_waits() -> None:
    store, client = store_with(replicas=1, wait=0)
    assert store.save(ended(store, "j"))
    assert client.waits == []


def test_a_write_no_replica_confirmed_is_kept_and_said_once_per_streak(caplog: pytest.LogCaptureFixture) -> None:
    store, client = store_with(replicas=0)
    with caplog.at_level(logging.WARNING, logger="wsupload.tasks.store.results"):
        assert store.save(ended(store, "a"))
        assert store.save(ended(store, "b"))
        client.count = 1
        assert store.save(ended(store, "c"))
        client.count = 0
        assert store.save(ended(store, "d"))
    said = [r.getMessage() for r in caplog.records if "no replica confirmed" in r.getMessage()]
    assert [line.split(":")[0] for line in said] == ["job a", "job d"]
    assert all(doc and doc["status"] == results.SUCCEEDED for doc in store.get_many(["a", "b", "c", "d"]))


def test_a_master_without_the_script_gets_it_and_the_write_happens_once() -> None:
    """A promoted replica has no script cache: NOSCRIPT, then SCRIPT LOAD and the same write again."""
    store, client = store_with(replicas=1)
    doc = ended(store, "j")
    client.real.script_flush()
    assert store.save(doc)
    assert [queued for _, _, queued in client.waits] == [["EVALSHA"], ["EVALSHA"]]
    assert not store.save(doc)  # it has ended: the fenced save refuses a second terminal write
