"""Object-store URLs, allow-lists, the fsspec reader (memory://) and the oversize policy."""

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import fsspec
import pytest

from wsupload.config import Settings
from wsupload.errors import InvalidInput, SourceUnavailable, StoreError
from wsupload.tasks.job import JobRunner
from wsupload.tasks.sources.media import OpenedSource
from wsupload.tasks.sources.object_store import FsspecStore, ObjectURL, bucket_allowed, parse_object_url
from wsupload.tasks.sources.opener import SourceOpener
from wsupload.tasks.store.results import ResultStore
from wsupload.worker.dev.samples import png_bytes

DATA = {"type": "image", "download_url": "https://cdn/x.png", "filename": "x.png", "size": 1}


@pytest.fixture
def memfs() -> Iterator[Any]:
    fs = fsspec.filesystem("memory")
    fs.pipe("/media/ok.png", png_bytes())
    fs.pipe("/media/fake.png", b"text")
    fs.pipe("/media/empty.png", b"")
    yield fs
    fs.rm("/media", recursive=True)


def test_parse_object_url() -> None:
    assert parse_object_url("s3://bucket/dir/a.png") == ObjectURL("s3", "bucket", "dir/a.png")
    assert parse_object_url("s3://bucket/dir/a.png").filename == "a.png"
    for bad in ("s3://", "s3://bucket", "s3://bucket/", "s3://b/dir/", "s3://bu/a.png::file:///etc/x"):
        with pytest.raises(InvalidInput):
            parse_object_url(bad)


@pytest.mark.parametrize(
    ("url", "allowed", "expected"),
    [
        ("s3://media/a.png", (), True),
        ("s3://media/a.png", ("s3://media",), True),
        ("s3://media-evil/a.png", ("s3://media",), False),
        ("s3://media/in/a.png", ("s3://media/in",), True),
        ("s3://media/inbox/a.png", ("s3://media/in",), False),
        ("s3://media/a.png", ("gs://media",), False),
        ("gs://media/a.png", ("s3://other", "gs://media"), True),
    ],
)
def test_bucket_allow_list(url: str, allowed: tuple[str, ...], expected: bool) -> None:
    assert bucket_allowed(parse_object_url(url), allowed) is expected


def test_allow_list_is_checked_before_the_store_is_asked() -> None:
    opener = SourceOpener(Settings.from_env({"WSUPLOAD_ALLOWED_BUCKETS": "media/in"}))
    with pytest.raises(InvalidInput, match="outside WSUPLOAD_ALLOWED_BUCKETS"):
        opener.open("s3://secrets/key.png")


def test_fsspec_store_streams_a_valid_object(memfs: Any) -> None:
    with FsspecStore("memory").open(ObjectURL("memory", "media", "ok.png")) as opened:
        assert (opened.size, opened.media_kind, opened.filename) == (len(png_bytes()), "image", "ok.png")
        assert opened.open_stream().read(-1) == png_bytes()
        assert opened.open_stream().read(-1) == png_bytes()  # a fresh stream per attempt
        assert opened.presign is None  # the memory store cannot sign URLs


@pytest.mark.parametrize(
    ("key", "error", "needle"),
    [
        ("missing.png", SourceUnavailable, "no such object"),
        ("fake.png", InvalidInput, "does not look like a .png file"),
        ("empty.png", InvalidInput, "is empty"),
        ("notes.txt", InvalidInput, "supported extension"),
    ],
)
def test_fsspec_store_refuses_bad_objects(memfs: Any, key: str, error: type, needle: str) -> None:
    with pytest.raises(error, match=needle):
        FsspecStore("memory").open(ObjectURL("memory", "media", key))


def test_unknown_fsspec_protocol_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="cannot read nosuchproto://"):
        FsspecStore("nosuchproto")


class OneUpload:
    def __init__(self) -> None:
        self.calls = 0

    def upload(self, source: OpenedSource) -> dict[str, Any]:
        self.calls += 1
        return DATA


def runner(store: ResultStore, **env: str) -> tuple[JobRunner, OneUpload]:
    client = OneUpload()
    settings = Settings.from_env({"WAVESPEED_API_KEY": "sk-unit-key", "WSUPLOAD_FSSPEC_PROTOCOLS": "memory", **env})
    return JobRunner(settings=settings, store=store, client=client, sleep=lambda _: None), client


def test_an_object_source_goes_through_the_job(store: ResultStore, memfs: Any) -> None:
    job, client = runner(store)
    doc = job.run("j", "memory://media/ok.png")
    assert (doc["status"], doc["result"]["method"], client.calls) == ("succeeded", "upload", 1)


def test_too_large_is_refused_before_uploading(store: ResultStore, tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes())
    job, client = runner(store, WSUPLOAD_MAX_BYTES="100")
    doc = job.run("j", str(path))
    assert (doc["error"]["kind"], client.calls) == ("too_large", 0)
    assert "over the limit of 100 bytes (WSUPLOAD_MAX_BYTES)" in doc["error"]["message"]


def test_presign_policy_needs_a_store_that_can_sign(store: ResultStore, memfs: Any) -> None:
    job, client = runner(store, WSUPLOAD_MAX_BYTES="100", WSUPLOAD_OVERSIZE_POLICY="presign")
    doc = job.run("j", "memory://media/ok.png")
    assert (doc["error"]["kind"], client.calls) == ("too_large", 0)
    assert "cannot presign" in doc["error"]["message"]


def signed_source(size: int) -> OpenedSource:
    return OpenedSource(
        source="s3://media/big.mp4",
        filename="big.mp4",
        size=size,
        media_kind="video",
        content_type="video/mp4",
        open_stream=lambda: pytest.fail("a presigned job must not read the object"),
        presign=lambda ttl: f"https://store.example/media/big.mp4?X-Amz-Expires={ttl}",
    )


def test_presign_policy_returns_a_url_instead_of_uploading(store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> None:
    job, client = runner(store, WSUPLOAD_MAX_BYTES="100", WSUPLOAD_OVERSIZE_POLICY="presign", WSUPLOAD_PRESIGN_TTL="2h")
    monkeypatch.setattr(job.opener, "open", lambda source: signed_source(10_000))
    doc = job.run("j", "s3://media/big.mp4")
    assert client.calls == 0
    assert doc["status"] == "succeeded"
    assert doc["attempts"] == 0
    assert doc["result"] == {
        "type": "video",
        "download_url": "https://store.example/media/big.mp4?X-Amz-Expires=7200",
        "filename": "big.mp4",
        "size": 10_000,
        "method": "presigned_url",
    }
    finished = datetime.fromisoformat(doc["finished_at"])
    assert (datetime.fromisoformat(doc["expires_at"]) - finished).total_seconds() == 7200


def test_transient_store_errors_while_opening_are_retried(store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> None:
    job, client = runner(store)
    answers: list[Any] = [StoreError("SlowDown", 503), StoreError("timeout"), signed_source(10)]

    def flaky(source: str) -> OpenedSource:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    monkeypatch.setattr(job.opener, "open", flaky)
    doc = job.run("j", "s3://media/big.mp4")
    assert (doc["status"], client.calls, answers) == ("succeeded", 1, [])


def test_store_errors_past_the_attempt_budget_end_the_job(store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> None:
    job, client = runner(store, WSUPLOAD_MAX_ATTEMPTS="2")

    def down(source: str) -> OpenedSource:
        raise StoreError("s3://media/a.png: the store answered 503 (SlowDown)", 503)

    monkeypatch.setattr(job.opener, "open", down)
    doc = job.run("j", "s3://media/a.png")
    assert client.calls == 0
    assert (doc["error"]["kind"], doc["error"]["http_status"]) == ("retries_exhausted", 503)
    assert "SlowDown" in doc["error"]["message"]
