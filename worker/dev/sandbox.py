"""A local WaveSpeed-compatible upload server for development, the demo and tests.

It speaks the documented contract (multipart field ``file``, Bearer auth, the
success body, 400/401/413) and WaveSpeed's direct flow as its SDKs use it: a
ticket from ``POST /api/v3/media/uploads`` naming a signed, expiring PUT URL on
this server (``/_storage/<object>?expires=…&signature=…``), which checks the
signature, the expiry and the ticket's headers (403), refuses a second PUT of an
object under ``If-None-Match: *`` (412), and records whether any Authorization
header arrived. It can be told to misbehave, per step (``Fault.step``): answer a status N
times (with ``Retry-After``), answer HTTP 200 with an error ``code``, drop the
connection, stall, add latency, or read the body slowly (``Fault.rate``, or
``read_rate`` for every request: bytes a second, as a slow link would). It parses uploads as a stream, hashing (and
optionally storing) the file part, so a 1 GiB upload costs it no memory. File
names are read as browsers and the worker send them (raw UTF-8, HTML5 escapes,
``filename*``: see ``worker/disposition.py``); a stored file is served only at
its own ``download_url``.

Control it in-process (``SandboxServer.add_fault``) or over HTTP:
``POST /_sandbox/faults`` (a fault object or a list), ``GET /_sandbox/uploads``,
``POST /_sandbox/reset``. It never records the API key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import select
import shutil
import socket
import struct
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.client import HTTPMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, quote, unquote, urlencode

from python_multipart.multipart import MultipartParser, parse_options_header

from wsupload.tasks.sources import formats
from wsupload.worker.dev.disposition import parse_disposition

UPLOAD_PATH = "/api/v3/media/upload/binary"
TICKET_PATH = "/api/v3/media/uploads"
STORAGE_PATH = "/_storage/"
TICKET_TTL = 900.0
READ_BLOCK = 1024 * 1024
log = logging.getLogger(__name__)


STEPS = ("api", "binary", "ticket", "put")
"""A fault's ``step``: ``api`` is the first request of either flow (the binary POST or the ticket)."""


def sign(key: bytes, obj: str, expires: int) -> str:
    """The signature of a PUT URL: the object and its expiry (Unix seconds), under the sandbox's key."""
    return hmac.new(key, f"PUT\n{obj}\n{expires}".encode(), hashlib.sha256).hexdigest()


def signed_query(key: bytes, obj: str, expires: int) -> str:
    return urlencode({"expires": expires, "signature": sign(key, obj, expires)})


def check_signature(key: bytes, obj: str, query: str, now: float) -> str | None:
    """Why a PUT URL's query does not admit a PUT of ``obj`` at ``now``, or None when it does."""
    params = parse_qs(query)
    try:
        expires = int(params["expires"][0])
        signature = params["signature"][0]
    except (KeyError, IndexError, ValueError):
        return "the URL is not signed"
    if not hmac.compare_digest(signature, sign(key, obj, expires)):
        return "the signature does not match"
    if now >= expires:
        return "the URL has expired"
    return None


@dataclass
class Fault:
    """How to answer the next ``times`` requests of ``step`` instead of normally.

    ``reset`` on a PUT takes half the body first, then resets the connection.
    ``expired`` (a ticket) issues a URL whose expiry has already passed.
    ``rate`` reads the request's body at that many bytes a second (0: as fast as it comes).
    """

    status: int | None = None
    body: dict[str, Any] | None = None
    retry_after: str | None = None
    reset: bool = False
    stall: float = 0.0
    times: int = 1
    step: str = "api"
    expired: bool = False
    rate: int = 0

    def __post_init__(self) -> None:
        if self.step not in STEPS:
            raise ValueError(f"a fault's step is one of {STEPS}, not {self.step!r}")

    def applies_to(self, step: str) -> bool:
        return self.step == step or (self.step == "api" and step in ("binary", "ticket"))

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Fault:
        return cls(**{key: doc[key] for key in cls.__dataclass_fields__ if key in doc})


@dataclass
class UploadRecord:
    """What the sandbox saw of one upload request."""

    number: int
    received_at: float
    step: str = "binary"
    answered_at: float = 0.0
    status: int | None = None  # None: the connection was dropped
    authorized: bool = False
    authorization_sent: bool = False  # any Authorization header at all (a PUT must carry none)
    key_seen: bool = False  # the API key anywhere in the request line or headers
    object: str | None = None  # direct flow: the object a ticket names or a PUT writes
    if_none_match: str | None = None
    signature: str | None = None  # a PUT's, as sent: a test checks it is nowhere it should not be
    filename: str | None = None
    size: int = 0
    sha256: str | None = None
    fault: dict[str, Any] | None = None
    client_gone: bool = False  # the client closed its connection before its answer: mid-body, or while it was held


@dataclass
class _FilePart:
    headers: dict[str, bytes] = field(default_factory=dict)  # values as sent: decoding them is per header
    name: str | None = None
    filename: str | None = None
    digest: Any = field(default_factory=hashlib.sha256)
    size: int = 0
    sink: BinaryIO | None = None


class SandboxServer:
    def __init__(
        self,
        *,
        api_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        max_bytes: int | None = None,
        latency: float = 0.0,
        storage_dir: Path | None = None,
        hash_uploads: bool = True,
        direct: bool = True,
        ticket_ttl: float = TICKET_TTL,
        read_rate: int = 0,
    ) -> None:
        self.api_key = api_key
        self.direct = direct  # False: no ticket endpoint (404), as a server before the direct flow
        self.ticket_ttl = ticket_ttl
        self.signing_key = secrets.token_bytes(32)
        self.hash_uploads = hash_uploads
        self.max_bytes = max_bytes
        self.latency = latency
        self.read_rate = read_rate
        """Bytes a second every request body is read at (a fault's ``rate`` overrides it); 0: no limit."""
        self.storage_dir = storage_dir
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._records: list[UploadRecord] = []
        self._tickets: dict[str, dict[str, Any]] = {}  # object → what its ticket said
        self._objects: dict[str, str] = {}  # object → filename, once a PUT landed
        self._stalls_released = threading.Event()
        self._httpd = _Server((host, port), _Handler, self)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> SandboxServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="sandbox", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def release_stalls(self) -> None:
        """End the stalls in progress now: those requests are answered at once (later stalls run their course)."""
        with self._lock:
            released, self._stalls_released = self._stalls_released, threading.Event()
        released.set()

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self._records.clear()
            self._tickets.clear()
            self._objects.clear()

    @property
    def records(self) -> list[UploadRecord]:
        with self._lock:
            return list(self._records)

    def _stall(self, seconds: float, peer: socket.socket | None = None) -> bool:
        """Hold an answer ``seconds`` (or until released); False once ``peer`` closed its connection meanwhile."""
        with self._lock:
            released = self._stalls_released
        if peer is None:
            released.wait(seconds)
            return True
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0 and not released.is_set():
            readable, _, _ = select.select([peer], [], [], min(left, 0.05))
            if readable:
                try:
                    if not peer.recv(1, socket.MSG_PEEK):
                        return False  # end of stream: the client closed (or shut down) its side
                except OSError:
                    return False
                released.wait(min(left, 0.05))  # bytes waiting (the next request): nothing to learn from them
        return True

    def _begin(self, step: str = "binary") -> tuple[UploadRecord, Fault | None]:
        with self._lock:
            record = UploadRecord(number=len(self._records) + 1, received_at=time.time(), step=step)
            self._records.append(record)
            fault = next((f for f in self._faults if f.applies_to(step)), None)
            if fault is not None:
                record.fault = asdict(fault)
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
            return record, fault

    def put_url(self, obj: str, expires: int) -> str:
        return f"{self.url}{STORAGE_PATH}{obj}?{signed_query(self.signing_key, obj, expires)}"

    def stored_object(self, obj: str, filename: str | None = None) -> Path | None:
        """A direct upload's bytes; with ``filename``, only if its ticket named it."""
        if self.storage_dir is None:
            return None
        with self._lock:
            landed = self._objects.get(obj)
        if landed is None or (filename is not None and landed != filename):
            return None
        path = self.storage_dir / f"d{obj}"
        return path if path.is_file() else None

    def stored_file(self, number: int, filename: str | None = None) -> Path | None:
        """Upload ``number``'s bytes; with ``filename``, only if it was accepted under that name."""
        if self.storage_dir is None:
            return None
        if filename is not None:
            with self._lock:
                record = self._records[number - 1] if 0 < number <= len(self._records) else None
            if record is None or record.status != 200 or record.filename != filename:
                return None
        path = self.storage_dir / str(number)
        return path if path.is_file() else None


class _ClientGone(Exception):
    """The client closed its connection while its answer was held: nothing to answer."""


class _Pace:
    """Reads a body at ``rate`` bytes a second (0: as fast as it comes), in tenths of a second's worth."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.block = min(READ_BLOCK, max(1, rate // 10)) if rate > 0 else READ_BLOCK
        self._start = time.monotonic()
        self._read = 0

    def took(self, size: int) -> None:
        if self.rate > 0:
            self._read += size
            ahead = self._start + self._read / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], sandbox: SandboxServer) -> None:
        self.sandbox = sandbox
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out or went away mid-answer is routine here.
        log.debug("sandbox: connection from %s ended with an error", client_address, exc_info=True)


class _Headers(HTTPMessage):
    """A request's headers, read without looking for a multipart body in them.

    ``http.server`` hands the header block to email's full parser, which, for a
    ``multipart/form-data`` request, compiles a regular expression for the request's
    boundary: a new one for every upload (each has its own boundary), which made that
    compile a large part of the sandbox's CPU per upload and churned ``re``'s cache.
    With no boundary to look for, the parser takes the (empty) rest as the payload.
    The body itself is parsed by python_multipart, from the raw ``Content-Type``.
    """

    def get_boundary(self, failobj: Any = None) -> Any:
        return failobj


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    MessageClass = _Headers

    def setup(self) -> None:
        super().setup()
        # Without TCP_NODELAY, Nagle plus delayed ACK add ~40 ms to each answer.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("sandbox: " + format, *args)

    @property
    def sandbox(self) -> SandboxServer:
        return self.server.sandbox

    # -- routing ---------------------------------------------------------

    def do_POST(self) -> None:
        if self.path == UPLOAD_PATH:
            self._upload()
        elif self.path == TICKET_PATH and self.sandbox.direct:
            self._ticket()
        elif self.path == "/_sandbox/faults":
            doc = json.loads(self._read_small() or b"[]")
            for item in doc if isinstance(doc, list) else [doc]:
                self.sandbox.add_fault(Fault.from_json(item))
            self._json(200, {"ok": True})
        elif self.path == "/_sandbox/reset":
            self._read_small()
            self.sandbox.reset()
            self._json(200, {"ok": True})
        else:
            self._read_small()
            self._json(404, {"code": 404, "message": "not found"})

    def do_PUT(self) -> None:
        if self.path.startswith(STORAGE_PATH):
            self._put()
        else:
            self._read_small()
            self._json(404, {"code": 404, "message": "not found"})

    def do_GET(self) -> None:
        if self.path == "/_sandbox/uploads":
            self._json(200, [asdict(r) for r in self.sandbox.records])
        elif self.path.startswith("/files/"):
            self._download()
        else:
            self._json(404, {"code": 404, "message": "not found"})

    # -- upload ----------------------------------------------------------

    def _upload(self) -> None:
        record, fault = self.sandbox._begin()
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._answer(record, 411, {"code": 411, "message": "Content-Length required"})
            return
        if fault and fault.reset:
            self._drop(record)
            return
        record.authorized = self.headers.get("Authorization") == f"Bearer {self.sandbox.api_key}"
        try:
            part = self._receive(length, record.number, self._pace(fault), store=record.authorized)
        except ConnectionError:
            part = None  # reset mid-body
        if part is None:
            self._gone(record)  # the client went away mid-body
            return
        if part.name == "file":
            record.filename, record.size = part.filename, part.size
            record.sha256 = part.digest.hexdigest() if self.sandbox.hash_uploads else None
        headers = self._delay(fault, record)
        status, body = self._decide(record, part, fault)
        self._answer(record, status, body, headers)

    @staticmethod
    def _refused(record: UploadRecord, fault: Fault | None) -> tuple[int, dict[str, Any]] | None:
        """What both API endpoints answer first: an injected status, then a wrong key."""
        if fault and fault.status:
            return fault.status, fault.body or {"code": fault.status, "message": f"sandbox fault {fault.status}"}
        if not record.authorized:
            return 401, {"code": 401, "message": "Invalid API key"}
        return None

    def _decide(self, record: UploadRecord, part: _FilePart, fault: Fault | None) -> tuple[int, dict[str, Any]]:
        refused = self._refused(record, fault)
        if refused is not None:
            return refused
        if part.name != "file" or not part.filename:
            return 400, {"code": 400, "message": "Invalid file: the multipart field 'file' is required"}
        kind = formats.media_kind(part.filename)
        if kind is None:
            return 400, {"code": 400, "message": "Invalid file or format not supported"}
        if self.sandbox.max_bytes is not None and part.size > self.sandbox.max_bytes:
            return 413, {"code": 413, "message": "File too large"}
        if fault and fault.body:
            return 200, fault.body
        # safe="": a "/" in the name must not become a path segment.
        url = f"{self.sandbox.url}/files/{record.number}/{quote(part.filename, safe='')}"
        data = {"type": kind, "download_url": url, "filename": part.filename, "size": part.size}
        return 200, {"code": 200, "message": "success", "data": data}

    def _pace(self, fault: Fault | None) -> _Pace:
        return _Pace(fault.rate if fault and fault.rate else self.sandbox.read_rate)

    def _receive(self, length: int, number: int, pace: _Pace, *, store: bool) -> _FilePart | None:
        """Read the whole body, streaming the first file part into a hash (and disk)."""
        part = _FilePart()
        _, params = parse_options_header(self.headers.get("Content-Type", ""))
        boundary = params.get(b"boundary")
        parser = None
        if boundary:
            parser = MultipartParser(boundary, self._callbacks(part, number, store))
        remaining = length
        try:
            while remaining > 0:
                block = self.rfile.read(min(pace.block, remaining))
                if not block:
                    self.close_connection = True
                    return None
                remaining -= len(block)
                pace.took(len(block))
                if parser is not None:
                    try:
                        parser.write(block)
                    except Exception:
                        parser, part.name = None, None  # malformed: keep draining, answer 400
            if parser is not None:
                parser.finalize()
        finally:
            if part.sink:
                part.sink.close()
        return part

    def _callbacks(self, part: _FilePart, number: int, store: bool) -> Any:
        field_name: list[bytes] = []
        value: list[bytes] = []
        done = {"file": False}

        def on_header_field(data: bytes, start: int, end: int) -> None:
            field_name.append(data[start:end])

        def on_header_value(data: bytes, start: int, end: int) -> None:
            value.append(data[start:end])

        def on_header_end() -> None:
            part.headers[b"".join(field_name).decode("latin-1").lower()] = b"".join(value)
            field_name.clear()
            value.clear()

        def on_headers_finished() -> None:
            if done["file"]:
                return
            disposition = parse_disposition(part.headers.get("content-disposition", b""))
            if disposition.name == "file":
                part.name, part.filename = disposition.name, disposition.filename
                if store and self.sandbox.storage_dir is not None:
                    part.sink = open(self.sandbox.storage_dir / str(number), "wb")  # noqa: SIM115

        def on_part_data(data: bytes, start: int, end: int) -> None:
            if part.name == "file" and not done["file"]:
                chunk = data[start:end]
                if self.sandbox.hash_uploads:
                    part.digest.update(chunk)
                part.size += len(chunk)
                if part.sink:
                    part.sink.write(chunk)

        def on_part_end() -> None:
            if part.name == "file":
                done["file"] = True
            part.headers.clear()

        return {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        }

    # -- direct flow: the ticket, then the PUT ---------------------------

    def _ticket(self) -> None:
        record, fault = self.sandbox._begin("ticket")
        raw = self._read_small()
        if fault and fault.reset:
            self._drop(record)
            return
        record.authorized = self.headers.get("Authorization") == f"Bearer {self.sandbox.api_key}"
        headers = self._delay(fault, record)
        status, body = self._decide_ticket(record, raw, fault)
        self._answer(record, status, body, headers)

    def _decide_ticket(self, record: UploadRecord, raw: bytes, fault: Fault | None) -> tuple[int, dict[str, Any]]:
        refused = self._refused(record, fault)
        if refused is not None:
            return refused
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        filename = doc.get("filename") if isinstance(doc, dict) else None
        size = doc.get("size") if isinstance(doc, dict) else None
        content_type = doc.get("content_type") if isinstance(doc, dict) else None
        if not isinstance(filename, str) or not filename or isinstance(size, bool) or not isinstance(size, int):
            return 400, {"code": 400, "message": "filename and size are required"}
        kind = formats.media_kind(filename)
        if kind is None or size < 0 or not isinstance(content_type, str | None):
            return 400, {"code": 400, "message": "Invalid file or format not supported"}
        if self.sandbox.max_bytes is not None and size > self.sandbox.max_bytes:
            return 413, {"code": 413, "message": "File too large"}
        if fault and fault.body:
            return 200, fault.body
        obj = str(record.number)
        record.object, record.filename, record.size = obj, filename, size
        expires = int(time.time() - 1 if fault and fault.expired else time.time() + self.sandbox.ticket_ttl)
        headers = {"Content-Type": content_type or "application/octet-stream", "If-None-Match": "*"}
        with self.sandbox._lock:
            self.sandbox._tickets[obj] = {"filename": filename, "size": size, "headers": headers}
        url = f"{self.sandbox.url}/files/d{obj}/{quote(filename, safe='')}"
        upload = {
            "method": "PUT",
            "url": self.sandbox.put_url(obj, expires),
            "headers": headers,
            "expires_at": datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        data = {"type": kind, "download_url": url, "filename": filename, "size": size, "upload": upload}
        return 200, {"code": 200, "message": "success", "data": data}

    def _put(self) -> None:
        record, fault = self.sandbox._begin("put")
        record.authorization_sent = "Authorization" in self.headers
        record.key_seen = self.sandbox.api_key in self.requestline or any(
            self.sandbox.api_key in value for value in self.headers.values()
        )
        record.if_none_match = self.headers.get("If-None-Match")
        path, _, query = self.path.partition("?")
        obj = path[len(STORAGE_PATH) :]
        record.object = obj
        record.signature = next(iter(parse_qs(query).get("signature", [])), None)
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._answer(record, 411, {"message": "Content-Length required"})
            return
        if fault and fault.reset:
            self.rfile.read(length // 2)
            self._drop(record)
            return
        with self.sandbox._lock:
            ticket = self.sandbox._tickets.get(obj)
            landed = obj in self.sandbox._objects
        refused = check_signature(self.sandbox.signing_key, obj, query, time.time())
        if refused is None and ticket is None:
            refused = "no ticket names this object"
        if refused is None and ticket is not None:
            for name, value in ticket["headers"].items():
                if self.headers.get(name) != value:
                    refused = f"the signed header {name} is not as the ticket gave it"
        if refused is None and ticket is not None and length != ticket["size"]:
            refused = f"Content-Length {length} is not the ticket's size {ticket['size']}"
        store = refused is None and not landed and not (fault and fault.status)
        try:
            digest, received = self._receive_raw(length, obj if store else None, self._pace(fault))
        except ConnectionError:
            received = None  # reset mid-body
        if received is None:
            self._gone(record)  # the client went away mid-body
            return
        record.size = received
        record.sha256 = digest
        headers = self._delay(fault, record)
        if fault and fault.status:
            self._answer(record, fault.status, fault.body or {"message": f"sandbox fault {fault.status}"}, headers)
        elif refused is not None:
            # As S3 does, the refusal quotes the signature it was given: a client must not store it.
            self._answer(record, 403, {"message": f"SignatureDoesNotMatch: {refused}; provided {record.signature}"})
        elif landed and self.headers.get("If-None-Match") == "*":
            self._answer(record, 412, {"message": "PreconditionFailed: the object exists"})
        else:
            assert ticket is not None
            record.filename = ticket["filename"]
            with self.sandbox._lock:
                self.sandbox._objects[obj] = ticket["filename"]
            self._answer(record, 200, {})

    def _receive_raw(self, length: int, obj: str | None, pace: _Pace) -> tuple[str | None, int | None]:
        """Read a PUT's body, hashing it and, for ``obj``, storing it; None if the client went away."""
        digest = hashlib.sha256()
        storage = self.sandbox.storage_dir
        sink = open(storage / f"d{obj}.part", "wb") if obj and storage else None  # noqa: SIM115
        remaining = length
        try:
            while remaining > 0:
                block = self.rfile.read(min(pace.block, remaining))
                if not block:
                    self.close_connection = True
                    return None, None
                remaining -= len(block)
                pace.took(len(block))
                if self.sandbox.hash_uploads:
                    digest.update(block)
                if sink:
                    sink.write(block)
        finally:
            if sink:
                sink.close()
        if sink and storage:
            (storage / f"d{obj}.part").replace(storage / f"d{obj}")
        return (digest.hexdigest() if self.sandbox.hash_uploads else None), length

    # -- answers ---------------------------------------------------------

    def _delay(self, fault: Fault | None, record: UploadRecord) -> dict[str, str]:
        """Hold the answer as the fault and the sandbox's latency ask; the answer's Retry-After, if any.

        A client that closes its connection during a stall is recorded (``client_gone``) and
        gets no answer (``_ClientGone``).
        """
        if fault and fault.stall and not self.sandbox._stall(fault.stall, self.request):
            self._gone(record)
            raise _ClientGone
        if self.sandbox.latency:
            time.sleep(self.sandbox.latency)
        return {"Retry-After": fault.retry_after} if fault and fault.retry_after else {}

    def _gone(self, record: UploadRecord) -> None:
        """The client closed (or reset) its connection before its answer: recorded, nothing answered."""
        record.client_gone, record.answered_at = True, time.time()
        self.close_connection = True

    def _answer(
        self, record: UploadRecord, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        record.status = status
        record.answered_at = time.time()
        self._json(status, body, headers)

    def _drop(self, record: UploadRecord) -> None:
        record.answered_at = time.time()
        # Linger 0: close with a TCP reset, as a crashed proxy would.
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.request.close()

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _read_small(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(min(length, 1 << 20)) if length else b""

    def _download(self) -> None:
        # /files/<number>/<percent-encoded filename>: the name must be the upload's own,
        # so a download_url whose name did not round-trip is a 404, not someone's bytes.
        parts = self.path.split("?", 1)[0].split("/", 3)
        number_text, quoted = (parts[2], parts[3]) if len(parts) == 4 else ("", "")
        if number_text.startswith("d"):
            self._send_file(self.sandbox.stored_object(number_text[1:], unquote(quoted)))
            return
        try:
            number = int(number_text)
        except ValueError:
            number = -1
        self._send_file(self.sandbox.stored_file(number, unquote(quoted)))

    def _send_file(self, path: Path | None) -> None:
        if path is None:
            self._json(404, {"code": 404, "message": "no such file (or not under that name, or nothing stored)"})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(path.stat().st_size))
        self.end_headers()
        with open(path, "rb") as source:
            shutil.copyfileobj(source, self.wfile, READ_BLOCK)
