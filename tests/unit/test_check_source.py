"""``wsupload.check_source``: a producer refuses, before enqueueing, what the workers would refuse."""

from pathlib import Path

import pytest

from wsupload import InvalidInput, Settings, SourceNotAllowed, check_source
from wsupload.worker.dev.samples import png_bytes


@pytest.fixture
def root(tmp_path: Path) -> Path:
    inside = tmp_path / "media"
    inside.mkdir()
    (inside / "cat.png").write_bytes(png_bytes())
    (tmp_path / "outside.png").write_bytes(png_bytes())
    (inside / "link.png").symlink_to(tmp_path / "outside.png")
    return inside


def settings_for(root: Path, **env: str) -> Settings:
    return Settings.from_env({"WSUPLOAD_ALLOWED_ROOTS": str(root), "WSUPLOAD_ALLOWED_BUCKETS": "s3://media", **env})


def test_sources_inside_the_allowed_places_pass(root: Path) -> None:
    settings = settings_for(root)
    check_source(str(root / "cat.png"), settings)
    check_source(f"file://{root / 'cat.png'}", settings)
    check_source("s3://media/in/cat.png", settings)


@pytest.mark.parametrize("name", ["../outside.png", "link.png"], ids=["dot-dot escape", "symlink out"])
def test_a_path_that_resolves_outside_the_roots_is_not_allowed(root: Path, name: str) -> None:
    with pytest.raises(SourceNotAllowed, match="outside WSUPLOAD_ALLOWED_ROOTS"):
        check_source(f"{root}/{name}", settings_for(root))


def test_a_bucket_not_listed_is_not_allowed(root: Path) -> None:
    with pytest.raises(SourceNotAllowed, match="outside WSUPLOAD_ALLOWED_BUCKETS"):
        check_source("s3://elsewhere/cat.png", settings_for(root))


def test_an_unset_allow_list_refuses_its_kind_unless_told_it_admits_all(root: Path) -> None:
    open_settings = Settings.from_env({})
    with pytest.raises(SourceNotAllowed, match="WSUPLOAD_ALLOWED_ROOTS is unset"):
        check_source(str(root / "cat.png"), open_settings)
    with pytest.raises(SourceNotAllowed, match="WSUPLOAD_ALLOWED_BUCKETS is unset"):
        check_source("s3://media/cat.png", open_settings)
    check_source(str(root / "cat.png"), open_settings, unset_allows_all=True)
    check_source("s3://any/cat.png", open_settings, unset_allows_all=True)


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("", "empty"),
        ("relative/cat.png", "absolute"),
        ("https://example.com/cat.png", "unsupported source"),
        ("{root}/missing.png", "not a file"),
        ("{root}/notes.txt", "txt"),
    ],
)
def test_malformed_sources_are_invalid_input_not_a_refusal_of_place(root: Path, source: str, says: str) -> None:
    (root / "notes.txt").write_text("hello")
    with pytest.raises(InvalidInput, match=says) as caught:
        check_source(source.format(root=root), settings_for(root))
    assert not isinstance(caught.value, SourceNotAllowed)


def test_a_loop_of_symbolic_links_is_invalid_input(root: Path) -> None:
    (root / "loop.png").symlink_to(root / "loop.png")
    with pytest.raises(InvalidInput, match="its symbolic links form a loop"):
        check_source(str(root / "loop.png"), settings_for(root))
