"""Configuration: settings from the environment and the root of the error hierarchy."""

from config.errors import ConfigError, WsuploadError
from config.settings import KEY_PREFIX, UPLOAD_TASK_NAME, Settings

__all__ = ["KEY_PREFIX", "UPLOAD_TASK_NAME", "ConfigError", "Settings", "WsuploadError"]
