"""WaveSpeed's direct upload flow as pure functions: the ticket, and what each PUT answer means.

The flow (issue 21; WaveSpeed's SDKs since August 2026): ``POST /api/v3/media/uploads``
with ``{filename, size, content_type?}`` answers a ticket, ``data.upload = {method: "PUT",
url, headers, expires_at}`` beside the usual ``data`` fields; the file's bytes then go in one
``PUT url`` with exactly ``headers`` and no Authorization (the URL is signed). Any 2xx means
the media is at ``data.download_url``.

One job keeps a ``Transfer`` across its attempts, so that a PUT whose answer was lost is
sent again on the same ticket while the ticket is valid (``expires_at`` less the margin,
``WSUPLOAD_DIRECT_TICKET_MARGIN``), and a new ticket is asked otherwise. Every request that
fails is one attempt of ``WSUPLOAD_MAX_ATTEMPTS``, as a failed binary POST is: the job's
retry loop makes one request per attempt unless a ticket succeeds, and then the PUT follows.

What a PUT's answer means (``put_outcome``):

- 2xx: done.
- 412 Precondition Failed: under ``If-None-Match: *`` the storage refuses a second PUT of
  the same object, because the first one landed. It counts as done only on a PUT sent again
  on the same ticket after an answer that was lost or transient, and only when that PUT
  carried the ticket's ``If-None-Match: *``; anywhere else it is an error.
- 403: the signature was refused or has expired: one new ticket (``TicketRefused``,
  transient), then a second 403 fails the job.
- 429, 5xx, 408: transient; the next attempt PUTs on the same ticket if it is still valid.
- any other 4xx: fails with the storage's answer (bounded).

Nothing here does I/O, so all of it is unit-tested directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from wsupload.errors import ClientError, TicketRefused, UnexpectedResponse
from wsupload.tasks.wavespeed.retry_policy import error_for_status, parse_retry_after

TICKET_PATH = "/api/v3/media/uploads"
DEFAULT_MARGIN = 60.0


@dataclass(frozen=True)
class Ticket:
    """A parsed ``data`` of the ticket endpoint's answer: where to PUT, and what the media will be."""

    url: str
    headers: dict[str, str]
    expires_at: datetime | None
    """None when the ticket gave none that parses: such a ticket is used for one PUT only."""
    data: dict[str, Any]
    """``type``, ``download_url``, ``filename``, ``size``: the result of the upload once a PUT lands."""


@dataclass
class Transfer:
    """One job's direct upload across its attempts (a new one per opened source)."""

    ticket: Ticket | None = None
    puts_on_ticket: int = 0
    """PUTs made on the current ticket: a later one is a repeat of the first."""
    refused_once: bool = False
    """A PUT was refused (403) already: the next refusal fails the job."""
    requests: list[str] = field(default_factory=list)
    """``ticket`` / ``put``, in order: what this transfer sent (for logs and tests)."""


def ticket_request(filename: str, size: int, content_type: str | None) -> dict[str, Any]:
    """The ticket request's JSON body; ``content_type`` left out when unknown."""
    body: dict[str, Any] = {"filename": filename, "size": size}
    if content_type and content_type != "application/octet-stream":
        body["content_type"] = content_type
    return body


def parse_expiry(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def parse_ticket(data: dict[str, Any], *, base_url: str) -> Ticket:
    """The ticket in an answer's ``data`` (already checked as a binary upload's ``data``)."""
    upload = data.get("upload")
    if not isinstance(upload, dict):
        raise UnexpectedResponse("the ticket has no 'data.upload' object", 200)
    method = upload.get("method")
    if not isinstance(method, str) or method.upper() != "PUT":
        raise UnexpectedResponse(f"the ticket's upload method is {str(method)[:20]!r}, not PUT", 200)
    url = upload.get("url")
    if not isinstance(url, str) or not url:
        raise UnexpectedResponse("the ticket has no upload URL", 200)
    # Never quote the URL itself in an error: it is a credential.
    scheme = urlsplit(url).scheme.lower()
    allowed = ("https", "http") if urlsplit(base_url).scheme.lower() == "http" else ("https",)
    if scheme not in allowed or not urlsplit(url).hostname:
        raise UnexpectedResponse(
            f"the ticket's upload URL is not {' or '.join(allowed)} (scheme {scheme[:10]!r}); not sent", 200
        )
    headers = upload.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise UnexpectedResponse("the ticket's upload headers are not an object of strings", 200)
    if any(name.lower() in ("authorization", "content-length", "host") for name in headers):
        raise UnexpectedResponse("the ticket's upload headers name Authorization, Content-Length or Host", 200)
    result = {k: data[k] for k in ("type", "download_url", "filename", "size")}
    return Ticket(url=url, headers=dict(headers), expires_at=parse_expiry(upload.get("expires_at")), data=result)


def secret_parts(url: str) -> tuple[str, ...]:
    """What of a signed URL is a credential: its query (the signature), or its path where it has none."""
    parts = urlsplit(url)
    if parts.query:
        return (parts.query,)
    return (parts.path,) if len(parts.path) >= 8 else ()  # "/" or "/o/1" would mask half of every line


def ticket_usable(ticket: Ticket, now: datetime, margin: float) -> bool:
    """Whether a PUT may (still) go out on this ticket: before ``expires_at`` less ``margin``."""
    if ticket.expires_at is None:
        return False
    return (ticket.expires_at - now).total_seconds() > margin


def wants_new_ticket(transfer: Transfer, now: datetime, margin: float) -> bool:
    """Whether the next attempt starts with a ticket request."""
    ticket = transfer.ticket
    if ticket is None:
        return True
    if transfer.puts_on_ticket == 0:
        return False  # just issued, never used: use it whatever its expiry says (the storage decides)
    return not ticket_usable(ticket, now, margin)


def repeat_of_landed(transfer: Transfer, sent_headers: dict[str, str]) -> bool:
    """A 412 means "done" only on a repeat PUT that carried the ticket's ``If-None-Match: *``."""
    ticket = transfer.ticket
    if ticket is None or transfer.puts_on_ticket < 2:
        return False
    offered = {k.lower(): v.strip() for k, v in ticket.headers.items()}
    sent = {k.lower(): v.strip() for k, v in sent_headers.items()}
    return offered.get("if-none-match") == "*" and sent.get("if-none-match") == "*"


def put_outcome(
    transfer: Transfer, status: int, headers: dict[str, str], describe: str, sent_headers: dict[str, str]
) -> dict[str, Any]:
    """The result of a PUT answered ``status`` (``describe``: the answer, bounded), or raise its error.

    Updates ``transfer``: a refused or spent ticket is dropped, so the next attempt asks a new one.
    """
    ticket = transfer.ticket
    assert ticket is not None
    if 200 <= status < 300:
        return dict(ticket.data)
    if status == 412 and repeat_of_landed(transfer, sent_headers):
        return dict(ticket.data)
    if status == 403:
        transfer.ticket = None
        if transfer.refused_once:
            raise ClientError(f"the storage refused the upload again after a new ticket: {describe}", 403)
        transfer.refused_once = True
        raise TicketRefused(f"the storage refused the upload (expired or refused signature): {describe}", 403)
    if 300 <= status < 400:
        raise UnexpectedResponse(f"HTTP {status} redirect from the storage; an upload is not re-sent to a redirect")
    if status in (408, 429) or 500 <= status <= 599:
        retry_after = parse_retry_after(headers.get("Retry-After"))
        raise error_for_status(status, f"the storage answered {describe}", retry_after)
    # Any other answer is the storage's, not the API's: its 400/401/413 are not the API page's table.
    raise ClientError(f"the storage refused the upload: {describe}", status)
