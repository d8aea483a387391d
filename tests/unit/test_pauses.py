"""Paused queues: the set in Redis, this process's board, and the worker's loop that stops and starts consuming."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from celery.exceptions import Reject

from tests.unit.conftest import install_runner
from tests.unit.test_upload_task import NoClient
from wsupload.errors import InvalidInput
from wsupload.tasks import upload as upload_module
from wsupload.tasks import upload_many as upload_many_module
from wsupload.tasks.job import Outcome
from wsupload.tasks.store import keys, pauses
from wsupload.tasks.store.results import ResultStore
from wsupload.worker.dev.samples import png_bytes
from wsupload.worker.pause_watch import PauseWatch


def test_pause_and_resume_say_whether_they_changed_anything(redis_client: fakeredis.FakeRedis) -> None:
    assert pauses.pause(redis_client, "q.bulk")
    assert not pauses.pause(redis_client, "q.bulk")
    assert pauses.paused(redis_client) == {"q.bulk"}
    assert pauses.resume(redis_client, "q.bulk")
    assert not pauses.resume(redis_client, "q.bulk")
    assert pauses.paused(redis_client) == set()


def test_queues_are_named_by_their_name_or_their_role() -> None:
    assert pauses.queue_named("bulk", "q", "q.bulk") == "q.bulk"
    assert pauses.queue_named("interactive", "q", "q.bulk") == "q"
    assert pauses.queue_named("q", "q", "q.bulk") == "q"
    with pytest.raises(InvalidInput, match="no queue 'other'"):
        pauses.queue_named("other", "q", "q.bulk")


def test_the_board_reads_the_set_once_until_it_is_kept_by_the_loop(redis_client: fakeredis.FakeRedis) -> None:
    board = pauses.Board()
    reads: list[int] = []

    def load() -> set[str]:
        reads.append(1)
        return pauses.paused(redis_client)

    pauses.pause(redis_client, "q.bulk")
    assert board.is_paused("q.bulk", load)
    assert not board.is_paused("q", load)
    assert not board.is_paused(None, load)
    assert len(reads) == 1
    board.update(set())
    assert not board.is_paused("q.bulk", load)


def test_the_loop_stops_and_starts_only_the_queues_this_worker_serves(redis_client: fakeredis.FakeRedis) -> None:
    switched: list[tuple[str, bool]] = []
    board = pauses.Board()
    watch = PauseWatch(redis_client, {"q", "q.bulk"}, lambda q, on: switched.append((q, on)), board=board)
    pauses.pause(redis_client, "q.bulk")
    pauses.pause(redis_client, "elsewhere")
    watch.look()
    watch.look()  # nothing new: nothing switched again
    assert switched == [("q.bulk", False)]
    assert board.is_paused("q.bulk", set)
    redis_client.srem(keys.PAUSED, "q.bulk")
    watch.look()
    assert switched == [("q.bulk", False), ("q.bulk", True)]
    assert not board.is_paused("q.bulk", set)


@pytest.fixture
def board() -> Iterator[pauses.Board]:
    pauses.BOARD.forget()
    yield pauses.BOARD
    pauses.BOARD.forget()


def rejected_while_paused(store: ResultStore, task: Any, message_id: str, *args: Any) -> Reject:
    """What ``task`` raises, run on a message of ``q.bulk`` once that queue is paused."""
    pauses.pause(store.redis, "q.bulk")
    task.push_request(id=message_id, delivery_info={"routing_key": "q.bulk"})
    try:
        with pytest.raises(Reject) as caught:
            task.run(*args)
    finally:
        task.pop_request()
    return caught.value


def test_a_message_met_while_its_queue_is_paused_goes_back_unclaimed(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch, board: pauses.Board, tmp_path: Path
) -> None:
    install_runner(store, monkeypatch, NoClient())
    source = tmp_path / "a.png"
    source.write_bytes(png_bytes())
    rejected = rejected_while_paused(store, upload_module.upload, "j1", "j1", str(source))
    assert rejected.requeue is True  # type: ignore[attr-defined]  # (missing from celery-types)
    assert store.redis.get(keys.generation("j1")) is None  # nothing claimed
    assert store.get("j1") is None


def test_a_bulk_message_met_while_its_queue_is_paused_goes_back_whole(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch, board: pauses.Board, tmp_path: Path
) -> None:
    install_runner(store, monkeypatch, NoClient())
    source = tmp_path / "a.png"
    source.write_bytes(png_bytes())
    calls = [["j1", str(source)], ["j2", str(source)]]
    rejected = rejected_while_paused(store, upload_many_module.upload_many, "m1", calls)
    assert rejected.requeue is True  # type: ignore[attr-defined]  # (missing from celery-types)
    assert store.redis.get(keys.generation("j1")) is None


def test_a_bulk_message_paused_mid_way_finishes_its_job_and_hands_back_the_rest(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch, board: pauses.Board
) -> None:
    runner = install_runner(store, monkeypatch, NoClient())
    seen: list[str] = []

    def deliver(job_id: str, *args: Any, **kwargs: Any) -> Outcome:
        seen.append(job_id)
        pauses.pause(store.redis, "q.bulk")  # paused while this job runs
        board.update(pauses.paused(store.redis))  # as the worker's loop would
        return Outcome({"job_id": job_id, "status": "succeeded"}, ended_here=True)

    monkeypatch.setattr(runner, "run_delivery", deliver)
    upload_many_module.upload_many.push_request(id="m1", delivery_info={"routing_key": "q.bulk"})
    try:
        with pytest.raises(Reject) as caught:
            upload_many_module.upload_many.run([["j1", "/a.png"], ["j2", "/b.png"], ["j3", "/c.png"]])
    finally:
        upload_many_module.upload_many.pop_request()
    assert caught.value.requeue is True  # type: ignore[attr-defined]  # (missing from celery-types)
    assert seen == ["j1"]  # the running job finished; the others go back with the message


def test_a_worker_set_up_while_a_queue_is_paused_leaves_it_out_before_consuming(
    redis_client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from wsupload.config import Settings
    from wsupload.worker import pause_watch
    from wsupload.worker.app import create_app

    settings = Settings.from_env({"WSUPLOAD_QUEUE": "q", "WSUPLOAD_BULK_QUEUE": "q.bulk"})
    app = create_app(settings)
    app.amqp.queues.select(["q", "q.bulk"])  # as `wsupload worker` asks (--queues)
    monkeypatch.setattr(pause_watch, "connect", lambda url, timeout: redis_client)
    pauses.pause(redis_client, "q.bulk")
    pause_watch.leave_out_paused(sender="w@host", instance=SimpleNamespace(app=app))
    assert set(app.amqp.queues.consume_from) == {"q"}
    assert {"q.bulk"} == pauses.LEFT_OUT
    consumer = SimpleNamespace(task_consumer=SimpleNamespace(queues=[app.amqp.queues["q"]]), hub=None)
    watch = PauseWatch.for_worker(consumer, settings)
    assert (watch.serves, watch.stopped) == ({"q", "q.bulk"}, {"q.bulk"})
    pauses.LEFT_OUT.clear()


def test_a_board_not_kept_for_a_while_is_read_again(redis_client: fakeredis.FakeRedis) -> None:
    now = [0.0]
    board = pauses.Board(clock=lambda: now[0])
    board.update({"q.bulk"})
    assert board.is_paused("q.bulk", lambda: pauses.paused(redis_client))  # fresh: not read
    now[0] += pauses.STALE_AFTER + 1
    assert not board.is_paused("q.bulk", lambda: pauses.paused(redis_client))  # stale: read, resumed meanwhile
