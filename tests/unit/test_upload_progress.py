"""Byte progress: the once-a-second policy, the reporter, and the job runner's fenced progress writes."""

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

from wsupload.config import Settings
from wsupload.errors import Superseded
from wsupload.tasks.job import JobRunner
from wsupload.tasks.observe import upload_progress
from wsupload.tasks.observe.upload_progress import Reporter, due, tracked
from wsupload.tasks.sources.media import OpenedSource
from wsupload.tasks.store import results
from wsupload.tasks.store.results import ResultStore
from wsupload.tasks.wavespeed.multipart import MultipartBody
from wsupload.worker.dev.samples import png_bytes

BLOCK = 1000
DATA = {"type": "image", "download_url": "https://cdn/x.png", "filename": "big.png", "size": 1}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- the pure parts ----------------------------------------------------------


def test_a_write_is_due_one_interval_after_the_last() -> None:
    assert not due(10.0, 10.0)
    assert not due(10.0, 10.999)
    assert due(10.0, 11.0)
    assert due(10.0, 15.0, interval=5.0)
    assert not due(10.0, 14.9, interval=5.0)


def test_only_uploads_over_the_threshold_are_tracked_and_zero_tracks_none() -> None:
    assert tracked(8 * 2**20 + 1, 8 * 2**20)
    assert not tracked(8 * 2**20, 8 * 2**20)  # "larger than", not "at least"
    assert not tracked(2**40, 0)


def test_the_reporter_writes_at_most_once_a_second_and_not_before_the_first() -> None:
    clock = Clock()
    writes: list[tuple[float, int, int]] = []
    reporter = Reporter(lambda sent, total: writes.append((clock.now, sent, total)), clock)
    for step, sent in enumerate(range(0, 5000, 250)):
        clock.now = 100.0 + step * 0.3  # a block every 0.3 s
        reporter.sent(sent, 5000)
    # Blocks at 100.0 .. 105.7: the first write one second after the start, then one a second at most.
    expected = [(101.2, 1000), (102.4, 2000), (103.6, 3000), (104.8, 4000)]
    assert [(round(at, 1), sent) for at, sent, _ in writes] == expected
    assert {total for _, _, total in writes} == {5000}
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(writes)]
    assert min(gaps) >= 1.0


def test_a_write_that_fails_for_redis_is_skipped_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    answers: list[Exception | None] = [redis.ConnectionError("refused"), redis.TimeoutError("slow"), None]
    answers.append(redis.ConnectionError("refused again"))
    calls: list[int] = []

    def write(sent: int, total: int) -> None:
        calls.append(sent)
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    reporter = Reporter(write, clock)
    with caplog.at_level(logging.WARNING, logger=upload_progress.__name__):
        for sent in range(1, 5):
            clock.now += 1.0
            reporter.sent(sent, 10)  # never raises
            if sent == 2:
                assert len(caplog.records) == 1, "a second failure in a row is not said again"
    assert calls == [1, 2, 3, 4]
    # Said at the first failure, and again at the first one after a write succeeded.
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["a progress write failed"] * 2
    assert "refused again" in caplog.records[1].getMessage()


def test_sent_goes_to_this_threads_reporter_only_while_it_reports() -> None:
    clock = Clock()
    writes: list[int] = []
    upload_progress.sent(1, 2)  # no reporter: nothing happens
    with upload_progress.reporting(Reporter(lambda sent, total: writes.append(sent), clock)):
        clock.now += 1.0
        upload_progress.sent(7, 10)
    clock.now += 1.0
    upload_progress.sent(8, 10)
    assert writes == [7]


# -- the job runner: fenced progress writes through the upload body ----------


class BodyReadingClient:
    """Reads each upload's multipart body in blocks as the socket would, the clock moving 0.3 s a block."""

    def __init__(self, clock: Clock, during: Any = None) -> None:
        self.clock = clock
        self.during = during
        self.reads = 0

    def upload(self, source: OpenedSource) -> dict[str, Any]:
        body = MultipartBody.for_source(source, field="file")
        while body.read(BLOCK):
            self.reads += 1
            self.clock.now += 0.3
            if self.during is not None:
                self.during(self.reads)
        return {**DATA, "size": source.size}


def make_runner(store: ResultStore, client: Any, clock: Clock, threshold: str) -> JobRunner:
    settings = Settings.from_env({"WAVESPEED_API_KEY": "sk-progress", "WSUPLOAD_PROGRESS_THRESHOLD": threshold})
    return JobRunner(settings=settings, store=store, client=client, sleep=lambda s: None, progress_clock=clock)


@pytest.fixture
def big_png(tmp_path: Path) -> Path:
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes() + b"\0" * (10 * BLOCK))
    return path


def events_of(pubsub: Any) -> list[dict[str, Any]]:
    seen = []
    while (message := pubsub.get_message(timeout=0)) is not None:
        if message["type"] == "message":
            seen.append(json.loads(message["data"]))
    return seen


def test_a_large_upload_publishes_rising_progress_and_ends_without_it(
    store: ResultStore, redis_client: fakeredis.FakeRedis, big_png: Path
) -> None:
    size = big_png.stat().st_size
    clock = Clock()
    stored: list[Any] = []
    client = BodyReadingClient(clock, during=lambda reads: stored.append(store.get("j")))
    pubsub = redis_client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(results.EVENTS_CHANNEL)
    doc = make_runner(store, client, clock, threshold=str(size - 1)).run("j", str(big_png))

    progress = [e for e in events_of(pubsub) if "progress" in e]
    assert len(progress) >= 3
    assert {e["status"] for e in progress} == {"running"}
    sent = [e["progress"]["bytes_sent"] for e in progress]
    assert sent == sorted(set(sent))
    assert sent[-1] <= size
    assert {e["progress"]["bytes_total"] for e in progress} == {size}
    # The stored document carried what the event said, while the upload ran.
    assert any(d is not None and d.get("progress") == progress[0]["progress"] for d in stored)
    assert doc["status"] == "succeeded"
    assert "progress" not in doc
    assert "progress" not in (store.get("j") or {})


def test_a_small_upload_makes_no_reporter_and_publishes_no_progress(
    store: ResultStore, redis_client: fakeredis.FakeRedis, big_png: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_reporter(*args: Any) -> None:
        raise AssertionError("a reporter was made for a file under the threshold")

    monkeypatch.setattr(upload_progress, "Reporter", no_reporter)
    pubsub = redis_client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(results.EVENTS_CHANNEL)
    clock = Clock()
    for threshold in (str(big_png.stat().st_size), "0"):  # at the threshold, and progress off
        doc = make_runner(store, BodyReadingClient(clock), clock, threshold).run(f"j{threshold}", str(big_png))
        assert doc["status"] == "succeeded"
    assert [e for e in events_of(pubsub) if "progress" in e] == []


def test_a_superseded_delivery_writes_no_progress_and_stops(
    store: ResultStore, redis_client: fakeredis.FakeRedis, big_png: Path
) -> None:
    clock = Clock()

    def taken_over(reads: int) -> None:
        if reads == 2:
            store.claim("j")  # another delivery takes the job before the first progress write

    client = BodyReadingClient(clock, during=taken_over)
    with pytest.raises(Superseded):
        make_runner(store, client, clock, threshold="1").run("j", str(big_png))
    assert client.reads < 5, "the send stopped at the refused progress write"
    assert "progress" not in (store.get("j") or {})


def test_a_progress_write_that_fails_for_redis_does_not_fail_the_upload(
    store: ResultStore, big_png: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save = store.save
    refused: list[int] = []

    def away_for_progress(doc: results.JobDoc, generation: int | None = None) -> bool:
        if "progress" in doc:
            refused.append(doc["progress"]["bytes_sent"])
            raise redis.ConnectionError("Redis is away")
        return save(doc, generation)

    monkeypatch.setattr(store, "save", away_for_progress)
    clock = Clock()
    doc = make_runner(store, BodyReadingClient(clock), clock, threshold="1").run("j", str(big_png))
    assert len(refused) >= 3
    assert doc["status"] == "succeeded"
    assert store.get("j") == doc
