"""Which broker a URL selects, and AMQP URLs refused in one line that never shows the password."""

import pytest

from wsupload.config import ConfigError, Settings
from wsupload.config.broker_urls import is_amqp_url, parse_amqp_url

SECRET = "s3cr3t-pw"


@pytest.mark.parametrize(
    ("url", "amqp"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/vh", True),
        ("AMQPS://u:p@rabbit/", True),
        ("pyamqp://rabbit", True),
        ("redis://127.0.0.1:6379/0", False),
        ("sentinel://h:26379", False),
        (None, False),
    ],
)
def test_is_amqp_url(url: str | None, amqp: bool) -> None:
    assert is_amqp_url(url) is amqp


def test_an_amqp_broker_is_selected_and_results_stay_in_redis() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://r:6379/0", "WSUPLOAD_BROKER_URL": "amqp://u:p@rabbit:5672/v"})
    assert settings.broker_is_amqp
    assert settings.redis_url == "redis://r:6379/0"
    assert not Settings.from_env({"WSUPLOAD_BROKER_URL": "redis://b:6379/1"}).broker_is_amqp
    assert not Settings.from_env({}).broker_is_amqp


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (f"amqp://guest:{SECRET}@:5672/v", "the URL has no host"),
        (f"amqp://guest:{SECRET}@rabbit:99999/v", "its port is not a number from 1 to 65535"),
        (f"amqp://guest:{SECRET}@rabbit:port/v", "its port is not a number from 1 to 65535"),
        (f"amqp://guest:{SECRET}@rabbit/a/b", "names more than a virtual host"),
        (f"amqp://guest:{SECRET}/x@rabbit/v", "percent-encode"),
    ],
)
def test_a_bad_amqp_url_is_one_line_without_the_password(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        parse_amqp_url(url)
    assert SECRET not in str(caught.value)
    with pytest.raises(ConfigError) as config:
        Settings.from_env({"WSUPLOAD_BROKER_URL": url})
    text = str(config.value)
    assert text.startswith("WSUPLOAD_BROKER_URL: ")
    assert "\n" not in text
    assert SECRET not in text


@pytest.mark.parametrize("url", ["amqp://u:p@rabbit:5672//", "amqp://u:p@rabbit:5672/%2F", "amqp://u:p@rabbit:5672"])
def test_the_root_vhost_is_accepted_as_celery_and_rabbitmq_spell_it(url: str) -> None:
    from kombu import Connection

    assert parse_amqp_url(url) == url
    assert Connection(url).virtual_host == "/"


def test_an_unknown_scheme_names_both_brokers() -> None:
    with pytest.raises(ConfigError, match=r"redis://.*or amqp:// or amqps:// or pyamqp:// \(RabbitMQ\)"):
        Settings.from_env({"WSUPLOAD_BROKER_URL": "kafka://k:9092"})


@pytest.mark.parametrize(
    ("variable", "value", "rule"),
    [
        ("WSUPLOAD_AMQP_CONSUMER_TIMEOUT", "5", "at least 10 seconds"),
        ("WSUPLOAD_AMQP_PUBLISH_GRACE", "1", "at least 5 seconds"),
    ],
)
def test_amqp_settings_are_checked(variable: str, value: str, rule: str) -> None:
    with pytest.raises(ConfigError, match=rule):
        Settings.from_env({variable: value})


def test_amqp_settings_default_to_rabbitmqs_own_consumer_timeout() -> None:
    settings = Settings.from_env({})
    assert (settings.amqp_consumer_timeout, settings.amqp_publish_grace) == (1800, 60)
