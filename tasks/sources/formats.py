"""Supported media formats (from the API page) and content sniffing by magic bytes.

Pure functions over a file name and its first bytes. A file is accepted only
when its extension is on the API page's list *and* its leading bytes look like a
container that extension may hold, so a text file renamed ``.png`` is refused
before any byte is sent.
"""

from __future__ import annotations

from collections.abc import Callable

SNIFF_BYTES = 64
"""How many leading bytes ``sniff_matches`` needs."""


def _riff(form: bytes) -> Callable[[bytes], bool]:
    return lambda head: head[:4] == b"RIFF" and head[8:12] == form


def _iso_bmff(head: bytes) -> bool:
    # MP4, MOV, M4A, 3GP: a box whose type is ftyp (or a bare QuickTime atom).
    return head[4:8] in {b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}


def _mp3(head: bytes) -> bool:
    return head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)


def _adts(head: bytes) -> bool:
    return head[:4] == b"ADIF" or head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0)


def _prefix(*prefixes: bytes) -> Callable[[bytes], bool]:
    return lambda head: any(head.startswith(p) for p in prefixes)


_JPEG = _prefix(b"\xff\xd8\xff")
_PNG = _prefix(b"\x89PNG\r\n\x1a\n")
_GIF = _prefix(b"GIF87a", b"GIF89a")
_BMP = _prefix(b"BM")
_TIFF = _prefix(b"II*\x00", b"MM\x00*")
_EBML = _prefix(b"\x1a\x45\xdf\xa3")  # Matroska and WebM
_ASF = _prefix(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11")  # WMV
_FLV = _prefix(b"FLV\x01")
_OGG = _prefix(b"OggS")
_FLAC = _prefix(b"fLaC")

# extension -> (media type the API reports, content check)
FORMATS: dict[str, tuple[str, Callable[[bytes], bool]]] = {
    "jpg": ("image", _JPEG),
    "jpeg": ("image", _JPEG),
    "png": ("image", _PNG),
    "webp": ("image", _riff(b"WEBP")),
    "gif": ("image", _GIF),
    "bmp": ("image", _BMP),
    "tiff": ("image", _TIFF),
    "tif": ("image", _TIFF),
    "mp4": ("video", _iso_bmff),
    "avi": ("video", _riff(b"AVI ")),
    "mov": ("video", _iso_bmff),
    "wmv": ("video", _ASF),
    "flv": ("video", _FLV),
    "webm": ("video", _EBML),
    "mkv": ("video", _EBML),
    "3gp": ("video", _iso_bmff),
    "ogv": ("video", _OGG),
    "mp3": ("audio", _mp3),
    "wav": ("audio", _riff(b"WAVE")),
    "ogg": ("audio", _OGG),
    "aac": ("audio", _adts),
    "flac": ("audio", _FLAC),
    "m4a": ("audio", _iso_bmff),
    "opus": ("audio", _OGG),
}

SUPPORTED_EXTENSIONS = tuple(sorted(FORMATS))


def extension_of(filename: str) -> str:
    return filename.rsplit(".", 1)[-1].lower() if "." in filename else ""


def media_kind(filename: str) -> str | None:
    """``image``, ``video`` or ``audio`` for a supported extension, else None."""
    entry = FORMATS.get(extension_of(filename))
    return entry[0] if entry else None


def sniff_matches(filename: str, head: bytes) -> bool:
    """True when the leading bytes fit the container the extension names."""
    entry = FORMATS.get(extension_of(filename))
    return entry is not None and entry[1](head)


_CONTENT_TYPES = {
    "jpg": "image/jpeg",
    "tif": "image/tiff",
    "mp3": "audio/mpeg",
    "mkv": "video/x-matroska",
    "mov": "video/quicktime",
    "avi": "video/x-msvideo",
    "wmv": "video/x-ms-wmv",
    "flv": "video/x-flv",
    "3gp": "video/3gpp",
    "ogv": "video/ogg",
    "m4a": "audio/mp4",
    "wav": "audio/wav",
}


def content_type(filename: str) -> str:
    ext = extension_of(filename)
    kind = media_kind(filename)
    if kind is None:
        return "application/octet-stream"
    return _CONTENT_TYPES.get(ext, f"{kind}/{ext}")
