"""A real S3-compatible HTTP server for the tests: moto's, behind a fault switch.

Run as ``python -m tests.integration.s3_server PORT``. ``POST /_faults`` with
``{"status": 503, "code": "SlowDown", "times": 2, "method": "GET", "skip": 1}``
makes the next matching S3 requests (after ``skip`` of them) fail with an S3-style error; ``GET /_faults`` reports
how many S3 requests arrived. Everything else is moto.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

Start = Callable[[str, list[tuple[str, str]]], Any]


class FaultSwitch:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.faults: list[dict[str, Any]] = []
        self.s3_requests = 0

    def __call__(self, environ: dict[str, Any], start: Start) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
        if path == "/_faults":
            return self._control(environ, start, method)
        if path.startswith("/moto-api"):
            return self.app(environ, start)  # type: ignore[no-any-return]
        with self.lock:
            self.s3_requests += 1
            fault = next((f for f in self.faults if f.get("method", method) == method), None)
            if fault and fault.get("skip", 0) > 0:
                fault["skip"] -= 1  # let this many matching requests through first
                fault = None
            elif fault:
                fault["times"] = fault.get("times", 1) - 1
                if fault["times"] <= 0:
                    self.faults.remove(fault)
        if fault is None:
            return self.app(environ, start)  # type: ignore[no-any-return]
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.get("code", "InternalError")}</Code>'
            f"<Message>injected fault</Message></Error>"
        ).encode()
        if method == "HEAD":
            body = b""  # a HEAD answer has no body; S3 reports the error by status alone
        start(f"{fault['status']} Injected", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
        return [body]

    def _control(self, environ: dict[str, Any], start: Start, method: str) -> Iterable[bytes]:
        if method == "POST":
            doc = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)) or b"[]")
            with self.lock:
                self.faults.extend(doc if isinstance(doc, list) else [doc])
        with self.lock:
            payload = json.dumps({"s3_requests": self.s3_requests, "pending": self.faults}).encode()
        start("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
        return [payload]


def main() -> None:
    port = int(sys.argv[1])
    app = FaultSwitch(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
