"""Configuration: settings from the environment (``ConfigError`` and its root re-exported from ``wsupload.errors``).

The names below load ``config.settings`` at first use, not at import: a module of this
package (``config.parsers`` for the CLI's argument types) does not pay for every setting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wsupload.config.names import KEY_PREFIX, UPLOAD_TASK_NAME
from wsupload.errors import ConfigError, WsuploadError

if TYPE_CHECKING:
    from wsupload.config.settings import Settings

__all__ = ["KEY_PREFIX", "UPLOAD_TASK_NAME", "ConfigError", "Settings", "WsuploadError"]


def __getattr__(name: str) -> Any:
    if name == "Settings":
        from wsupload.config.settings import Settings

        return Settings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
