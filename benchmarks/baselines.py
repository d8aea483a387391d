"""The baselines the queue path is measured against, each run in its own process.

- ``api_example``: the API page's own Python example, file after file
  (``requests.post(..., files={"file": f})``), timed and with its peak RSS;
- ``direct``: a thread pool of requests sessions, no queue: the ceiling for the
  queue path at the same concurrency;
- ``curl``: ``curl -F file=@…`` for single large files: the practical ceiling;
- ``curl_put``: the direct flow's ceiling: one ticket request, then ``curl -T FILE
  -X PUT`` to its signed URL with the ticket's headers.

Run as ``python -m benchmarks.baselines MODE URL KEY FILE...``; prints one JSON line.
"""

from __future__ import annotations

import json
import mimetypes
import resource
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

UPLOAD_PATH = "/api/v3/media/upload/binary"
TICKET_PATH = "/api/v3/media/uploads"


def api_example(url: str, key: str, files: list[str]) -> dict[str, float]:
    start, cpu = time.perf_counter(), time.process_time()
    for path in files:
        with open(path, "rb") as f:
            # The API page's example as printed (no timeout there either).
            response = requests.post(url + UPLOAD_PATH, headers={"Authorization": f"Bearer {key}"}, files={"file": f})  # noqa: S113
        assert response.json()["data"]["size"] > 0
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu}


def direct(url: str, key: str, files: list[str], threads: int) -> dict[str, float]:
    local = threading.local()

    def upload(path: str) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.headers["Authorization"] = f"Bearer {key}"
        with open(path, "rb") as f:
            response = session.post(url + UPLOAD_PATH, files={"file": (Path(path).name, f)})
        assert response.json()["data"]["size"] > 0

    started, start, cpu = time.time(), time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(upload, files))
    seconds = time.perf_counter() - start
    # started/ended (the machine's clock): several of these side by side are timed as one.
    return {"seconds": seconds, "cpu": time.process_time() - cpu, "started": started, "ended": started + seconds}


def curl(url: str, key: str, path: str) -> float:
    output = subprocess.run(
        [
            shutil.which("curl") or "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{time_total}",
            "-H",
            f"Authorization: Bearer {key}",
            "-F",
            f"file=@{path}",
            url + UPLOAD_PATH,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(output)


def ticket(url: str, key: str, path: str) -> dict[str, Any]:
    """One ticket request for ``path``, as the worker asks it: its ``data.upload``."""
    content_type = mimetypes.guess_type(path)[0]
    doc: dict[str, Any] = {"filename": Path(path).name, "size": Path(path).stat().st_size}
    if content_type:
        doc["content_type"] = content_type
    request = urllib.request.Request(
        url + TICKET_PATH,
        data=json.dumps(doc).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        upload = json.load(answer)["data"]["upload"]
    assert upload["method"] == "PUT", upload
    return dict(upload)


def curl_put(url: str, key: str, path: str) -> float:
    """Seconds for the direct flow without the queue: the ticket request, then ``curl -T`` to its signed URL."""
    start = time.perf_counter()
    upload = ticket(url, key, path)
    asked = time.perf_counter() - start
    headers = [arg for name, value in upload["headers"].items() for arg in ("-H", f"{name}: {value}")]
    output = subprocess.run(
        [
            shutil.which("curl") or "curl",
            "-sS",
            "--fail",
            "-o",
            "/dev/null",
            "-w",
            "%{time_total}",
            *headers,
            "-X",
            "PUT",
            "-T",
            path,
            upload["url"],
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return asked + float(output)


def main() -> None:
    mode, url, key, *rest = sys.argv[1:]
    if mode == "api_example":
        report = api_example(url, key, rest)
    elif mode == "direct":
        report = direct(url, key, rest[1:], int(rest[0]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    report["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(report))


if __name__ == "__main__":
    main()
