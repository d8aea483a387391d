"""Per-job options carried in the message (``kwargs.options``), checked before use."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from wsupload.config.parsers import check_callback_url
from wsupload.config.settings import UPLOAD_FLOWS
from wsupload.errors import InvalidInput

KNOWN = ("dedup", "callback_url", "upload_flow", "deadline_at")


def parse_deadline(raw: object) -> datetime:
    """``deadline_at`` as a UTC moment: an ISO-8601 string with its offset (``…Z``); ``InvalidInput`` if not."""
    if not isinstance(raw, str):
        raise InvalidInput("option 'deadline_at' must be an ISO-8601 time string, like 2026-01-02T03:04:05.000Z")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidInput(f"option 'deadline_at' is not an ISO-8601 time: {raw[:40]!r}") from None
    if moment.tzinfo is None:
        raise InvalidInput("option 'deadline_at' must say its offset (…Z for UTC)")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class JobOptions:
    dedup: bool = False
    """Reuse an earlier upload of the same bytes while it is still retained."""
    callback_url: str | None = None
    """POST the final result document here (signed) when the job ends."""
    upload_flow: str | None = None
    """``binary``, ``direct`` or ``auto`` for this job; None: the worker's ``WSUPLOAD_UPLOAD_FLOW``.
    Workers that predate it refuse the job (``invalid_input``): set it once every worker knows it."""
    deadline_at: str | None = None
    """The job ends ``expired`` if no attempt of it starts before this time (ISO-8601 UTC, Redis's clock):
    set by a producer's ``expires_in``. Workers that predate it refuse the job (``invalid_input``)."""

    @classmethod
    def parse(cls, raw: object) -> JobOptions:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise InvalidInput(f"options must be an object, got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(KNOWN))
        if unknown:
            raise InvalidInput(f"unknown options {unknown}; known: {list(KNOWN)}")
        dedup = raw.get("dedup", False)
        if not isinstance(dedup, bool):
            raise InvalidInput("option 'dedup' must be true or false")
        url = raw.get("callback_url")
        if url is not None:
            try:
                check_callback_url(url)
            except ValueError as exc:
                raise InvalidInput(f"option 'callback_url' must be an http(s) URL ({exc})") from None
        flow = raw.get("upload_flow")
        if flow is not None and flow not in UPLOAD_FLOWS:
            raise InvalidInput(f"option 'upload_flow' must be one of {list(UPLOAD_FLOWS)}")
        deadline = raw.get("deadline_at")
        if deadline is not None:
            parse_deadline(deadline)
        return cls(dedup=dedup, callback_url=url, upload_flow=flow, deadline_at=deadline)

    @property
    def deadline(self) -> float | None:
        """``deadline_at`` as unix time; None without one."""
        return None if self.deadline_at is None else parse_deadline(self.deadline_at).timestamp()

    def expired(self, now: float) -> bool:
        """Whether the deadline has passed at unix time ``now`` (False without one)."""
        deadline = self.deadline
        return deadline is not None and now >= deadline

    def to_message(self) -> dict[str, object]:
        """What a producer puts in ``kwargs.options`` (defaults left out)."""
        out: dict[str, object] = {}
        if self.dedup:
            out["dedup"] = True
        if self.callback_url:
            out["callback_url"] = self.callback_url
        if self.upload_flow:
            out["upload_flow"] = self.upload_flow
        if self.deadline_at:
            out["deadline_at"] = self.deadline_at
        return out
