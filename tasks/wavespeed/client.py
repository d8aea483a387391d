"""The HTTP client for WaveSpeed's two upload flows: one attempt per call.

``UploadClient.upload`` sends one streamed multipart request to the binary
endpoint and returns the documented ``data`` object, or raises an
``UploadError`` that says what happened. ``upload_direct`` makes one attempt of
the direct flow (``tasks.wavespeed.direct``): a ticket if the job's ``Transfer``
needs one, then the streamed PUT to the signed URL, which gets no Authorization
header and no cookie. Neither retries (the task owns the retry policy), and no
error message carries the API key or the signed URL. ``interpret_response`` is
the pure half: an HTTP answer in, a result or an error out.

Every request can be cut by its job's cancel (``tasks.recovery.lease.abort_with``): the
session's connections register, while a request is sent and its answer awaited, a hook
that shuts their socket down from the cancelling thread, which ends a blocked send or
read at once (urllib3 then drops the connection); the job raises ``Cancelled``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import requests
import requests.adapters
import requests.utils
import urllib3.connection
import urllib3.connectionpool
from requests.cookies import extract_cookies_to_jar
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import ConnectTimeout, ReadTimeout, RequestException
from requests.structures import CaseInsensitiveDict

from wsupload.errors import ConnectionFailed, UnexpectedResponse, UploadError, UploadTimeout
from wsupload.tasks.observe import redaction
from wsupload.tasks.recovery import lease
from wsupload.tasks.sources.media import OpenedSource
from wsupload.tasks.wavespeed import direct
from wsupload.tasks.wavespeed.multipart import FileSpan, MultipartBody
from wsupload.tasks.wavespeed.retry_policy import error_for_status, parse_retry_after

UPLOAD_PATH = "/api/v3/media/upload/binary"
FIELD_NAME = "file"
SOCKET_BLOCK = 1024 * 1024
"""Bytes handed to the socket per send: urllib3's 16 KiB default costs ~2x on large files."""
MESSAGE_LIMIT = 500
ORIGINS_KEPT = 64
"""Storage origins whose proxy settings the client keeps (the direct flow's signed URLs' hosts)."""


def _snippet(body: bytes) -> str:
    text = body[:MESSAGE_LIMIT].decode("utf-8", "replace").strip()
    return text + ("…" if len(body) > MESSAGE_LIMIT else "")


def _describe(status: int, doc: Any, body: bytes) -> str:
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        text = doc["message"][:MESSAGE_LIMIT]
        if doc.get("error_code") not in (None, ""):
            text += f" (error_code {doc['error_code']})"
        return f"HTTP {status}: {text}"
    return f"HTTP {status}: {_snippet(body)}" if body.strip() else f"HTTP {status} with an empty body"


def _parse_data(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UnexpectedResponse("success answer has no 'data' object", 200)
    url = data.get("download_url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise UnexpectedResponse("success answer has no usable 'data.download_url'", 200)
    size = data.get("size")
    if isinstance(size, bool) or not isinstance(size, int | float):
        raise UnexpectedResponse("success answer has no numeric 'data.size'", 200)
    for name in ("type", "filename"):
        if not isinstance(data.get(name), str):
            raise UnexpectedResponse(f"success answer has no string 'data.{name}'", 200)
    return {"type": data["type"], "download_url": url, "filename": data["filename"], "size": size}


def interpret_response(status: int, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The ``data`` of a successful upload, or raise the error the answer stands for."""
    try:
        doc: Any = json.loads(body) if body else None
    except ValueError:
        doc = None
    if 200 <= status < 300:
        if not isinstance(doc, dict):
            raise UnexpectedResponse(f"HTTP {status} but the body is not a JSON object: {_snippet(body)!r}", status)
        code = doc.get("code")
        if isinstance(code, bool) or not isinstance(code, int):
            raise UnexpectedResponse(f"HTTP {status} but the body has no integer 'code'", status)
        if code != 200:
            # WaveSpeed may report a failure inside an HTTP 200: classify it by its own code.
            retry_after = parse_retry_after(headers.get("Retry-After"))
            message = f"HTTP {status} carrying code {code}: {_describe(code, doc, body).split(': ', 1)[1]}"
            raise error_for_status(code, message, retry_after)
        return _parse_data(doc.get("data"))
    if 300 <= status < 400:
        where = headers.get("Location", "nowhere")
        raise UnexpectedResponse(f"HTTP {status} redirect to {where}; an upload is not re-sent to a redirect", status)
    raise error_for_status(status, _describe(status, doc, body), parse_retry_after(headers.get("Retry-After")))


def scrub(text: str, url: str | None) -> str:
    """``text`` without ``url``: whole, its path and query, its query, or any long query value.

    The values matter too: a storage's refusal may quote the signature alone (S3's
    ``SignatureDoesNotMatch`` answer carries ``SignatureProvided``).
    """
    if not url:
        return text
    parts = urlsplit(url)
    path_query = parts.path + ("?" + parts.query if parts.query else "")
    values = [value for _, value in parse_qsl(parts.query) if len(value) >= 8]
    forms = sorted({url, path_query, parts.query, *values, *(quote(v, safe="") for v in values)}, key=len, reverse=True)
    for form in forms:
        if form and len(form) > 1:
            text = text.replace(form, "[signed url]")
    return text


class _Cuttable:
    """A connection whose request a cancel can cut: registered with the job's lease from sending to the answer."""

    sock: socket.socket | None

    def request(self, *args: Any, **kwargs: Any) -> None:
        lease.abort_with(self.cut)  # raises Cancelled if the job was cancelled before it sent
        try:
            super().request(*args, **kwargs)  # type: ignore[misc]
        except BaseException:
            lease.abort_with(None)
            raise

    def getresponse(self) -> Any:
        try:
            return super().getresponse()  # type: ignore[misc]
        finally:
            lease.abort_with(None)

    def cut(self) -> None:
        """Shut the socket down (from another thread): a blocked send or read fails at once.

        Lingering 0 first, so the close that follows (urllib3's, on the failed request) resets
        the connection: the server drops what it had not read yet instead of reading a body
        that will never be complete.
        """
        sock = self.sock
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # The plain socket's shutdown, an SSL socket's too: its own would unwrap TLS
                # under the thread that reads.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _CuttableHTTPConnection(_Cuttable, urllib3.connection.HTTPConnection):
    """Plain HTTP: a large local file's bytes go from the page cache to the socket (``sendfile``)."""

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **kwargs: Any) -> None:
        if isinstance(body, MultipartBody) and body.sendfile_ok():
            # urllib3 sends each piece with ``send``, in order; Content-Length is the request's already.
            body = body.spans(SOCKET_BLOCK)
        super().request(method, url, body, headers, **kwargs)

    def send(self, data: Any) -> None:
        if isinstance(data, FileSpan):
            assert self.sock is not None  # the headers went out on it
            data.send_to(self.sock)
        else:
            super().send(data)


class _CuttableHTTPSConnection(_Cuttable, urllib3.connection.HTTPSConnection):
    pass


class _CuttableHTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _CuttableHTTPConnection


class _CuttableHTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _CuttableHTTPSConnection


class _BlockAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter, sending in 1 MiB blocks, and looking at a CA bundle on disk once rather than per request.

    requests asks the file system about the CA bundle at every request: whether a
    bundle named by path (``REQUESTS_CA_BUNDLE``) is a directory, to pick the
    connection pool (even for ``http://``), and, for ``https://``, whether the bundle
    exists and is a directory again. Each is a ``stat`` that lets another thread
    take the GIL. The answers are kept per URL and per bundle (bounded): the first
    request to each asks as requests does. A missing bundle is not kept, so every
    request fails while it is missing; one removed after it was found fails the TLS
    connections made from then on (loading it), not the reuse of open ones.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pool_keys: dict[tuple[str, str], Any] = {}
        self._bundle_is_dir: dict[str, bool] = {}
        super().__init__(*args, **kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = SOCKET_BLOCK
        super().init_poolmanager(*args, **kwargs)
        # A job's cancel cuts its request (``_Cuttable``); through a proxy it stops at the next block instead.
        self.poolmanager.pool_classes_by_scheme = {"http": _CuttableHTTPPool, "https": _CuttableHTTPSPool}

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: bool | str, cert: str | tuple[str, str] | None = None
    ) -> Any:
        if not isinstance(verify, str) or cert is not None or request.url is None:
            return super().build_connection_pool_key_attributes(request, verify, cert)
        key = (request.url, verify)
        known = self._pool_keys.get(key)
        if known is None:
            if len(self._pool_keys) >= ORIGINS_KEPT:
                self._pool_keys.clear()  # signed URLs (the direct flow's PUTs) differ per ticket: bounded
            known = self._pool_keys[key] = super().build_connection_pool_key_attributes(request, verify, cert)
        host_params, pool_kwargs = known
        return dict(host_params), dict(pool_kwargs)

    def cert_verify(self, conn: Any, url: str, verify: bool | str, cert: Any) -> None:
        if cert or not verify or not url.lower().startswith("https"):
            super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]  # no CA bundle to look at (or a client certificate too)
            return
        bundle = requests.adapters.DEFAULT_CA_BUNDLE_PATH if verify is True else str(verify)
        is_dir = self._bundle_is_dir.get(bundle)
        if is_dir is None:
            super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]  # raises OSError if it is missing: not kept then
            self._bundle_is_dir[bundle] = getattr(conn, "ca_cert_dir", None) == bundle
            return
        conn.cert_reqs = "CERT_REQUIRED"
        if is_dir:
            conn.ca_cert_dir = bundle
        else:
            conn.ca_certs = bundle


def _reason(exc: BaseException) -> str:
    # requests nests urllib3's errors several deep; the innermost says what happened.
    seen = exc
    while True:
        inner = (
            seen.__cause__
            or seen.__context__
            or (seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None)
        )
        if inner is None or inner is seen:
            break
        seen = inner
        reason = getattr(seen, "reason", None)
        if isinstance(reason, BaseException):
            seen = reason
    text = str(seen) or type(seen).__name__
    # urllib3 prefixes the connection object's repr; keep what follows it.
    return text.split(">: ", 1)[-1][:MESSAGE_LIMIT]


class UploadClient:
    """One requests session, reused for every upload this process makes, from any of its threads."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        connect_timeout: float,
        read_timeout: float,
        connections: int = 10,
        ticket_margin: float = direct.DEFAULT_MARGIN,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + UPLOAD_PATH
        self.ticket_url = self.base_url + direct.TICKET_PATH
        self.ticket_margin = ticket_margin
        self._timeout = (connect_timeout, read_timeout)
        self._session = requests.Session()
        # One session serves every upload thread of the worker: keep a connection per thread.
        adapter = _BlockAdapter(max_retries=0, pool_maxsize=connections)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["Authorization"] = f"Bearer {api_key}"
        self._session.headers["Accept"] = "application/json"
        self._session.headers["User-Agent"] = "wsupload"
        self._take_environment()
        # Every upload is a POST to this one URL with the session's headers: what
        # Session.request merges into each new request (headers, hooks, auth, the URL's
        # parsing; a sixth of a small upload's CPU) is merged once, and copied per upload.
        self._template = self._session.prepare_request(requests.Request("POST", self.url))
        self._template.headers.pop("Content-Length", None)  # each body sets its own
        # The storage host gets its own session: none of the API's headers (the key), no cookies.
        self._storage = requests.Session()
        self._storage.trust_env = False
        self._storage.mount("http://", adapter)
        self._storage.mount("https://", adapter)
        self._storage.verify = self._session.verify
        # The proxies for each storage origin (scheme, host, port), read from the environment
        # once per origin: requests' lookup (NO_PROXY's matching included) per PUT was a
        # sixth of the direct flow's client CPU, and every ticket of one storage shares it.
        self._storage_proxies: dict[tuple[str, str], dict[str, str]] = {}
        # The ticket request, prepared once as the upload's is: a copy per ticket.
        self._ticket_template = self._session.prepare_request(requests.Request("POST", self.ticket_url))
        self._ticket_template.headers.pop("Content-Length", None)
        self._ticket_template.headers["Content-Type"] = "application/json"

    def _take_environment(self) -> None:
        """Read proxy and CA-bundle variables once, as requests would on every request.

        requests re-reads the whole environment per request (a third of the
        client's CPU time for a small upload); every upload goes to one URL, so
        once is the same answer. It also keeps a ~/.netrc entry for the host from
        replacing the Bearer header.
        """
        self._session.trust_env = False
        self._session.proxies.update(requests.utils.get_environ_proxies(self.url))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            self._session.verify = bundle

    def close(self) -> None:
        self._session.close()
        self._storage.close()

    def upload(self, source: OpenedSource) -> dict[str, Any]:
        body = MultipartBody.for_source(source, field=FIELD_NAME)
        request = self._template.copy()
        request.headers["Content-Type"] = body.content_type
        # What prepare_body makes of this body (never empty: it holds the form's boundaries),
        # without its checks of what kind of body it is (two of them typing.Protocol
        # isinstance checks, tens of microseconds each).
        request.body = body  # type: ignore[assignment]
        request.headers["Content-Length"] = str(len(body))
        session = self._session
        request.prepare_cookies(session.cookies)  # the session's cookies now, as Session.request sends
        content, response = self._send(session, request, "the upload endpoint")
        if "Set-Cookie" in response.headers:
            extract_cookies_to_jar(session.cookies, request, response.raw)  # type: ignore[no-untyped-call]
        return interpret_response(response.status_code, response.headers, content)

    # -- the direct flow -------------------------------------------------------

    def upload_direct(self, source: OpenedSource, transfer: direct.Transfer) -> dict[str, Any]:
        """One attempt: a ticket if ``transfer`` needs one, then one PUT on it.

        Each call makes at most one request that can fail: a failed ticket request ends
        the call, and a PUT follows only a ticket that was just issued or is still valid.
        """
        if direct.wants_new_ticket(transfer, datetime.now(UTC), self.ticket_margin):
            transfer.requests.append("ticket")
            transfer.ticket = None
            transfer.ticket = self.request_ticket(source)
            transfer.puts_on_ticket = 0
        return self._put(source, transfer)

    def request_ticket(self, source: OpenedSource) -> direct.Ticket:
        body = json.dumps(direct.ticket_request(source.filename, source.size, source.content_type)).encode()
        request = self._ticket_template.copy()
        request.prepare_body(body, None)
        request.prepare_cookies(self._session.cookies)  # the session's cookies now, as Session.request sends
        content, response = self._send(self._session, request, "the ticket endpoint")
        data = interpret_response(response.status_code, response.headers, content)
        # interpret_response kept only the documented fields: read the ticket from the whole answer.
        return direct.parse_ticket({**json.loads(content)["data"], **data}, base_url=self.base_url)

    def _put(self, source: OpenedSource, transfer: direct.Transfer) -> dict[str, Any]:
        ticket = transfer.ticket
        assert ticket is not None
        body = MultipartBody.for_source(source, field=None)
        request = requests.PreparedRequest()
        request.prepare_method("PUT")
        request.url = ticket.url  # as signed: not re-encoded by prepare_url
        request.headers = CaseInsensitiveDict({"User-Agent": "wsupload"})
        request.headers.update(ticket.headers)
        request.prepare_body(body, None)  # Content-Length: len(body), the size the ticket was asked for
        request.prepare_hooks({})
        transfer.puts_on_ticket += 1
        transfer.requests.append("put")
        # urllib3 logs each request's path and query at DEBUG: the signature is masked there while it is sent.
        with redaction.protecting(*direct.secret_parts(ticket.url)):
            content, response = self._send(self._storage, request, "the storage (direct upload)", secret=ticket.url)
        text = scrub(_describe(response.status_code, None, content), ticket.url)  # the answer may quote it
        return direct.put_outcome(transfer, response.status_code, dict(response.headers), text, dict(request.headers))

    def _proxies_for_storage(self, url: str) -> dict[str, str]:
        """The environment's proxies for ``url``'s origin (NO_PROXY applied), looked up once per origin."""
        parts = urlsplit(url)
        origin = (parts.scheme.lower(), parts.netloc.rpartition("@")[2].lower())
        proxies = self._storage_proxies.get(origin)
        if proxies is None:
            if len(self._storage_proxies) >= ORIGINS_KEPT:
                self._storage_proxies.clear()  # a storage that signs per-object hosts: bounded, not grown
            proxies = self._storage_proxies[origin] = requests.utils.get_environ_proxies(url)
        return proxies

    def _send(
        self, session: requests.Session, request: requests.PreparedRequest, where: str, secret: str | None = None
    ) -> tuple[bytes, requests.Response]:
        """Send one prepared request (the binary upload, a ticket, a PUT); errors name ``where``, never the URL.

        ``secret``: a signed URL, scrubbed from any error text (the innermost reason
        should not quote it; a library that does must not leak it).
        """
        assert request.url is not None
        proxies = self._proxies_for_storage(request.url) if session is self._storage else session.proxies
        try:
            # The adapter's send, not Session.send: what the session adds around it (response
            # hooks, following redirects, which an upload never does, and the cookie jar's
            # bookkeeping for every answer) was a seventh of an upload's CPU. ``upload`` puts an
            # answer's cookies into the session's jar itself, when it sets any.
            response = session.get_adapter(request.url).send(
                request,
                timeout=self._timeout,
                stream=False,
                proxies=proxies,
                verify=True if session.verify is None else session.verify,
                cert=session.cert,
            )
            return response.content, response
        except UploadError:
            # Raised by the body's read() (SourceChanged, StoreError): urllib3 and requests
            # wrap only OSError and their own errors, so it arrives as itself, and urllib3
            # closes the connection, leaving the server an incomplete request.
            raise
        except ConnectTimeout as exc:
            raise UploadTimeout(f"connecting to {where} timed out: {scrub(_reason(exc), secret)}") from None
        except ReadTimeout:
            raise UploadTimeout(f"no answer from {where} within {self._timeout[1]:g} s") from None
        except RequestsConnectionError as exc:
            raise ConnectionFailed(f"connection to {where} failed: {scrub(_reason(exc), secret)}") from None
        except RequestException as exc:
            raise ConnectionFailed(f"the request to {where} failed: {scrub(_reason(exc), secret)}") from None
