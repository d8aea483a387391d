"""Schedule files: valid ones load; every mistake is one line naming the schedule and field."""

from pathlib import Path

import fakeredis
import pytest

from wsupload.config import ConfigError, Settings
from wsupload.config.schedules import Schedule, load_schedules
from wsupload.tasks.scan import run_scan, seen_key
from wsupload.worker.app import beat_schedule
from wsupload.worker.dev.samples import png_bytes


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "schedules.toml"
    path.write_text(text)
    return path


def test_a_valid_file_loads_and_becomes_beat_entries(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[[schedule]]
name = "incoming"
source = "/srv/in"
every = "15m"
glob = "*.png"

[[schedule]]
name = "nightly"
manifest = "/srv/list.csv"
cron = "0 2 * * *"
dedup = false
""",
    )
    incoming, nightly = load_schedules(path)
    assert incoming == Schedule(name="incoming", source="/srv/in", every=900.0, glob=("*.png",))
    assert (nightly.manifest, nightly.cron, nightly.dedup) == ("/srv/list.csv", "0 2 * * *", False)
    assert Schedule.from_message(incoming.to_message()) == incoming
    entries = beat_schedule([incoming, nightly], Settings.from_env({}))
    assert entries["wsupload-scan-incoming"]["task"] == "wsupload.scan"
    assert entries["wsupload-scan-incoming"]["schedule"].total_seconds() == 900
    assert entries["wsupload-scan-nightly"]["options"] == {"queue": "wsupload.bulk"}
    assert entries["wsupload-scan-nightly"]["schedule"].hour == {2}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('name = "x"\nevery = "1m"', "exactly one of 'source'"),
        ('name = "x"\nsource = "/a"\nmanifest = "/b"\nevery = "1m"', "exactly one of 'source'"),
        ('name = "x"\nsource = "/a"', "exactly one of 'every'"),
        ('name = "x"\nsource = "/a"\nevery = "often"', "'every' expected seconds"),
        ('name = "x"\nsource = "/a"\ncron = "* * *"', "'cron' must have five fields"),
        ('name = "x"\nsource = "/a"\ncron = "99 * * * *"', "'cron' must have five fields"),
        ('name = "bad name"\nsource = "/a"\nevery = "1m"', "'name' must be"),
        ('name = "x"\nsource = "/a"\nevery = "1m"\nwhen = 1', "unknown fields ['when']"),
        ('name = "x"\nsource = "/a"\nevery = "1m"\ndedup = "yes"', "'dedup' must be true or false"),
    ],
)
def test_mistakes_are_one_line_each(tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_schedules(write(tmp_path, f"[[schedule]]\n{body}\n"))
    assert len(caught.value.problems) == 1
    (line,) = caught.value.problems
    assert line.startswith("WSUPLOAD_SCHEDULES: schedule #1")
    assert needle in line


def test_duplicate_names_and_bad_toml(tmp_path: Path) -> None:
    twice = '[[schedule]]\nname = "a"\nsource = "/a"\nevery = "1m"\n'
    with pytest.raises(ConfigError, match="the name 'a' is used twice"):
        load_schedules(write(tmp_path, twice * 2))
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_schedules(write(tmp_path, "[[schedule]\n"))


def test_a_scan_enqueues_only_new_or_changed_files(tmp_path: Path) -> None:
    client = fakeredis.FakeRedis()
    (tmp_path / "a.png").write_bytes(png_bytes(4, 4))
    schedule = Schedule(name="s", source=str(tmp_path), every=60)
    settings = Settings.from_env({})
    assert run_scan(settings, client, schedule)["last_enqueued"] == 1
    assert run_scan(settings, client, schedule)["last_enqueued"] == 0
    (tmp_path / "b.png").write_bytes(png_bytes(5, 5))
    (tmp_path / "a.png").write_bytes(png_bytes(6, 6))  # changed: another size
    assert run_scan(settings, client, schedule)["last_enqueued"] == 2
    assert client.hlen(seen_key("s")) == 2
    assert client.llen(settings.bulk_queue) == 3


def test_a_scan_outside_the_allowed_roots_records_an_error(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    client = fakeredis.FakeRedis()
    settings = Settings.from_env({"WSUPLOAD_ALLOWED_ROOTS": str(tmp_path / "root")})
    record = run_scan(settings, client, Schedule(name="s", source="/etc", every=60))
    assert "outside WSUPLOAD_ALLOWED_ROOTS" in str(record["last_error"])
    assert client.llen(settings.bulk_queue) == 0


def test_a_callback_url_without_a_host_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[[schedule]]\nname = "a"\nsource = "/srv"\nevery = "1h"\ncallback_url = "https://"\n')
    with pytest.raises(ConfigError, match="has no host"):
        load_schedules(path)
