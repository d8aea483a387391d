"""Settings: the table of rows, defaults, parsing, one readable line per bad variable, derived limits."""

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from wsupload.config import ConfigError, Settings
from wsupload.config.settings import VARIABLES, Variable, deprecations, parse_duration, parse_seconds, parse_size

SECRET = "sk-unit-secret-value"
CALLBACK_SECRET = "cb-unit-secret-value"


def test_defaults_follow_the_api_page() -> None:
    s = Settings.from_env({})
    assert s.base_url == "https://api.wavespeed.ai"
    assert s.max_attempts == 5
    assert s.max_bytes == 300 * 1024 * 1024
    assert s.result_ttl == s.retention == 7 * 24 * 3600
    assert s.retry_after_max >= 60
    assert s.api_key is None
    assert s.effective_broker_url == s.redis_url


def test_every_variable_is_read() -> None:
    s = Settings.from_env(
        {
            "WAVESPEED_API_KEY": SECRET,
            "WAVESPEED_BASE_URL": "http://127.0.0.1:9000/",
            "REDIS_URL": "redis://h:1/2",
            "WSUPLOAD_BROKER_URL": "redis://b:3/4",
            "WSUPLOAD_QUEUE": "uploads",
            "WSUPLOAD_MAX_ATTEMPTS": "3",
            "WSUPLOAD_BACKOFF_BASE": "0.5",
            "WSUPLOAD_BACKOFF_MAX": "1m",
            "WSUPLOAD_RETRY_AFTER_MAX": "90",
            "WSUPLOAD_MAX_BYTES": "10MiB",
            "WSUPLOAD_RESULT_TTL": "1d",
            "WSUPLOAD_RETENTION": "2d",
            "WSUPLOAD_LEASE": "10s",
            "WSUPLOAD_MAX_DELIVERIES": "3",
            "WSUPLOAD_JOB_TIMEOUT": "2h",
            "WSUPLOAD_STOP_GRACE": "1m",
            "WSUPLOAD_CONCURRENCY": "4",
            "WSUPLOAD_CONNECT_TIMEOUT": "3",
            "WSUPLOAD_READ_TIMEOUT": "45s",
        }
    )
    assert (s.api_key, s.base_url, s.redis_url, s.effective_broker_url) == (
        SECRET,
        "http://127.0.0.1:9000",
        "redis://h:1/2",
        "redis://b:3/4",
    )
    assert (s.queue, s.max_attempts, s.backoff_base, s.backoff_max, s.retry_after_max) == ("uploads", 3, 0.5, 60, 90)
    assert (s.max_bytes, s.result_ttl, s.retention) == (10 * 1024 * 1024, 86400, 172800)
    assert (s.lease, s.max_deliveries, s.job_timeout, s.stop_grace) == (10, 3, 7200, 60)
    assert (s.concurrency, s.connect_timeout, s.read_timeout) == (4, 3, 45)


def test_the_other_variables_are_read(tmp_path: Path) -> None:
    schedules = tmp_path / "schedules.toml"
    schedules.write_text("")
    env = {
        "WSUPLOAD_ALLOWED_ROOTS": str(tmp_path),
        "WSUPLOAD_ALLOWED_BUCKETS": "media/in",
        "WSUPLOAD_S3_ENDPOINT_URL": "http://127.0.0.1:9000/",
        "WSUPLOAD_S3_REGION": " eu-west-1 ",
        "WSUPLOAD_S3_ADDRESSING_STYLE": "PATH",
        "WSUPLOAD_OVERSIZE_POLICY": "presign",
        "WSUPLOAD_PRESIGN_TTL": "2h",
        "WSUPLOAD_BULK_QUEUE": "uploads.bulk",
        "WSUPLOAD_RATE_LIMIT": "2.5",
        "WSUPLOAD_MAX_CONCURRENT_UPLOADS": "3",
        "WSUPLOAD_DEDUP_MARGIN": "2h",
        "WSUPLOAD_CALLBACK_SECRET": CALLBACK_SECRET,
        "WSUPLOAD_CALLBACK_ATTEMPTS": "7",
        "WSUPLOAD_CALLBACK_HOSTS": "*.Example.com, [::1]",
        "WSUPLOAD_SCHEDULES": str(schedules),
        "WSUPLOAD_BEAT_STATE": str(tmp_path / "beat"),
        "WSUPLOAD_FSSPEC_PROTOCOLS": "GS",
    }
    s = Settings.from_env(env)
    assert (s.allowed_roots, s.allowed_buckets) == ((tmp_path.resolve(),), ("s3://media/in",))
    assert (s.s3_endpoint_url, s.s3_region, s.s3_addressing_style) == ("http://127.0.0.1:9000", "eu-west-1", "path")
    assert (s.oversize_policy, s.presign_ttl, s.bulk_queue) == ("presign", 7200, "uploads.bulk")
    assert (s.rate_limit, s.max_concurrent_uploads, s.dedup_margin) == (2.5, 3, 7200)
    assert (s.callback_secret, s.callback_attempts, s.callback_hosts) == (CALLBACK_SECRET, 7, ("*.example.com", "::1"))
    assert (s.schedules_path, s.beat_state, s.fsspec_protocols) == (schedules, tmp_path / "beat", ("gs",))


def test_every_settings_field_has_exactly_one_row_and_every_row_a_field() -> None:
    assert [v.field for v in VARIABLES] == [f.name for f in fields(Settings)]
    names = [v.env for v in VARIABLES]
    assert len(set(names)) == len(names), "two rows read the same variable"


@pytest.mark.parametrize("variable", VARIABLES, ids=lambda v: v.env)
def test_each_default_is_what_its_variable_would_parse_to(variable: Variable[Any]) -> None:
    """The default is written once, as docs/configuration.md shows it: unset and set-to-it give the same value."""
    default = getattr(Settings.from_env({}), variable.field)
    if variable.default is None:
        assert default is None
        assert "{}" not in variable.shown
    else:
        assert Settings.from_env({variable.env: variable.default}) == Settings.from_env({})
        assert variable.read(variable.default) == default
        if variable.default:
            assert f"`{variable.default}`" in variable.default_cell()
        else:  # an empty default (an empty tuple) is shown as unset
            assert variable.default_cell().startswith("unset")


@pytest.mark.parametrize("variable", [v for v in VARIABLES if v.secret], ids=lambda v: v.env)
def test_a_bad_secret_is_reported_without_its_value(variable: Variable[Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable.env: SECRET + "\tleaked"})
    assert str(caught.value) == f"{variable.env}: contains whitespace or control characters"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WSUPLOAD_MAX_ATTEMPTS", "abc"),
        ("WSUPLOAD_MAX_ATTEMPTS", "0"),
        ("WSUPLOAD_BACKOFF_BASE", "-1"),
        ("WSUPLOAD_MAX_BYTES", "lots"),
        ("WSUPLOAD_MAX_BYTES", "0"),
        ("WSUPLOAD_LEASE", "1"),
        ("WSUPLOAD_LEASE", "1h"),
        ("WSUPLOAD_MAX_DELIVERIES", "0"),
        ("WSUPLOAD_JOB_TIMEOUT", "5"),
        ("WSUPLOAD_STOP_GRACE", "-1"),
        ("WSUPLOAD_CONCURRENCY", "0"),
        ("WSUPLOAD_READ_TIMEOUT", "0"),
        ("WSUPLOAD_QUEUE", "has space"),
        ("WAVESPEED_BASE_URL", "ftp://example.com"),
        ("WAVESPEED_BASE_URL", "http://"),
        ("REDIS_URL", "http://localhost:6379"),
        ("WSUPLOAD_ALLOWED_ROOTS", "relative/dir"),
        ("WSUPLOAD_ALLOWED_ROOTS", "/no/such/dir/anywhere"),
        ("WSUPLOAD_CALLBACK_HOSTS", "https://hooks.example.com"),
        ("WSUPLOAD_CALLBACK_HOSTS", "hooks.example.com:443"),
    ],
)
def test_invalid_value_is_one_line_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})
    assert caught.value.problems == [str(caught.value)]
    assert str(caught.value).startswith(f"{name}: ")


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"WSUPLOAD_MAX_ATTEMPTS": "x", "WSUPLOAD_CONCURRENCY": "y"})
    assert [line.split(":")[0] for line in caught.value.problems] == ["WSUPLOAD_MAX_ATTEMPTS", "WSUPLOAD_CONCURRENCY"]


def test_backoff_max_below_base_is_refused() -> None:
    with pytest.raises(ConfigError, match="WSUPLOAD_BACKOFF_MAX"):
        Settings.from_env({"WSUPLOAD_BACKOFF_BASE": "10", "WSUPLOAD_BACKOFF_MAX": "5"})


def test_worker_requires_the_api_key_producers_do_not() -> None:
    assert Settings.from_env({}).api_key is None
    with pytest.raises(ConfigError, match=r"^WAVESPEED_API_KEY: is required"):
        Settings.from_env({}, worker=True)


def test_api_key_is_never_shown() -> None:
    s = Settings.from_env({"WAVESPEED_API_KEY": SECRET})
    assert SECRET not in repr(s)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"WAVESPEED_API_KEY": SECRET + " tail"}, worker=True)
    assert SECRET not in str(caught.value)


def test_no_secret_is_in_the_repr() -> None:
    s = Settings.from_env({"WAVESPEED_API_KEY": SECRET, "WSUPLOAD_CALLBACK_SECRET": CALLBACK_SECRET})
    assert (s.api_key, s.callback_secret) == (SECRET, CALLBACK_SECRET)
    for shown in (repr(s), str(s), f"{s}"):
        assert SECRET not in shown
        assert CALLBACK_SECRET not in shown
    assert {v.env for v in VARIABLES if v.secret} == {"WAVESPEED_API_KEY", "WSUPLOAD_CALLBACK_SECRET"}


def test_the_repr_masks_the_passwords_of_the_redis_and_broker_urls() -> None:
    s = Settings.from_env(
        {
            "REDIS_URL": "redis://:redis-pw-1@cache:6380/2",
            "WSUPLOAD_BROKER_URL": "amqp://app:amqp-pw-2@mq:5672/jobs",
            "WSUPLOAD_CONCURRENCY": "7",
        }
    )
    shown = repr(s)
    assert "redis-pw-1" not in shown
    assert "amqp-pw-2" not in shown
    assert "redis_url='redis://:***@cache:6380/2'" in shown
    assert "broker_url='amqp://app:***@mq:5672/jobs'" in shown
    assert "concurrency=7" in shown  # the rest as a dataclass shows it


@pytest.mark.parametrize("lease", ["2", "6", "30", "600"])
def test_a_lease_is_renewed_three_times_and_restored_within_it(lease: str) -> None:
    s = Settings.from_env({"WSUPLOAD_LEASE": lease})
    assert s.renew_interval * 3 == pytest.approx(s.lease)
    assert 1 <= s.restore_interval < s.lease
    assert 1 <= s.sweep_interval <= s.lease


def test_the_visibility_timeout_is_accepted_and_said_to_be_deprecated() -> None:
    env = {"WSUPLOAD_VISIBILITY_TIMEOUT": "3600"}
    assert Settings.from_env(env) == Settings()
    (line,) = deprecations(env)
    assert line.startswith("WSUPLOAD_VISIBILITY_TIMEOUT is deprecated: ignored since leases")
    assert deprecations({}) == []


def test_allowed_roots_are_resolved(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    s = Settings.from_env({"WSUPLOAD_ALLOWED_ROOTS": f"{tmp_path / 'link'}:{tmp_path}"})
    assert s.allowed_roots == ((tmp_path / "real").resolve(), tmp_path.resolve())


@pytest.mark.parametrize(
    ("text", "expected"), [("100", 100), ("300MiB", 300 * 2**20), ("300MB", 300 * 10**6), ("1GiB", 2**30), ("2k", 2000)]
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("90", 90), ("1.5", 1.5), ("30s", 30), ("15m", 900), ("2h", 7200)])
def test_parse_duration(text: str, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("90", 90), ("1.5", 1), ("15m", 900), ("7d", 7 * 24 * 3600)])
def test_parse_seconds_is_whole_seconds(text: str, expected: int) -> None:
    assert parse_seconds(text) == expected
    assert isinstance(parse_seconds(text), int)
