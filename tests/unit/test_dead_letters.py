"""The dead-letter list: what is kept of a message, how much, and putting it back."""

import fakeredis
import pytest

from wsupload.tasks.observe.bounds import MAX_DEAD_MESSAGE_BYTES
from wsupload.tasks.store.dead_letters import DEAD_KEY, DeadLetterStore


def test_text_and_binary_messages_are_kept_as_they_were(redis_client: fakeredis.FakeRedis) -> None:
    store = DeadLetterStore(redis_client)
    text = store.add("garbage{", "not JSON", queue="q", job_id=None)
    binary = store.add(b"\xff\xfe\x00", "not UTF-8", queue="q")
    assert (text.raw_encoding, binary.raw_encoding) == ("text", "base64")
    assert [e.message() for e in store.entries()] == [b"\xff\xfe\x00", b"garbage{"]


def test_a_huge_message_is_kept_in_part_and_is_not_requeued(redis_client: fakeredis.FakeRedis) -> None:
    store = DeadLetterStore(redis_client)
    entry = store.add(b"x" * (MAX_DEAD_MESSAGE_BYTES * 4), "too big", queue="q")
    assert entry.truncated
    assert len(entry.message()) == MAX_DEAD_MESSAGE_BYTES
    assert entry.raw_bytes == MAX_DEAD_MESSAGE_BYTES * 4
    assert store.requeue(None, default_queue="q") == (0, [entry.id])
    assert redis_client.llen("q") == 0
    assert store.count() == 1


def test_requeue_moves_an_entry_once(redis_client: fakeredis.FakeRedis) -> None:
    store = DeadLetterStore(redis_client)
    entry = store.add(b"m", "r", queue=None)
    assert store.requeue([entry.id], default_queue="fallback") == (1, [])
    assert store.requeue([entry.id], default_queue="fallback") == (0, [])
    assert redis_client.lrange("fallback", 0, -1) == [b"m"]


def test_purge_by_id_or_all(redis_client: fakeredis.FakeRedis) -> None:
    store = DeadLetterStore(redis_client)
    first, _ = store.add(b"1", "r"), store.add(b"2", "r")
    redis_client.lpush(DEAD_KEY, b"not an entry")
    assert store.purge([first.id]) == 1
    assert [e.message() for e in store.entries()] == [b"2"]
    assert store.purge(None) == 2
    assert store.count() == 0


def test_requeue_on_rabbitmq_is_refused_in_one_line_and_keeps_the_entries(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsupload.worker.cli import main as cli_main

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # never reached: refused before any command
    monkeypatch.setenv("WSUPLOAD_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/v")
    assert cli_main(["dead", "requeue", "--all"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "not available with RabbitMQ as the broker; the entries are kept" in err
