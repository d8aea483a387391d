"""Which reader a job's source goes to: local path, ``s3://`` key or an fsspec store.

``SourceOpener.open`` checks the source against the allow-lists before any
store is asked anything, then hands it to the reader for its scheme. Store
clients are built once per worker process, on first use.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

from wsupload.config.settings import Settings
from wsupload.errors import InvalidInput
from wsupload.tasks.sources.local_files import open_local
from wsupload.tasks.sources.media import OpenedSource
from wsupload.tasks.sources.object_store import FsspecStore, S3Store, bucket_allowed, parse_object_url


def scheme_of(source: str) -> str:
    return urlsplit(source).scheme.lower() if "://" in source or source.startswith("file:") else ""


class SourceOpener:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._s3: S3Store | None = None
        self._fsspec: dict[str, FsspecStore] = {}
        # The upload threads share this opener: each store's client is built once, by one of them.
        self._building = threading.Lock()

    def open(self, source: object) -> OpenedSource:
        if not isinstance(source, str) or not source.strip():
            raise InvalidInput("the source is empty")
        if "\x00" in source:
            raise InvalidInput("the source contains a NUL character")
        scheme = scheme_of(source)
        if scheme in ("", "file"):
            return open_local(source, self.settings.allowed_roots)
        if scheme != "s3" and scheme not in self.settings.fsspec_protocols:
            raise InvalidInput(
                f"unsupported source scheme {scheme!r}: expected an absolute file path, file://, s3://"
                + "".join(f", {p}://" for p in self.settings.fsspec_protocols)
            )
        url = parse_object_url(source)
        if not bucket_allowed(url, self.settings.allowed_buckets):
            raise InvalidInput(f"{source!r} is outside WSUPLOAD_ALLOWED_BUCKETS")
        if scheme == "s3":
            return self._s3_store().open(url)
        return self._fsspec_store(scheme).open(url)

    def _s3_store(self) -> S3Store:
        if self._s3 is None:
            with self._building:
                if self._s3 is None:
                    self._s3 = S3Store(self.settings)
        return self._s3

    def _fsspec_store(self, scheme: str) -> FsspecStore:
        store = self._fsspec.get(scheme)
        if store is None:
            with self._building:
                store = self._fsspec.get(scheme)
                if store is None:
                    store = self._fsspec[scheme] = FsspecStore(scheme)
        return store
