"""Per-job options carried in the message (``kwargs.options``), checked before use."""

from __future__ import annotations

from dataclasses import dataclass

from wsupload.config.parsers import check_callback_url
from wsupload.config.settings import UPLOAD_FLOWS
from wsupload.errors import InvalidInput

KNOWN = ("dedup", "callback_url", "upload_flow")


@dataclass(frozen=True)
class JobOptions:
    dedup: bool = False
    """Reuse an earlier upload of the same bytes while it is still retained."""
    callback_url: str | None = None
    """POST the final result document here (signed) when the job ends."""
    upload_flow: str | None = None
    """``binary``, ``direct`` or ``auto`` for this job; None: the worker's ``WSUPLOAD_UPLOAD_FLOW``.
    Workers that predate it refuse the job (``invalid_input``): set it once every worker knows it."""

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
        return cls(dedup=dedup, callback_url=url, upload_flow=flow)

    def to_message(self) -> dict[str, object]:
        """What a producer puts in ``kwargs.options`` (defaults left out)."""
        out: dict[str, object] = {}
        if self.dedup:
            out["dedup"] = True
        if self.callback_url:
            out["callback_url"] = self.callback_url
        if self.upload_flow:
            out["upload_flow"] = self.upload_flow
        return out
