"""Configuration: settings from the environment (``ConfigError`` and its root re-exported from ``wsupload.errors``)."""

from wsupload.config.settings import KEY_PREFIX, UPLOAD_TASK_NAME, Settings
from wsupload.errors import ConfigError, WsuploadError

__all__ = ["KEY_PREFIX", "UPLOAD_TASK_NAME", "ConfigError", "Settings", "WsuploadError"]
