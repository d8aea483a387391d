"""The root of wsupload's one error hierarchy, and the configuration branch.

The job-failure branches (permanent and transient upload errors) live in
``tasks.errors`` and derive from ``WsuploadError`` here; this module sits in the
lowest layer so that every other package can import it without cycles.
"""

from __future__ import annotations


class WsuploadError(Exception):
    """Base class of every error wsupload raises on purpose."""


class ConfigError(WsuploadError):
    """Invalid configuration, found at startup. Each problem is one line that
    names the variable, so the CLI can print it without a traceback."""

    def __init__(self, problems: list[str] | str) -> None:
        if isinstance(problems, str):
            problems = [problems]
        super().__init__(problems)
        self.problems: list[str] = list(problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)
