"""Sentinel URLs: both spellings, one meaning; readable refusals that never show a password; masking."""

from __future__ import annotations

import re

import pytest
from kombu.utils.url import parse_url

from wsupload.config import Settings
from wsupload.config.parsers import parse_redis_url
from wsupload.config.redis_urls import SentinelUrl, is_sentinel_url, masked, parse_sentinel_url, url_secrets
from wsupload.errors import ConfigError

SECRET = "hunter2-Secret"
SENTINEL_SECRET = "s3ntinel-Secret"

SAME_GROUP = SentinelUrl(
    sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-3.internal", 26379)),
    master="mymaster",
    db=2,
    password=SECRET,
    sentinel_password=SENTINEL_SECRET,
)


@pytest.mark.parametrize(
    "url",
    [
        f"redis+sentinel://:{SECRET}@10.0.0.1,10.0.0.2:26380,sentinel-3.internal/mymaster/2"
        f"?sentinel_password={SENTINEL_SECRET}",
        f"sentinel://:{SECRET}@10.0.0.1:26379;sentinel://10.0.0.2:26380;sentinel://sentinel-3.internal/2"
        f"?master_name=mymaster&sentinel_password={SENTINEL_SECRET}",
        # Case of the scheme, the password repeated in every part, the query on the first part.
        f"SENTINEL://:{SECRET}@10.0.0.1/2?master_name=mymaster&sentinel_password={SENTINEL_SECRET};"
        f"sentinel://:{SECRET}@10.0.0.2:26380/2;sentinel://:{SECRET}@sentinel-3.internal:26379/2",
    ],
)
def test_both_spellings_say_the_same(url: str) -> None:
    assert is_sentinel_url(url)
    parsed = parse_sentinel_url(url)
    assert parsed == SAME_GROUP
    assert (parsed.password, parsed.sentinel_password) == (SECRET, SENTINEL_SECRET)
    assert parse_redis_url(url) == url


def test_defaults_are_sentinels_port_and_database_0() -> None:
    assert parse_sentinel_url("redis+sentinel://h1,[::1]/m") == SentinelUrl((("h1", 26379), ("::1", 26379)), "m")
    assert parse_sentinel_url("sentinel://h1?master_name=m") == SentinelUrl((("h1", 26379),), "m")


def test_a_password_is_percent_decoded_and_the_repr_shows_none() -> None:
    parsed = parse_sentinel_url("redis+sentinel://app:p%40ss%3Aw%2Frd@h1/m?sentinel_password=a%26b")
    assert (parsed.username, parsed.password, parsed.sentinel_password) == ("app", "p@ss:w/rd", "a&b")
    assert "p@ss" not in repr(parsed)
    assert "a&b" not in repr(parsed)


def test_kombus_spelling_repeats_the_login_and_database_in_every_part() -> None:
    """kombu moves to the next URL after a failed connect: each must log in to the same database."""
    parsed = parse_sentinel_url("redis+sentinel://app:p%40ss@h1:1,[fe80::1]:2/m/3")
    parts = parsed.kombu_url().split(";")
    assert len(parts) == 2
    for part, host in zip(parts, ("h1", "fe80::1"), strict=True):
        read = parse_url(part)
        assert (read["transport"], read["hostname"], read["userid"], read["password"]) == (
            "sentinel",
            host,
            "app",
            "p@ss",
        )
        assert read["virtual_host"] == "3"
    assert parsed.kombu_transport_options() == {"master_name": "m"}


def test_the_sentinels_own_login_goes_to_the_transport_options() -> None:
    parsed = parse_sentinel_url("sentinel://h1?master_name=m&sentinel_username=mon&sentinel_password=x")
    assert parsed.kombu_transport_options() == {
        "master_name": "m",
        "sentinel_kwargs": {"username": "mon", "password": "x"},
    }
    assert parsed.master_kwargs() == {"db": 0}


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (f"redis+sentinel://:{SECRET}@h1/", "names no master: give the name the sentinels monitor as the path"),
        (f"sentinel://:{SECRET}@h1;sentinel://h2", "names no master: give the name the sentinels monitor as ?master"),
        (f"redis+sentinel://:{SECRET}@/m", "names no sentinel host"),
        (f"redis+sentinel://:{SECRET}@h1:port/m", "sentinel h1: the port must be a number from 1 to 65535"),
        (f"redis+sentinel://:{SECRET}@h1:70000/m", "the port must be a number from 1 to 65535"),
        (f"redis+sentinel://:{SECRET}@h1/m/zero", "the database must be a number"),
        (f"redis+sentinel://:{SECRET}@h1/m/0/extra", "has more path than /master_name/db"),
        (f"redis+sentinel://:{SECRET}@h1/m?timeout=1", "unknown option 'timeout'"),
        (f"redis+sentinel://:{SECRET}@h1;h2/m", "redis+sentinel:// takes them comma-separated"),
        (f"redis+sentinel://:{SECRET}@h1/my master", "the master name 'my master' may hold"),
        (f"sentinel://:{SECRET}@h1,h2?master_name=m", "one host per URL, joined by ';'"),
        (f"sentinel://:{SECRET}@h1;redis://h2?master_name=m", "every ';'-separated part must be a sentinel:// URL"),
        (f"sentinel://:{SECRET}@h1;sentinel://:other@h2?master_name=m", "different logins in different parts"),
        ("sentinel://h1/1;sentinel://h2/2?master_name=m", "different databases"),
        ("sentinel://h1?master_name=a&master_name=b", "'master_name' is given twice"),
        # A forgotten "@" leaves the password where a host should be: it is not quoted back.
        (f"redis+sentinel://:{SECRET},h2/m", "a sentinel is not host[:port]"),
        (f"rediss+sentinel://:{SECRET}@h1/m", "TLS through Sentinel is not supported"),
        (f"http://:{SECRET}@h1/m", "expected a URL starting with redis://, rediss://, unix://, redis+sentinel://"),
    ],
)
def test_a_bad_url_is_refused_with_its_reason_and_never_its_password(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as refused:
        parse_redis_url(url)
    assert SECRET not in str(refused.value)


def test_the_settings_error_line_shows_the_url_with_its_passwords_masked() -> None:
    env = {
        "REDIS_URL": f"redis+sentinel://:{SECRET}@h1/?sentinel_password={SENTINEL_SECRET}",
        "WSUPLOAD_BROKER_URL": f"sentinel://:{SECRET}@h1;sentinel://:{SECRET}@h2",
    }
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    text = str(refused.value)
    assert "REDIS_URL: names no master" in text
    assert "(got 'redis+sentinel://:***@h1/?sentinel_password=***')" in text
    assert "WSUPLOAD_BROKER_URL: names no master" in text
    assert "'sentinel://:***@h1;sentinel://:***@h2'" in text
    assert SECRET not in text
    assert SENTINEL_SECRET not in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (f"redis://app:{SECRET}@h:6379/0", "redis://app:***@h:6379/0"),
        (f"rediss://:{SECRET}@h/0?ssl_cert_reqs=none", "rediss://:***@h/0?ssl_cert_reqs=none"),
        ("redis://app@h/0", "redis://app@h/0"),
        (
            f"redis+sentinel://:{SECRET}@h1,h2:2/m/0?sentinel_password={SENTINEL_SECRET}",
            "redis+sentinel://:***@h1,h2:2/m/0?sentinel_password=***",
        ),
        (
            f"sentinel://:{SECRET}@h1;sentinel://:{SECRET}@h2/0?master_name=m&SENTINEL_PASSWORD={SENTINEL_SECRET}",
            "sentinel://:***@h1;sentinel://:***@h2/0?master_name=m&SENTINEL_PASSWORD=***",
        ),
        # An "@" left unencoded in a password hides more, never less.
        (f"redis://:a@{SECRET}@h/0", "redis://:***@h/0"),
        (f"redis+sentinel://h1/m?sentinel_password=a@{SECRET}", "redis+sentinel://h1/m?sentinel_password=***"),
    ],
)
def test_masked_urls_show_no_password(url: str, shown: str) -> None:
    assert masked(url) == shown


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://h:6380/0", "unix:///run/redis.sock?db=0"])
def test_plain_redis_urls_are_still_accepted(url: str) -> None:
    assert parse_redis_url(url) == url
    assert not is_sentinel_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://admin:2024?Secr3tTail@h1/m",
        "redis+sentinel://admin:2024/Secr3tTail@h1",
        "sentinel://:2024#Secr3tTail@h1:26379/0?master_name=m",
    ],
)
def test_a_password_with_an_unencoded_delimiter_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(ValueError, match="percent-encode") as refused:
        parse_sentinel_url(url)
    assert "Secr3tTail" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("redis://:s3cr%40t-pw@h:6379/0", ["s3cr%40t-pw", "s3cr@t-pw"]),
        ("rediss://worker:longpass@h/0?ssl_cert_reqs=required", ["longpass"]),
        ("amqp://wsupload:rabbit-pw@127.0.0.1:5672/vh", ["rabbit-pw"]),
        ("redis+sentinel://:master-pw@s1,s2/mymaster?sentinel_password=sentinel-pw", ["master-pw", "sentinel-pw"]),
        ("sentinel://:pw-one@s1:26379;sentinel://:pw-one@s2:26379?master_name=m", ["pw-one"]),
        ("redis://h:6379/0", []),
        ("redis://user@h/0", []),
        ("redis://:abc@h/0", []),  # shorter than MIN_URL_SECRET: masking "abc" everywhere would ruin the log
    ],
)
def test_url_secrets_are_the_passwords_masked_would_hide(url: str, secrets: list[str]) -> None:
    assert url_secrets(url) == sorted(secrets)
    for secret in secrets:
        assert secret not in masked(url)
