"""Batches: discovery, manifests, counters kept with each terminal document, export."""

import csv
import io
import json
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from wsupload.config import Settings
from wsupload.errors import InvalidInput, Rejected
from wsupload.tasks.sources.discovery import discover, matches, read_manifest
from wsupload.tasks.store import results
from wsupload.tasks.store.batches import BatchStore, batch_fields, export_row, members_key, name_key, write_export
from wsupload.tasks.store.results import ResultStore
from wsupload.worker.dev.samples import png_bytes

NOW = results.utcnow()


def test_walk_finds_media_by_default_and_honours_globs(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.png", "a/b/y.mp4", "a/notes.txt", "z.wav"):
        (tmp_path / name).write_bytes(png_bytes())
    (tmp_path / "a" / "link.png").symlink_to(tmp_path / "z.wav")
    found = list(discover(str(tmp_path), Settings.from_env({})))
    assert [Path(f.source).relative_to(tmp_path).as_posix() for f in found] == ["z.wav", "a/x.png", "a/b/y.mp4"]
    assert all(f.size == len(png_bytes()) and f.version for f in found)
    only_png = list(discover(str(tmp_path), Settings.from_env({}), ["*.png"]))
    assert [Path(f.source).name for f in only_png] == ["x.png"]
    nested = list(discover(str(tmp_path), Settings.from_env({}), ["a/b/*"]))
    assert [Path(f.source).name for f in nested] == ["y.mp4"]


def test_glob_matching_rules() -> None:
    assert matches("dir/x.png", [])
    assert not matches("dir/x.txt", [])
    assert matches("dir/x.png", ["*.png"])
    assert matches("dir/sub/x.png", ["**/*.png"])
    assert not matches("other/x.png", ["dir/*.png"])


def test_manifests_in_three_formats(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("# comment\n/m/a.png\n\ns3://b/k.mp4\n")
    (tmp_path / "list.csv").write_text("id,source\n1,/m/a.png\n2,s3://b/k.mp4\n")
    (tmp_path / "plain.csv").write_text("/m/a.png\ns3://b/k.mp4\n")
    (tmp_path / "list.jsonl").write_text('{"source": "/m/a.png"}\n\n{"source": "s3://b/k.mp4", "x": 1}\n')
    for name in ("list.txt", "list.csv", "plain.csv", "list.jsonl"):
        assert list(read_manifest(tmp_path / name)) == ["/m/a.png", "s3://b/k.mp4"], name


def test_a_bad_jsonl_line_names_its_place(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"source": "/a.png"}\n{"path": "/b.png"}\n')
    with pytest.raises(InvalidInput, match=r"bad.jsonl:2: expected a JSON object with a 'source' field"):
        list(read_manifest(tmp_path / "bad.jsonl"))


@pytest.fixture
def batch(redis_client: fakeredis.FakeRedis) -> tuple[BatchStore, str, list[str]]:
    store = BatchStore(redis_client, ttl=3600)
    pipe = redis_client.pipeline()
    ids = ["j1", "j2", "j3"]
    # What tasks.enqueue's commit writes for a batch (tests/unit/test_enqueue.py covers the commit itself).
    fields: dict[Any, Any] = batch_fields("b1", "nightly", len(ids), 300)
    pipe.hset(results.batch_key("b1"), mapping=fields)
    pipe.rpush(members_key("b1"), *ids)
    pipe.set(name_key("nightly"), "b1")
    ResultStore(redis_client, 3600).create((results.new_doc(j, f"/m/{j}.png", NOW, "b1") for j in ids), pipe)
    pipe.execute()
    return store, "b1", ids


def finish(redis_client: fakeredis.FakeRedis, job_id: str, ok: bool, size: int = 100) -> None:
    store = ResultStore(redis_client, 3600)
    doc = results.started(store.get(job_id) or {}, NOW)
    store.save(doc)
    if ok:
        store.save(
            results.succeeded(doc, {"type": "image", "download_url": "u", "filename": "f", "size": size}, NOW, 60)
        )
    else:
        store.save(results.failed(doc, Rejected("HTTP 400: bad", 400), NOW))


def test_counters_follow_terminal_documents(redis_client: fakeredis.FakeRedis, batch: Any) -> None:
    store, batch_id, _ = batch
    finish(redis_client, "j1", ok=True)
    info = store.get(batch_id)
    assert (info["done"], info["succeeded"], info["bytes_done"], info["started_at"] is not None) == (1, 1, 100, True)
    assert info["finished_at"] is None
    finish(redis_client, "j2", ok=False)
    finish(redis_client, "j3", ok=True)
    info = store.get(batch_id)
    assert (info["total"], info["done"], info["succeeded"], info["failed"]) == (3, 3, 2, 1)
    assert info["finished_at"] is not None
    assert store.status_counts(batch_id) == {"succeeded": 2, "failed": 1}
    assert store.resolve("nightly") == batch_id
    assert store.resolve("no-such-batch") is None


def test_export_as_jsonl_and_csv(redis_client: fakeredis.FakeRedis, batch: Any) -> None:
    store, batch_id, ids = batch
    finish(redis_client, "j1", ok=True)
    finish(redis_client, "j2", ok=False)
    rows = [export_row(j, d) for j, d in store.docs(batch_id)]
    assert [(r["source"], r["status"], r["download_url"], r["error_kind"]) for r in rows] == [
        ("/m/j1.png", "succeeded", "u", None),
        ("/m/j2.png", "failed", None, "rejected"),
        ("/m/j3.png", "queued", None, None),
    ]
    out = io.StringIO()
    assert write_export(iter(rows), out, "jsonl") == 3
    assert [json.loads(line)["job_id"] for line in out.getvalue().splitlines()] == ids
    out = io.StringIO()
    write_export(iter(rows), out, "csv")
    parsed = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["source"] for r in parsed] == ["/m/j1.png", "/m/j2.png", "/m/j3.png"]
    assert parsed[1]["error"] == "HTTP 400: bad"
