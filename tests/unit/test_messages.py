"""Reading a message's arguments and a stored document: any JSON in, a verdict or a whole document out."""

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsupload.errors import InvalidInput, InvalidMessage, NoJobId, UploadError
from wsupload.errors import RetriesExhausted as SomeError
from wsupload.tasks.store import results
from wsupload.tasks.wire.decode import (
    Refused,
    UploadCall,
    bulk_jobs_in,
    check_upload_call,
    check_upload_many,
    job_id_of,
    jobs_named,
    read_upload_call,
    read_upload_many,
    valid_job_id,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
ARG_NAMES = st.sampled_from(["job_id", "source", "options", "option", "extra"]) | st.text(max_size=8)


@given(args=st.lists(JSON, max_size=4) | JSON, kwargs=st.dictionaries(ARG_NAMES, JSON, max_size=3) | JSON)
@settings(max_examples=400)
def test_any_arguments_give_a_call_or_a_readable_refusal(args: Any, kwargs: Any) -> None:
    verdict = read(args, kwargs)
    if isinstance(verdict, UploadCall):
        assert valid_job_id(verdict.job_id)
        assert isinstance(verdict.source, str)
        return
    if isinstance(verdict, NoJobId):
        assert job_id_of(args, kwargs) is None
    else:
        assert isinstance(verdict, InvalidMessage | InvalidInput)
        assert job_id_of(args, kwargs) is not None  # a job to record the refusal in
    assert 0 < len(verdict.message) < 1000


@given(
    args=st.lists(JSON, max_size=4) | JSON,
    kwargs=st.dictionaries(ARG_NAMES, JSON, max_size=3) | JSON,
    task_id=st.none() | st.text(max_size=10),
)
@settings(max_examples=400)
def test_the_consumers_check_refuses_exactly_the_messages_the_task_would(args: Any, kwargs: Any, task_id: Any) -> None:
    """The consumer checks only the shape (``check_upload_call``); what it lets through, the task reads whole."""
    try:
        read_upload_call(args, kwargs, task_id)
        verdict: Exception | None = None
    except UploadError as exc:
        verdict = exc
    try:
        check_upload_call(args, kwargs, task_id)
        checked: Exception | None = None
    except InvalidMessage as exc:
        checked = exc
    if isinstance(verdict, InvalidMessage):
        assert type(checked) is type(verdict)
        assert checked is not None
        assert checked.message == verdict.message
    else:
        assert checked is None  # a call, or a source or options for the job to refuse (InvalidInput)


def read(args: Any, kwargs: Any) -> UploadCall | UploadError:
    try:
        return read_upload_call(args, kwargs)
    except UploadError as exc:
        return exc


@given(job_id=st.text(min_size=1, max_size=200), task_id=JSON)
def test_a_message_whose_args_are_unreadable_falls_back_on_its_task_id(job_id: str, task_id: Any) -> None:
    found = job_id_of("not a list", None, task_id)
    assert found == (task_id if valid_job_id(task_id) else None)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "needle"),
    [
        (["j1"], {}, InvalidMessage, "no source"),
        ([], {}, NoJobId, "no job id"),
        ([None, "/a.png"], {}, NoJobId, "is not 1 to 128"),
        (["j" * 129, "/a.png"], {}, NoJobId, "is not 1 to 128"),
        (["j1", "/a.png"], {"option": {}}, InvalidMessage, 'unknown keyword arguments ["option"]'),
        (["j1", 42], {}, InvalidInput, "must be a string, got int"),
        (["j1", "/a.png", {"dedupe": True}], {}, InvalidInput, "unknown options"),
        (["j1", "/" + "a" * 5000], {}, InvalidInput, "over the limit of 4096"),
        ("j1", {}, NoJobId, "args must be a list"),
    ],
)
def test_refusals_say_why(args: Any, kwargs: Any, error: type[Exception], needle: str) -> None:
    with pytest.raises(error) as caught:
        read_upload_call(args, kwargs)
    assert type(caught.value) is error
    assert needle in str(caught.value)


def test_the_task_id_names_the_job_when_the_arguments_do_not() -> None:
    with pytest.raises(InvalidMessage) as caught:
        read_upload_call([], {}, "job-from-task-id")
    assert type(caught.value) is InvalidMessage  # not NoJobId: there is a document to end
    assert job_id_of([], {}, "job-from-task-id") == "job-from-task-id"


def test_keyword_and_positional_arguments_bind_alike() -> None:
    assert read_upload_call(["j1"], {"source": "/a.png"}) == read_upload_call(["j1", "/a.png"], {})


DOCS = st.dictionaries(
    st.sampled_from(
        [
            *("job_id", "status", "source", "attempts", "result", "error", "created_at", "started_at"),
            *("finished_at", "expires_at", "batch_id", "last_error", "next_attempt_at", "extra"),
        ]
    ),
    JSON | st.sampled_from(list(results.STATUSES)),
)


@given(raw=DOCS | JSON)
@settings(max_examples=400)
def test_any_stored_document_is_made_whole_and_every_transition_works(raw: Any) -> None:
    doc = results.coerce_doc(raw, "j1", NOW, source="/a.png")
    assert doc["job_id"] == "j1"
    assert doc["status"] in results.STATUSES
    assert isinstance(doc["attempts"], int)
    # Everything the worker does to a document works on it, and it stays JSON.
    running = results.attempting(results.started(doc, NOW))
    retrying = results.retrying(running, SomeError("x"), 1.0, NOW)
    for ended in (
        results.failed(retrying, SomeError("x"), NOW),
        results.succeeded(running, {"download_url": "https://x/y", "size": 1}, NOW, 60),
    ):
        assert results.coerce_doc(json.loads(json.dumps(ended)), "j1", NOW) == ended


def test_a_terminal_status_without_its_outcome_is_not_believed() -> None:
    assert results.coerce_doc({"status": "succeeded"}, "j1", NOW)["status"] == "queued"
    assert results.coerce_doc({"status": "failed", "error": "x"}, "j1", NOW)["status"] == "queued"
    whole = {"status": "succeeded", "result": {"download_url": "https://x/y"}}
    assert results.coerce_doc(whole, "j1", NOW)["status"] == "succeeded"


def test_a_stored_value_that_is_not_json_reads_as_a_queued_document() -> None:
    doc = results.decode_doc(b"\xff not json", "j1", NOW)
    assert doc is not None
    assert (doc["job_id"], doc["status"]) == ("j1", "queued")


# Bulk messages (wsupload.upload_many): the message as a whole, then each job on its own.


def bulk(*jobs: object, options: object = None) -> tuple[list[object], dict[str, object]]:
    return [list(jobs)], ({"options": options} if options is not None else {})


def test_a_bulk_messages_jobs_are_read_each_on_its_own() -> None:
    args, kwargs = bulk(["j1", "/a.png"], ["j2", 42], ["j3", "/c.png", {"x": 1}], options={"dedup": True})
    one, two, three = read_upload_many(args, kwargs, ["j1", "j2", "j3"])
    assert isinstance(one, UploadCall)
    assert (one.job_id, one.source, one.options.dedup) == ("j1", "/a.png", True)
    assert isinstance(two, Refused)
    assert two.job_id == "j2"
    assert "must be a string" in two.error.message
    assert isinstance(three, Refused)
    assert "options given both" in three.error.message


@pytest.mark.parametrize(
    ("args", "kwargs", "named", "needle"),
    [
        ([], {}, [], "one list of jobs"),
        ([[]], {}, [], "1 to 256 jobs"),
        ([[["j", "/a"]] * 257], {}, None, "1 to 256 jobs"),
        ([[["j1", "/a"]]], {"extra": 1}, ["j1"], "only options"),
        (*bulk(["bad id", "/a"]), ["bad id"], "every job must be"),
        (*bulk("j1"), ["j1"], "every job must be"),
        (*bulk(["j1", "/a"], ["j1", "/b"]), ["j1", "j1"], "appears twice"),
        (*bulk(["j1", "/a"], ["j2", "/b"]), ["j2", "j1"], "does not list"),
    ],
)
@pytest.mark.parametrize("read", [check_upload_many, read_upload_many])
def test_a_bulk_message_that_cannot_run_says_why(
    read: Callable[..., object], args: object, kwargs: object, named: object, needle: str
) -> None:
    with pytest.raises(InvalidMessage, match=needle):
        read(args, kwargs, named)


def test_the_consumers_check_leaves_a_jobs_bad_source_or_options_to_that_job() -> None:
    args, kwargs = bulk(["j1", "/a.png"], ["j2", 42], ["j3", "/c.png", {"x": 1}])
    assert check_upload_many(args, kwargs, ["j1", "j2", "j3"]) == args[0]


def test_the_jobs_a_message_names_come_from_its_headers_alone() -> None:
    assert jobs_named({"task": "wsupload.upload", "id": "j1"}) == ["j1"]
    assert jobs_named({"task": "wsupload.upload_many", "id": "m", "wsupload_jobs": ["j1", "j2"]}) == ["j1", "j2"]
    assert jobs_named({"task": "wsupload.upload_many", "id": "m", "wsupload_jobs": ["j1", 2]}) == []
    assert jobs_named({"task": "wsupload.upload_many", "id": "m", "wsupload_jobs": ["j"] * 257}) == []
    assert jobs_named({"task": "wsupload.callback", "id": "j1"}) == []
    assert jobs_named("headers") == []
    assert bulk_jobs_in([[["j1", "/a"], ["no good", "/b"], 7, ["j3"]]]) == ["j1", "j3"]
