"""The HTTP client for WaveSpeed's binary upload endpoint: one attempt per call.

``UploadClient.upload`` sends one streamed multipart request and returns the
documented ``data`` object, or raises an ``UploadError`` that says what
happened. It never retries (the task owns the retry policy) and never puts the
API key into an error message. ``interpret_response`` is the pure half: an
HTTP answer in, a result or an error out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import requests
import requests.adapters
import requests.utils
from requests.cookies import extract_cookies_to_jar
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import ConnectTimeout, ReadTimeout, RequestException

from wsupload.errors import ConnectionFailed, UnexpectedResponse, UploadError, UploadTimeout
from wsupload.tasks.sources.media import OpenedSource
from wsupload.tasks.wavespeed.multipart import MultipartBody
from wsupload.tasks.wavespeed.retry_policy import error_for_status, parse_retry_after

UPLOAD_PATH = "/api/v3/media/upload/binary"
FIELD_NAME = "file"
SOCKET_BLOCK = 1024 * 1024
"""Bytes handed to the socket per send: urllib3's 16 KiB default costs ~2x on large files."""
MESSAGE_LIMIT = 500


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


class _BlockAdapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = SOCKET_BLOCK
        super().init_poolmanager(*args, **kwargs)


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
        self, *, base_url: str, api_key: str, connect_timeout: float, read_timeout: float, connections: int = 10
    ) -> None:
        self.url = base_url.rstrip("/") + UPLOAD_PATH
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

    def upload(self, source: OpenedSource) -> dict[str, Any]:
        body = MultipartBody.for_source(source, field=FIELD_NAME)
        request = self._template.copy()
        request.headers["Content-Type"] = body.content_type
        request.prepare_body(body, None)
        session = self._session
        request.prepare_cookies(session.cookies)  # the session's cookies now, as Session.request sends
        try:
            # The adapter's send, not Session.send: what the session adds around it (response
            # hooks, following redirects, which an upload never does, and the cookie jar's
            # bookkeeping for every answer) was a seventh of an upload's CPU. The answer's
            # cookies still go into the session's jar, as it would put them, when it sets any.
            response = session.get_adapter(self.url).send(
                request,
                timeout=self._timeout,
                stream=False,
                proxies=session.proxies,
                verify=True if session.verify is None else session.verify,
                cert=session.cert,
            )
            if "Set-Cookie" in response.headers:
                extract_cookies_to_jar(session.cookies, request, response.raw)  # type: ignore[no-untyped-call]
            content = response.content
        except UploadError:
            # Raised by the body's read() (SourceChanged, StoreError): urllib3 and requests
            # wrap only OSError and their own errors, so it arrives as itself, and urllib3
            # closes the connection, leaving the server an incomplete request.
            raise
        except ConnectTimeout as exc:
            raise UploadTimeout(f"connecting to the upload endpoint timed out: {_reason(exc)}") from None
        except ReadTimeout:
            raise UploadTimeout(f"no answer from the upload endpoint within {self._timeout[1]:g} s") from None
        except RequestsConnectionError as exc:
            raise ConnectionFailed(f"connection to the upload endpoint failed: {_reason(exc)}") from None
        except RequestException as exc:
            raise ConnectionFailed(f"the upload request failed: {_reason(exc)}") from None
        return interpret_response(response.status_code, response.headers, content)
