"""Bounds on what wsupload keeps or logs from its input, and the one clipping rule.

Anything a producer sends is stored (result documents, the dead-letter list)
and logged; none of it may be allowed to grow those without bound. A source
or job id over its limit is refused (``invalid_input`` / ``invalid_message``);
text kept only to explain a refusal is clipped with ``clip``.
"""

from __future__ import annotations

MAX_SOURCE_CHARS = 4096
"""Longest source accepted: PATH_MAX on Linux, and well past any object-store key (1,024 bytes)."""
MAX_JOB_ID_CHARS = 128
"""Longest job id accepted (the producers' ids are 32 hex characters)."""
MAX_OPTIONS_CHARS = 4096
"""Longest ``options`` object accepted, as JSON."""
SHOWN_CHARS = 200
"""How much of an over-long value a message, document or log line shows."""
MAX_DEAD_MESSAGE_BYTES = 64 * 1024
"""How much of an undecodable message the dead-letter list keeps."""
MAX_LOG_CHARS = 16_000
"""The longest log message a worker writes: whatever a header or argument carried (Celery logs a
message's ``argsrepr`` at debug level as the producer wrote it), a line stays readable."""


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` itself when short; else its start and how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[{len(text) - limit} more characters]"
