"""Scheduled batch runs: read and check ``WSUPLOAD_SCHEDULES`` (a TOML file).

    [[schedule]]
    name = "incoming"                 # letters, digits, - _ .
    source = "/srv/media/incoming"    # a directory, s3://bucket/prefix/, or:
    # manifest = "/srv/lists/today.csv"
    every = "15m"                     # or: cron = "0 2 * * *"  (minute hour day month weekday, UTC)
    glob = ["*.png", "*.mp4"]         # optional; default: every supported media file
    dedup = true                      # optional; default true
    callback_url = "https://…"        # optional

Each run enqueues, as one batch named after the schedule, the sources that are
new or changed since the last run. Every problem is one line naming the
schedule and the field, raised at startup as a ``ConfigError``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wsupload.config.parsers import check_callback_url, parse_duration
from wsupload.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FIELDS = {"name", "source", "manifest", "every", "cron", "glob", "dedup", "callback_url"}


@dataclass(frozen=True)
class Schedule:
    name: str
    source: str | None = None
    manifest: str | None = None
    every: float | None = None
    cron: str | None = None
    glob: tuple[str, ...] = ()
    dedup: bool = True
    callback_url: str | None = None

    def to_message(self) -> dict[str, Any]:
        """The scan task's argument: the whole definition, so workers need no config file."""
        doc = asdict(self)
        doc["glob"] = list(self.glob)
        return doc

    @classmethod
    def from_message(cls, doc: dict[str, Any]) -> Schedule:
        return parse_schedule(doc, f"schedule {doc.get('name')!r}")

    def crontab_fields(self) -> dict[str, str]:
        """Celery's crontab arguments for the cron expression."""
        minute, hour, day, month, weekday = (self.cron or "").split()
        return {"minute": minute, "hour": hour, "day_of_month": day, "month_of_year": month, "day_of_week": weekday}


def load_schedules(path: Path) -> list[Schedule]:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"WSUPLOAD_SCHEDULES: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"WSUPLOAD_SCHEDULES: {path} is not valid TOML: {exc}") from None
    entries = doc.get("schedule", [])
    problems: list[str] = []
    if set(doc) - {"schedule"} or not isinstance(entries, list):
        problems.append(f"WSUPLOAD_SCHEDULES: {path} must hold only [[schedule]] tables")
        entries = []
    schedules = []
    for number, entry in enumerate(entries, 1):
        where = f"WSUPLOAD_SCHEDULES: schedule #{number} ({entry.get('name', 'unnamed')})"
        try:
            schedules.append(parse_schedule(entry, where))
        except ConfigError as exc:
            problems.extend(exc.problems)
    names = [s.name for s in schedules]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"WSUPLOAD_SCHEDULES: the name {name!r} is used twice")
    if problems:
        raise ConfigError(problems)
    return schedules


def parse_schedule(entry: dict[str, Any], where: str) -> Schedule:
    """One schedule, or a ConfigError with a line per problem, each starting with ``where``."""
    own: list[str] = []
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        own.append(f"{where}: unknown fields {unknown}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        own.append(f"{where}: 'name' must be letters, digits, '.', '_' or '-'")
    source, manifest = entry.get("source"), entry.get("manifest")
    if (source is None) == (manifest is None):
        own.append(f"{where}: give exactly one of 'source' (directory or s3:// prefix) and 'manifest'")
    for field, value in (("source", source), ("manifest", manifest)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            own.append(f"{where}: '{field}' must be a non-empty string")
    every, cron = entry.get("every"), entry.get("cron")
    seconds = None
    if (every is None) == (cron is None):
        own.append(f"{where}: give exactly one of 'every' (e.g. \"15m\") and 'cron' (e.g. \"0 2 * * *\")")
    elif every is not None:
        try:
            seconds = parse_duration(str(every))
            if seconds < 1:
                raise ValueError("must be at least 1 second")
        except ValueError as exc:
            own.append(f"{where}: 'every' {exc}")
    elif not isinstance(cron, str) or not _valid_cron(cron):
        own.append(f"{where}: 'cron' must have five fields: minute hour day-of-month month day-of-week")
    glob = entry.get("glob", [])
    if isinstance(glob, str):
        glob = [glob]
    if not isinstance(glob, list) or not all(isinstance(g, str) and g for g in glob):
        own.append(f"{where}: 'glob' must be a pattern or a list of patterns")
        glob = []
    dedup = entry.get("dedup", True)
    if not isinstance(dedup, bool):
        own.append(f"{where}: 'dedup' must be true or false")
    callback = entry.get("callback_url")
    if callback is not None:
        try:
            check_callback_url(callback)
        except ValueError as exc:
            own.append(f"{where}: 'callback_url' must be an http(s) URL ({exc})")
    if own:
        raise ConfigError(own)
    return Schedule(
        name=str(name),
        source=source,
        manifest=manifest,
        every=seconds,
        cron=cron if isinstance(cron, str) else None,
        glob=tuple(glob),
        dedup=bool(dedup),
        callback_url=callback,
    )


def _valid_cron(text: str) -> bool:
    from celery.schedules import crontab

    parts = text.split()
    if len(parts) != 5:
        return False
    minute, hour, day, month, weekday = parts
    try:
        crontab(minute=minute, hour=hour, day_of_month=day, month_of_year=month, day_of_week=weekday)
    except (ValueError, TypeError, IndexError):
        return False
    return True
