"""Object-store sources: ``s3://bucket/key`` through boto3, other stores through fsspec.

boto3 for S3 because it streams an object in one GET (``StreamingBody``), pins
the object with ``If-Match`` between validation and upload, names its errors
(NoSuchBucket, AccessDenied, SlowDown) and presigns URLs itself. Its own retries
are turned off: the job's retry policy is the only one, so attempts and backoff
mean the same thing for a store as for the API. fsspec (optional) reaches
``gs://``, ``az://`` and the like where their packages are installed.

Credentials come from the store's standard chain on the worker (environment,
profile, instance role). Nothing here puts a credential into a message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from wsupload.config.parsers import split_store_url
from wsupload.config.settings import Settings
from wsupload.errors import InvalidInput, SourceUnavailable, StoreError, UploadError
from wsupload.tasks.sources import formats
from wsupload.tasks.sources.media import OpenedSource, Readable, require_content, require_media_kind

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$", re.IGNORECASE)


@dataclass(frozen=True)
class ObjectURL:
    scheme: str
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"

    @property
    def filename(self) -> str:
        return self.key.rsplit("/", 1)[-1]


def parse_object_url(source: str) -> ObjectURL:
    if "::" in source:
        # fsspec chains ("simplecache::s3://…", "zip://…::file://…") could reach local files.
        raise InvalidInput(f"{source!r}: chained URLs are not accepted")
    scheme, bucket, key = split_store_url(source)
    if not _BUCKET.match(bucket):
        raise InvalidInput(f"{source!r} does not name a valid bucket (expected {scheme}://bucket/key)")
    if not key or key.endswith("/"):
        raise InvalidInput(f"{source!r} does not name an object (expected {scheme}://bucket/key)")
    return ObjectURL(scheme, bucket, key)


def bucket_allowed(url: ObjectURL, allowed: Sequence[str]) -> bool:
    """True when ``allowed`` is empty or one entry covers the object.

    A prefix matches on whole path segments: ``s3://b/in`` covers ``s3://b/in/x.png``,
    not ``s3://b/inbox/x.png``; ``s3://b`` does not cover bucket ``b-other``.
    """
    if not allowed:
        return True
    for entry in allowed:
        scheme, bucket, prefix = split_store_url(entry)
        if scheme != url.scheme or bucket != url.bucket:
            continue
        if not prefix or url.key == prefix or url.key.startswith(prefix + "/"):
            return True
    return False


class _CheckedStream:
    """A store's byte stream that turns read failures and early ends into StoreError."""

    def __init__(self, raw: Any, size: int, url: ObjectURL, errors: tuple[type[BaseException], ...]) -> None:
        self._raw = raw
        self._left = size
        self._url = url
        self._errors = errors

    def read(self, size: int = -1, /) -> bytes:
        try:
            block: bytes = self._raw.read(size if size >= 0 else None)
        except self._errors as exc:
            raise StoreError(f"reading {self._url} failed mid-stream: {exc}") from None
        self._left -= len(block)
        if not block and self._left > 0:
            raise StoreError(f"{self._url} ended {self._left} bytes early")
        return block

    def close(self) -> None:
        self._raw.close()


def _opened(
    url: ObjectURL,
    kind: str,
    size: int,
    open_raw: Callable[[], Any],
    errors: tuple[type[BaseException], ...],
    presign: Callable[[int], str] | None,
) -> OpenedSource:
    current: list[_CheckedStream] = []

    def open_stream() -> Readable:
        release()
        current.append(_CheckedStream(open_raw(), size, url, errors))
        return current[-1]

    def release() -> None:
        while current:
            current.pop().close()

    return OpenedSource(
        source=str(url),
        filename=url.filename,
        size=size,
        media_kind=kind,
        content_type=formats.content_type(url.filename),
        open_stream=open_stream,
        release=release,
        presign=presign,
    )


class S3Store:
    """One boto3 client per worker process, shared by its upload threads (boto3 clients are thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        import boto3
        import botocore.config
        import botocore.exceptions as bx

        config = botocore.config.Config(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retries={"total_max_attempts": 1},
            s3={"addressing_style": settings.s3_addressing_style},
            signature_version="s3v4",
            # One client serves every upload thread: a connection each, not botocore's 10 shared.
            max_pool_connections=settings.concurrency,
        )
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region, config=config
        )
        self._bx = bx
        self._stream_errors: tuple[type[BaseException], ...] = (bx.BotoCoreError, OSError)

    def open(self, url: ObjectURL) -> OpenedSource:
        kind = require_media_kind(url.filename)  # before asking the store anything
        head = self._call(url, self._client.head_object, Bucket=url.bucket, Key=url.key)
        size, etag = int(head["ContentLength"]), head["ETag"]
        first = b""
        if size:
            ranged = self._call(
                url,
                self._client.get_object,
                Bucket=url.bucket,
                Key=url.key,
                IfMatch=etag,
                Range=f"bytes=0-{formats.SNIFF_BYTES - 1}",
            )
            first = ranged["Body"].read()
        require_content(str(url), url.filename, size, first)

        def open_raw() -> Any:
            # If-Match: upload exactly the object that was validated.
            return self._call(url, self._client.get_object, Bucket=url.bucket, Key=url.key, IfMatch=etag)["Body"]

        def presign(ttl: int) -> str:
            params = {"Bucket": url.bucket, "Key": url.key}
            return str(self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl))

        return _opened(url, kind, size, open_raw, self._stream_errors, presign)

    def list_objects(self, bucket: str, prefix: str) -> Iterator[tuple[str, int, str]]:
        """(key, size, etag) of every object under ``prefix``; folder markers skipped."""
        where = ObjectURL("s3", bucket, prefix or "")
        paginator = self._client.get_paginator("list_objects_v2")
        pages = self._call(where, lambda: iter(paginator.paginate(Bucket=bucket, Prefix=prefix)))
        while True:
            page = self._call(where, lambda: next(pages, None))
            if page is None:
                return
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):
                    yield item["Key"], int(item["Size"]), str(item["ETag"])

    def _call(self, url: ObjectURL, method: Callable[..., Any], **params: Any) -> Any:
        bx = self._bx
        try:
            return method(**params)
        except bx.ClientError as exc:
            raise self._client_error(url, exc) from None
        except bx.NoCredentialsError:
            raise SourceUnavailable(f"{url}: the worker has no credentials for S3") from None
        except (bx.BotoCoreError, OSError) as exc:
            raise StoreError(f"{url}: the store could not be reached: {exc}") from None

    def _client_error(self, url: ObjectURL, exc: Any) -> UploadError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        detail = f"{code}: {error.get('Message', '')}".strip(": ")
        if status in (404,) or code in ("NoSuchKey", "NoSuchBucket", "NotFound", "404"):
            if code == "NoSuchBucket" or not self._bucket_exists(url):
                return SourceUnavailable(f"{url}: no such bucket {url.bucket!r}")
            return SourceUnavailable(f"{url}: no such object")
        if status == 412 or code == "PreconditionFailed":
            return SourceUnavailable(f"{url}: the object changed while the job ran; enqueue it again")
        if status == 429 or status >= 500 or code in ("SlowDown", "RequestTimeout", "Throttling"):
            return StoreError(f"{url}: the store answered {status} ({detail or 'no detail'})", status)
        if status == 403 or code in ("AccessDenied", "Forbidden", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return SourceUnavailable(f"{url}: access denied ({detail or 'HTTP 403'})")
        return SourceUnavailable(f"{url}: the store refused the request ({status} {detail})")

    def _bucket_exists(self, url: ObjectURL) -> bool:
        try:
            self._client.head_bucket(Bucket=url.bucket)
        except self._bx.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return bool(status != 404)
        except (self._bx.BotoCoreError, OSError):
            return True
        return True


class FsspecStore:
    """Any fsspec protocol the worker has a package for (gcsfs, adlfs, …)."""

    BLOCK = 1024 * 1024

    def __init__(self, protocol: str) -> None:
        try:
            import fsspec

            self._fs = fsspec.filesystem(protocol)
        except (ImportError, ValueError) as exc:
            raise InvalidInput(f"the worker cannot read {protocol}:// sources: {exc}") from None

    def open(self, url: ObjectURL) -> OpenedSource:
        kind = require_media_kind(url.filename)  # before asking the store anything
        path = f"{url.bucket}/{url.key}"
        info = self._call(url, self._fs.info, path)
        size = int(info.get("size") or 0)
        head = self._call(url, self._fs.cat_file, path, start=0, end=formats.SNIFF_BYTES) if size else b""
        require_content(str(url), url.filename, size, head)

        def open_raw() -> Any:
            return self._call(url, self._fs.open, path, "rb", block_size=self.BLOCK)

        presign = None
        if type(self._fs).sign is not _abstract_sign():

            def presign(ttl: int) -> str:
                return str(self._call(url, self._fs.sign, path, expiration=ttl))

        return _opened(url, kind, size, open_raw, (OSError, TimeoutError), presign)

    @staticmethod
    def _call(url: ObjectURL, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except FileNotFoundError:
            raise SourceUnavailable(f"{url}: no such object") from None
        except PermissionError as exc:
            raise SourceUnavailable(f"{url}: access denied ({exc})") from None
        except (OSError, TimeoutError) as exc:
            raise StoreError(f"{url}: the store could not be read: {exc}") from None


def _abstract_sign() -> Any:
    from fsspec.spec import AbstractFileSystem

    return AbstractFileSystem.sign
