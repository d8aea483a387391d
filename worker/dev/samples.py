"""Small sample media files, generated on the spot for the demo and the tests."""

from __future__ import annotations

import io
import math
import os
import struct
import uuid
import wave
import zlib
from pathlib import Path


def png_bytes(width: int = 64, height: int = 64, comment: str = "") -> bytes:
    """A real PNG: a colour gradient; with ``comment``, a ``tEXt`` chunk holding it (other bytes, same picture)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 4 % 256, y * 4 % 256, 128)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    text = chunk(b"tEXt", b"Comment\x00" + comment.encode("latin-1")) if comment else b""
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + text + chunk(b"IEND", b"")
    )


def wav_bytes(seconds: float = 0.5, rate: int = 16000) -> bytes:
    """A real WAV: a 440 Hz tone."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        frames = (int(12000 * math.sin(2 * math.pi * 440 * n / rate)) for n in range(int(seconds * rate)))
        out.writeframes(b"".join(struct.pack("<h", f) for f in frames))
    return buffer.getvalue()


def mp4_bytes(payload_size: int = 4096) -> bytes:
    """An ISO-BMFF file (ftyp + mdat boxes): sniffs as MP4, carries random bytes."""
    ftyp = b"isom" + struct.pack(">I", 512) + b"isomiso2mp41"
    mdat = os.urandom(payload_size)
    return struct.pack(">I", 8 + len(ftyp)) + b"ftyp" + ftyp + struct.pack(">I", 8 + len(mdat)) + b"mdat" + mdat


def write_samples(directory: Path) -> dict[str, Path]:
    """Three valid media files and two that must be refused."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "sunset.png": png_bytes(),
        "tone.wav": wav_bytes(),
        "clip.mp4": mp4_bytes(),
        "notes.txt": b"not media\n",
        "fake.png": b"this is text pretending to be a PNG\n",
    }
    paths = {}
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        paths[name] = path
    return paths


def distinct_pngs(directory: Path, count: int) -> list[Path]:
    """``count`` small PNGs with distinct names and bytes: each upload names its job, and no
    job is answered by deduplication (each carries its own name as a comment, so no other call's
    file, nor any other ``png_bytes`` of the same size, has its bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        path = directory / f"{uuid.uuid4().hex[:8]}-{n:05d}.png"
        path.write_bytes(png_bytes(4 + n % 60, 4 + n // 60, comment=path.name))
        paths.append(path)
    return paths
