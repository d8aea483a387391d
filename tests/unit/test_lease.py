"""Job leases: when a job may be renewed, and how a delivery learns it must stop (pure, fake clock)."""

import threading
from pathlib import Path
from typing import Any

import pytest

from wsupload.config import Settings
from wsupload.errors import LeaseLost, TimeLimitExceeded
from wsupload.tasks.job import JobRunner
from wsupload.tasks.recovery import lease
from wsupload.tasks.recovery.lease import JobLease, LeaseBook, renewable
from wsupload.tasks.sources.local_files import open_local
from wsupload.tasks.sources.media import OpenedSource
from wsupload.tasks.store import keys
from wsupload.tasks.store.results import ResultStore
from wsupload.tasks.wavespeed.multipart import MultipartBody
from wsupload.worker.dev.samples import png_bytes


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_sign_of_life_keeps_a_job_renewable_for_its_grace() -> None:
    clock = Clock()
    held = JobLease("j", "t", grace=10, clock=clock)
    clock.now += 9
    assert renewable(held, clock.now)
    held.tick()
    clock.now += 10
    assert renewable(held, clock.now)
    clock.now += 0.5
    assert not renewable(held, clock.now)  # silent past its grace: left to expire


def test_a_bounded_wait_is_allowed_for_its_length() -> None:
    clock = Clock()
    held = JobLease("j", "t", grace=10, clock=clock)
    held.allow(60)  # a retry's backoff
    clock.now += 59
    assert renewable(held, clock.now)
    held.allow(1)  # never shortens what was allowed
    clock.now += 0.9
    assert renewable(held, clock.now)


@pytest.mark.parametrize(
    ("flag", "needle"), [("lost", "went to another worker"), ("handed_back", "handed back to the queue")]
)
def test_a_delivery_that_lost_or_handed_back_its_lease_stops_at_its_next_block(flag: str, needle: str) -> None:
    held = JobLease("j", "t", grace=10, clock=Clock())
    setattr(held, flag, True)
    assert not renewable(held, 100.0)
    with pytest.raises(LeaseLost, match=needle):
        held.tick()


def test_the_job_timeout_is_checked_at_every_block() -> None:
    clock = Clock()
    held = JobLease("j", "t", grace=10, deadline=130.0, clock=clock)
    clock.now = 129
    held.tick()
    clock.now = 131
    with pytest.raises(TimeLimitExceeded, match="WSUPLOAD_JOB_TIMEOUT"):
        held.tick()


def test_holding_makes_the_lease_current_on_its_thread_only() -> None:
    book = LeaseBook()
    held = JobLease("j", "t1", grace=10)
    seen: list[object] = []
    with lease.holding(held, book):
        assert lease.current() is held
        assert book.get("t1") is held
        worker = threading.Thread(target=lambda: seen.append(lease.current()))
        worker.start()
        worker.join()
    assert seen == [None]
    assert lease.current() is None
    assert book.get("t1") is None
    assert book.wait_empty(0)


def test_wait_empty_gives_up_after_its_timeout() -> None:
    book = LeaseBook()
    book.add(JobLease("j", "t1", grace=10))
    assert not book.wait_empty(0.01)


def test_the_upload_body_ticks_for_every_block(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes() + b"\0" * 3000)
    clock = Clock()
    held = JobLease("j", "t", grace=10, clock=clock)
    with lease.holding(held, LeaseBook()), open_local(str(path)) as opened:
        body = MultipartBody.for_source(opened, field="file")
        body.read(1000)
        clock.now += 9.5
        body.read(1000)  # alive for 10 s from here
        clock.now += 9.5
        assert renewable(held, clock.now)
        held.lost = True
        with pytest.raises(LeaseLost):
            body.read(1000)


class LosingClient:
    """Reads the body like requests does; the lease goes to another worker halfway through."""

    def upload(self, source: OpenedSource) -> dict[str, Any]:
        body = MultipartBody.for_source(source, field="file")
        body.read(100)
        current = lease.current()
        assert current is not None
        current.lost = True
        body.read(100)
        raise AssertionError("the upload went on after the lease was lost")


def test_a_job_whose_lease_is_lost_mid_upload_stops_and_writes_nothing_more(store: ResultStore, tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes() + b"\0" * 1000)
    runner = JobRunner(
        settings=Settings.from_env({"WAVESPEED_API_KEY": "sk-lease"}), store=store, client=LosingClient()
    )
    store.redis.zadd(keys.UNACKED_INDEX, {"t1": 1.0})  # the delivery's lease, as kombu records it
    with pytest.raises(LeaseLost):
        runner.run("j", str(path), tag="t1")
    doc = store.get("j")
    assert doc is not None
    assert (doc["status"], doc["attempts"]) == ("running", 1)  # its last write was the attempt's start
    assert lease.BOOK.get("t1") is None
