"""Finding what a batch is made of: directory trees, manifests, object-store prefixes.

Used by ``wsupload ingest`` and by scheduled scans. Each found source carries a
``version`` (a file's size and modification time, an object's ETag) so a scan
can tell new or changed sources from ones it has already enqueued.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from wsupload.config.parsers import split_store_url
from wsupload.config.settings import Settings
from wsupload.errors import InvalidInput
from wsupload.tasks.sources import formats
from wsupload.tasks.sources.local_files import resolved
from wsupload.tasks.sources.object_store import S3Store


@dataclass(frozen=True)
class Found:
    source: str
    size: int | None = None
    version: str | None = None


def matches(relative: str, patterns: Sequence[str]) -> bool:
    """No patterns: any supported media file. A pattern without '/' matches the file name."""
    if not patterns:
        return formats.media_kind(relative) is not None
    name = relative.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(relative if "/" in p else name, p.removeprefix("**/")) for p in patterns)


def walk_directory(root: Path, patterns: Sequence[str] = ()) -> Iterator[Found]:
    """Regular files below ``root`` (symlinks not followed), in a stable order."""
    root = resolved(str(root), root)
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in sorted(files):
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            if not matches(relative, patterns):
                continue
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode):  # lstat: a symlink is not a regular file
                continue
            yield Found(str(path), info.st_size, f"{info.st_size}:{info.st_mtime_ns}")


def read_manifest(path: Path) -> Iterator[str]:
    """Sources from a manifest: CSV (a ``source`` column, else the first), JSONL (``source``), or one per line."""
    suffix = path.suffix.lower()
    with open(path, newline="", encoding="utf-8") as handle:
        if suffix == ".csv":
            reader = csv.reader(handle)
            header = next(reader, [])
            column = header.index("source") if "source" in header else 0
            if "source" not in header and header:
                yield header[0]
            for row in reader:
                if row and row[column].strip():
                    yield row[column].strip()
        elif suffix in (".jsonl", ".ndjson"):
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    source = json.loads(line)["source"]
                except (ValueError, KeyError, TypeError):
                    raise InvalidInput(f"{path}:{number}: expected a JSON object with a 'source' field") from None
                yield str(source)
        else:
            for line in handle:
                line = line.strip()
                if line and not line.startswith("#"):
                    yield line


def discover(spec: str, settings: Settings, patterns: Sequence[str] = ()) -> Iterator[Found]:
    """Expand one command-line source: a directory, an ``s3://bucket/prefix/``, or a single source."""
    if spec.startswith("s3://"):
        _, bucket, prefix = split_store_url(spec)
        if not prefix or prefix.endswith("/"):
            for key, size, etag in S3Store(settings).list_objects(bucket, prefix):
                if matches(key, patterns):
                    yield Found(f"s3://{bucket}/{key}", size, etag)
            return
        yield Found(spec)
        return
    if "://" not in spec and Path(spec).is_dir():
        yield from walk_directory(Path(spec), patterns)
        return
    yield single(spec)


def single(source: str) -> Found:
    """One source as given; its size when it is a local file we can see."""
    try:
        return Found(source, os.stat(source).st_size if "://" not in source else None)
    except OSError:
        return Found(source)
