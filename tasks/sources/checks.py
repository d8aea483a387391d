"""Checking a source before it is enqueued, by the rules the workers apply when they open it.

For a producer that takes sources from callers it does not trust (a web app): what a worker
would refuse is refused here, before a job exists, and a source outside the allowed places is
told apart (``SourceNotAllowed``) from one that is malformed (``InvalidInput``). A producer is
stricter than a worker in one way: with ``WSUPLOAD_ALLOWED_ROOTS`` (or
``WSUPLOAD_ALLOWED_BUCKETS``) unset a worker reads any path (any bucket), which a web app must
not let its callers do, so by default that kind of source is refused here.
"""

from __future__ import annotations

from wsupload.config.settings import Settings
from wsupload.errors import InvalidInput, SourceNotAllowed
from wsupload.tasks.sources.local_files import inside_roots, local_path, resolved
from wsupload.tasks.sources.media import require_media_kind
from wsupload.tasks.sources.object_store import bucket_allowed, parse_object_url
from wsupload.tasks.sources.opener import scheme_of


def check_source(source: str, settings: Settings, *, unset_allows_all: bool = False) -> None:
    """Raise ``SourceNotAllowed`` or ``InvalidInput`` for a source the workers would refuse, else return.

    Local paths are resolved first (symlinks, ``..``), as the workers do, and must name a
    file; this touches the disk, so an asyncio caller runs it in a thread. With
    ``unset_allows_all`` an unset allow-list admits everything, as it does for a worker.
    """
    if not source.strip() or "\x00" in source:
        raise InvalidInput("the source is empty or contains a NUL character")
    scheme = scheme_of(source)
    if scheme == "s3":
        url = parse_object_url(source)
        if not settings.allowed_buckets and not unset_allows_all:
            raise SourceNotAllowed("no s3:// keys are taken here: WSUPLOAD_ALLOWED_BUCKETS is unset")
        if settings.allowed_buckets and not bucket_allowed(url, settings.allowed_buckets):
            raise SourceNotAllowed(f"{source!r} is outside WSUPLOAD_ALLOWED_BUCKETS")
        require_media_kind(url.filename)
    elif scheme in ("", "file"):
        path = local_path(source)
        real = resolved(source, path)
        if not settings.allowed_roots and not unset_allows_all:
            raise SourceNotAllowed("no local paths are taken here: WSUPLOAD_ALLOWED_ROOTS is unset")
        if settings.allowed_roots and not inside_roots(real, settings.allowed_roots):
            raise SourceNotAllowed(f"{source!r} is outside WSUPLOAD_ALLOWED_ROOTS")
        require_media_kind(path.name)
        if not real.is_file():
            raise InvalidInput(f"{source!r} is not a file")
    else:
        raise InvalidInput(f"unsupported source {source!r}: expected an absolute path, file:// or s3://")
