"""Source validation: every bad input refused, with a readable message, before sending."""

import concurrent.futures
import os
import threading
import time
from pathlib import Path

import pytest

from wsupload.config import Settings
from wsupload.errors import InvalidInput, SourceChanged
from wsupload.tasks.sources import opener as opener_module
from wsupload.tasks.sources.local_files import open_local
from wsupload.tasks.sources.media import OpenedSource
from wsupload.tasks.sources.opener import SourceOpener
from wsupload.tasks.wavespeed.multipart import MultipartBody
from wsupload.worker.dev.samples import png_bytes


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "ok.png"
    path.write_bytes(png_bytes())
    return path


def open_source(source: str, **env: str) -> OpenedSource:
    return SourceOpener(Settings.from_env(env)).open(source)


def test_a_valid_file_streams_from_its_first_byte_each_time(png: Path) -> None:
    with open_local(str(png)) as opened:
        assert (opened.filename, opened.size, opened.media_kind) == ("ok.png", png.stat().st_size, "image")
        assert opened.content_type == "image/png"
        assert opened.open_stream().read() == png.read_bytes()
        assert opened.open_stream().read() == png.read_bytes()


def test_file_urls_are_accepted(png: Path) -> None:
    with open_source(png.as_uri()) as opened:
        assert opened.size == png.stat().st_size


def refused(source: str, match: str, allowed_roots: tuple[Path, ...] = ()) -> None:
    roots = {"WSUPLOAD_ALLOWED_ROOTS": ":".join(map(str, allowed_roots))}
    with pytest.raises(InvalidInput, match=match) as caught:
        open_source(source, **roots)
    assert caught.value.kind == "invalid_input"
    assert not caught.value.retryable


def test_missing_file(tmp_path: Path) -> None:
    refused(str(tmp_path / "gone.png"), "does not exist")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.png").mkdir()
    refused(str(tmp_path / "dir.png"), "not a regular file")


def test_fifo_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    refused(str(tmp_path / "pipe.png"), "not a regular file")


def test_unreadable(png: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As root chmod 000 still reads, so simulate the kernel's answer.
    def deny(*args: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", deny)
    refused(str(png), "not readable")


def test_empty(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    refused(str(tmp_path / "empty.png"), "is empty")


def test_unsupported_extension(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_bytes(b"hello")
    refused(str(tmp_path / "notes.txt"), "does not have a supported extension")


def test_content_not_matching_extension(tmp_path: Path) -> None:
    (tmp_path / "fake.png").write_bytes(b"just text")
    refused(str(tmp_path / "fake.png"), r"does not look like a \.png file")


def test_relative_path() -> None:
    refused("media/ok.png", "not an absolute path")


@pytest.mark.parametrize(
    "source", ["", "   ", "http://example.com/a.png", "s3://bucket/", "s3://b/x.png::file:///etc/passwd", "/a\x00b.png"]
)
def test_malformed_sources(source: str) -> None:
    refused(source, ".")


def test_outside_allowed_roots(tmp_path: Path, png: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    refused(str(png), "outside WSUPLOAD_ALLOWED_ROOTS", allowed_roots=(root.resolve(),))


def test_symlink_escape(tmp_path: Path, png: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape.png").symlink_to(png)
    refused(str(root / "escape.png"), "outside WSUPLOAD_ALLOWED_ROOTS", allowed_roots=(root.resolve(),))


@pytest.mark.parametrize("roots", [(), ("root",)])
def test_a_loop_of_symbolic_links_is_invalid_input_not_an_internal_error(
    tmp_path: Path, roots: tuple[str, ...]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.png").symlink_to(root / "b.png")
    (root / "b.png").symlink_to(root / "a.png")
    allowed = tuple((tmp_path / name).resolve() for name in roots)
    refused(str(root / "a.png"), "cannot be resolved: its symbolic links form a loop", allowed_roots=allowed)


def test_dotdot_escape(tmp_path: Path, png: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    refused(f"{root}/../ok.png", "outside WSUPLOAD_ALLOWED_ROOTS", allowed_roots=(root.resolve(),))


def test_outside_roots_does_not_reveal_existence(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    refused(str(tmp_path / "missing.png"), "outside WSUPLOAD_ALLOWED_ROOTS", allowed_roots=(root.resolve(),))


def test_inside_allowed_roots_through_a_symlinked_root(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "in.png").write_bytes(png_bytes())
    (tmp_path / "link").symlink_to(real)
    with open_local(str(tmp_path / "link" / "in.png"), allowed_roots=(real.resolve(),)) as opened:
        assert opened.filename == "in.png"


def send(opened: OpenedSource) -> bytes:
    """Drain one attempt's body as the HTTP client would."""
    body = MultipartBody.for_source(opened, field="file")
    sent = b""
    while chunk := body.read(64):
        sent += chunk
    return sent


def test_an_unchanged_file_passes_its_check_on_every_attempt(png: Path) -> None:
    with open_local(str(png)) as opened:
        assert opened.check_unchanged is not None
        assert png.read_bytes() in send(opened)
        assert png.read_bytes() in send(opened)


def test_a_file_that_grew_since_it_was_opened_has_changed(png: Path) -> None:
    with open_local(str(png)) as opened:
        with png.open("ab") as more:
            more.write(b"appended")
        with pytest.raises(SourceChanged, match=rf"it was {opened.size} bytes when opened, {opened.size + 8} now"):
            send(opened)


def test_a_file_that_shrank_since_it_was_opened_has_changed(png: Path) -> None:
    with open_local(str(png)) as opened:
        os.truncate(png, opened.size - 10)
        with pytest.raises(SourceChanged, match=rf"it was {opened.size} bytes when opened, {opened.size - 10} now"):
            send(opened)


def test_a_file_rewritten_at_the_same_size_has_changed(png: Path) -> None:
    with open_local(str(png)) as opened:
        # Same size, new modification time (set explicitly: two writes can share one clock tick).
        info = png.stat()
        os.utime(png, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))
        assert png.stat().st_size == opened.size
        with pytest.raises(SourceChanged, match="modified since it was opened") as caught:
            send(opened)
    assert (caught.value.kind, caught.value.retryable) == ("source_changed", True)


def test_the_check_is_of_the_open_file_not_whatever_has_its_path_now(png: Path, tmp_path: Path) -> None:
    # Replacing the path (write a new file, rename over) leaves the opened file intact:
    # what is sent is still one consistent file, so it is not a change.
    original = png.read_bytes()
    with open_local(str(png)) as opened:
        replacement = tmp_path / "new.png"
        replacement.write_bytes(original + b"longer")
        replacement.rename(png)
        assert original in send(opened)


def test_threads_opening_s3_sources_at_once_build_one_client(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []
    started = threading.Barrier(8)

    class SlowStore:
        def __init__(self, settings: Settings) -> None:
            time.sleep(0.05)  # building a boto3 client takes a while: the race's window
            built.append(self)

        def open(self, url: object) -> str:
            return "opened"

    monkeypatch.setattr(opener_module, "S3Store", SlowStore)
    opener = opener_module.SourceOpener(Settings())

    def open_one() -> object:
        started.wait()
        return opener.open("s3://media/a.png")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        opened = list(pool.map(lambda _: open_one(), range(8)))
    assert opened == ["opened"] * 8
    assert len(built) == 1
