"""Configuration: settings from the environment and the root of the error hierarchy."""

from wsupload.config.errors import ConfigError, WsuploadError
from wsupload.config.settings import KEY_PREFIX, UPLOAD_TASK_NAME, Settings

__all__ = ["KEY_PREFIX", "UPLOAD_TASK_NAME", "ConfigError", "Settings", "WsuploadError"]
