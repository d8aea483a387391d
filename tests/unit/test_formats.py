"""Supported formats and content sniffing."""

import pytest

from wsupload.tasks.sources import formats
from wsupload.worker.dev.samples import mp4_bytes, png_bytes, wav_bytes

HEADS = {
    "jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF",
    "png": png_bytes()[:64],
    "webp": b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    "gif": b"GIF89a\x01\x00",
    "bmp": b"BM\x00\x00",
    "tiff": b"II*\x00\x08\x00",
    "mp4": mp4_bytes()[:64],
    "avi": b"RIFF\x00\x00\x00\x00AVI LIST",
    "mov": b"\x00\x00\x00\x14ftypqt  ",
    "wmv": b"\x30\x26\xb2\x75\x8e\x66\xcf\x11\xa6\xd9",
    "flv": b"FLV\x01\x05",
    "webm": b"\x1a\x45\xdf\xa3\x9f",
    "mkv": b"\x1a\x45\xdf\xa3\x9f",
    "3gp": b"\x00\x00\x00\x14ftyp3gp4",
    "ogv": b"OggS\x00\x02",
    "mp3": b"ID3\x04\x00",
    "wav": wav_bytes()[:64],
    "ogg": b"OggS\x00\x02",
    "aac": b"\xff\xf1\x50\x80",
    "flac": b"fLaC\x00",
    "m4a": b"\x00\x00\x00\x20ftypM4A ",
    "opus": b"OggS\x00\x02",
}


def test_every_format_on_the_api_page_is_supported() -> None:
    page = "jpg jpeg png webp gif bmp tiff mp4 avi mov wmv flv webm mkv 3gp ogv mp3 wav ogg aac flac m4a opus"
    assert set(page.split()) <= set(formats.SUPPORTED_EXTENSIONS)


@pytest.mark.parametrize("ext", sorted(HEADS))
def test_real_headers_sniff_as_their_extension(ext: str) -> None:
    assert formats.sniff_matches(f"file.{ext.upper()}", HEADS[ext])


@pytest.mark.parametrize(("name", "head"), [("a.png", HEADS["jpg"]), ("a.mp4", HEADS["png"]), ("a.wav", b"hello")])
def test_content_of_another_kind_is_refused(name: str, head: bytes) -> None:
    assert not formats.sniff_matches(name, head)


def test_kinds_and_content_types() -> None:
    assert formats.media_kind("x.JPG") == "image"
    assert formats.media_kind("x.mov") == "video"
    assert formats.media_kind("x.opus") == "audio"
    assert formats.media_kind("x.txt") is None
    assert formats.media_kind("noextension") is None
    assert formats.content_type("a.jpg") == "image/jpeg"
    assert formats.content_type("a.png") == "image/png"
