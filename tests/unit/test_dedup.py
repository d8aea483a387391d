"""Deduplication and job options."""

from datetime import timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from wsupload.config import Settings
from wsupload.errors import InvalidInput
from wsupload.tasks.job import JobRunner
from wsupload.tasks.sources.media import OpenedSource
from wsupload.tasks.store import results
from wsupload.tasks.store.dedup import DedupStore, dedup_key
from wsupload.tasks.store.results import ResultStore
from wsupload.tasks.wire.options import JobOptions
from wsupload.worker.dev.samples import png_bytes

NOW = results.utcnow()


class CountingClient:
    def __init__(self) -> None:
        self.calls = 0

    def upload(self, source: OpenedSource) -> dict[str, Any]:
        self.calls += 1
        return {"type": "image", "download_url": f"https://cdn/{self.calls}.png", "filename": "a.png", "size": 1}


def runner(store: ResultStore, client: CountingClient, **env: str) -> JobRunner:
    settings = Settings.from_env({"WAVESPEED_API_KEY": "sk-dedup-test", **env})
    return JobRunner(settings=settings, store=store, client=client)


@pytest.fixture
def two_copies(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "a.png").write_bytes(png_bytes())
    (tmp_path / "copy.png").write_bytes(png_bytes())
    return str(tmp_path / "a.png"), str(tmp_path / "copy.png")


def test_the_same_bytes_are_uploaded_once(store: ResultStore, two_copies: tuple[str, str]) -> None:
    client = CountingClient()
    job = runner(store, client)
    first = job.run("j1", two_copies[0], JobOptions(dedup=True))
    second = job.run("j2", two_copies[1], JobOptions(dedup=True))
    assert client.calls == 1
    assert second["status"] == "succeeded"
    assert second["result"]["download_url"] == first["result"]["download_url"]
    assert (second["result"]["reused"], second["result"]["reused_from"]) == (True, "j1")
    assert second["expires_at"] == first["expires_at"]  # the original upload's expiry, not a new one
    assert second["attempts"] == 0


def test_without_the_option_bytes_are_uploaded_again(store: ResultStore, two_copies: tuple[str, str]) -> None:
    client = CountingClient()
    job = runner(store, client)
    job.run("j1", two_copies[0], JobOptions(dedup=True))
    job.run("j2", two_copies[1])
    assert client.calls == 2


def test_a_url_expiring_within_the_margin_is_not_reused(store: ResultStore, two_copies: tuple[str, str]) -> None:
    client = CountingClient()
    # Retention 2 days, margin 1 day: fine now. Margin 3 days: never reusable, never even kept.
    runner(store, client, WSUPLOAD_RETENTION="2d", WSUPLOAD_DEDUP_MARGIN="3d").run(
        "j1", two_copies[0], JobOptions(True)
    )
    assert store.redis.keys("wsupload:dedup:*") == []
    runner(store, client, WSUPLOAD_RETENTION="2d", WSUPLOAD_DEDUP_MARGIN="3d").run(
        "j2", two_copies[1], JobOptions(True)
    )
    assert client.calls == 2


def test_find_honours_the_margin(redis_client: fakeredis.FakeRedis) -> None:
    dedup = DedupStore(redis_client, margin=3600)
    expires = results.isoformat(NOW + timedelta(hours=2))
    dedup.remember("abc", "j1", {"download_url": "u"}, expires, NOW)
    assert 3500 < redis_client.ttl(dedup_key("abc")) <= 3600  # gone from Redis at the margin
    assert dedup.find("abc", NOW) is not None
    assert dedup.find("abc", NOW + timedelta(minutes=61)) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, JobOptions()),
        ({}, JobOptions()),
        ({"dedup": True}, JobOptions(dedup=True)),
        ({"callback_url": "https://x.test/cb"}, JobOptions(callback_url="https://x.test/cb")),
    ],
)
def test_options_parse(raw: object, expected: JobOptions) -> None:
    assert JobOptions.parse(raw) == expected
    assert JobOptions.parse(expected.to_message()) == expected


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ([1], "must be an object"),
        ({"dedupe": True}, "unknown options"),
        ({"dedup": "yes"}, "true or false"),
        ({"callback_url": "ftp://x"}, "http"),
        ({"callback_url": "https://"}, "has no host"),  # the settings' own URL check
        ({"callback_url": 5}, "got int"),
    ],
)
def test_bad_options_are_invalid_input(raw: object, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        JobOptions.parse(raw)
