"""The transport's guard and the consumer's check: what kombu and Celery could not read never reaches them."""

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kombu.message import Message
from kombu.transport import virtual

from wsupload.config import UPLOAD_TASK_NAME
from wsupload.config.settings import UPLOAD_MANY_TASK_NAME
from wsupload.tasks.wire import encode
from wsupload.worker.consumer import message_problem
from wsupload.worker.poison import PoisonGuard


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, str, dict[str, Any]]] = []

    def __call__(self, raw: Any, reason: str, **where: Any) -> None:
        self.calls.append((raw, reason, where))


class Probe(PoisonGuard):
    """Just enough of kombu's virtual channel for ``_readable``: its codecs and its Message."""

    codecs = virtual.Channel.codecs
    decode_body = virtual.Channel.decode_body
    Message = virtual.Message


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    found = Recorder()
    monkeypatch.setattr(PoisonGuard, "quarantine", found)
    return found


def test_a_message_our_producers_write_passes(recorder: Recorder) -> None:
    raw = encode.upload_message("j1", "/a.png", "q").encode()
    assert Probe()._readable(raw, "q") == json.loads(raw)
    assert recorder.calls == []


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"garbage{", "JSONDecodeError"),
        (b"[1,2,3]", "JSON list"),
        (b'"x"', "JSON str"),
        (b"\xff\xfe", "JSONDecodeError"),  # kombu reads bytes as UTF-8 with replacement
        (b'{"properties": {"delivery_tag": 5}}', "delivery_tag"),
        (b'{"properties": {"delivery_tag": "t", "delivery_info": {}}}', "routing_key"),
    ],
)
def test_unreadable_envelopes_are_quarantined_not_raised(recorder: Recorder, raw: bytes, needle: str) -> None:
    assert Probe()._readable(raw, "q") is None
    ((kept, reason, where),) = recorder.calls
    assert kept == raw
    assert needle in reason
    assert where["queue"] == "q"


def test_an_envelope_naming_an_upload_job_says_which(recorder: Recorder) -> None:
    envelope = json.loads(encode.upload_message("job-1", "/a.png", "q"))
    envelope["body"] = "!!!"  # the message: base64 claimed, not given
    envelope["properties"]["body_encoding"] = "base64"
    envelope["content-type"] = "application/x-unknown"
    Probe()._readable(json.dumps({**envelope, "body": 5}), "q")
    ((_, reason, where),) = recorder.calls
    assert where == {"queue": "q", "job_ids": ["job-1"], "is_upload": True}
    assert "'body' is not a string" in reason


ENVELOPE_PARTS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=10,
)
ENVELOPES = st.fixed_dictionaries(
    {},
    optional={
        "body": st.text(max_size=12) | ENVELOPE_PARTS,
        "headers": ENVELOPE_PARTS,
        "properties": st.fixed_dictionaries(
            {},
            optional={
                "delivery_tag": st.text(max_size=8) | ENVELOPE_PARTS,
                "body_encoding": st.sampled_from(["base64", "utf-8", "rot13"]) | ENVELOPE_PARTS,
                "delivery_info": st.fixed_dictionaries(
                    {}, optional={"exchange": st.text(max_size=4) | ENVELOPE_PARTS, "routing_key": ENVELOPE_PARTS}
                ),
            },
        )
        | ENVELOPE_PARTS,
    },
)


@given(payload=ENVELOPES | ENVELOPE_PARTS)
def test_any_message_is_either_delivered_whole_or_quarantined_never_raised(payload: Any) -> None:
    recorder = Recorder()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PoisonGuard, "quarantine", recorder)
        probe = Probe()
        delivered = probe._readable(json.dumps(payload), "q")
    if delivered is None:
        assert len(recorder.calls) == 1
    else:
        assert recorder.calls == []
        message = virtual.Message(delivered, channel=probe)  # type: ignore[arg-type]
        assert message.delivery_tag == delivered["properties"]["delivery_tag"]


def kombu_message(headers: Any, body: bytes, content_type: str = "application/json") -> Message:
    message = Message(body=body, content_type=content_type, content_encoding="utf-8")  # type: ignore[arg-type]
    message.headers = headers  # set after: kombu's constructor would not take a non-object
    return message


KNOWN = {UPLOAD_TASK_NAME: object(), "wsupload.callback": object()}
GOOD_BODY = json.dumps([["j1", "/a.png"], {}, {}]).encode()


@pytest.mark.parametrize(
    ("headers", "body", "needle", "job"),
    [
        (["x"], GOOD_BODY, "no headers object", None),
        ({"id": "j1"}, GOOD_BODY, "no 'task' header", None),
        ({"task": "nope", "id": "j1"}, GOOD_BODY, "unknown task 'nope'", None),
        ({"task": UPLOAD_TASK_NAME, "id": "j1"}, b"{nope", "cannot be decoded", "j1"),
        ({"task": UPLOAD_TASK_NAME, "id": "j1"}, b'{"a": 1}', "[args, kwargs, embed]", "j1"),
        ({"task": UPLOAD_TASK_NAME, "id": "j1"}, json.dumps([["j1"], {}, {}]).encode(), "no source", "j1"),
        ({"task": UPLOAD_TASK_NAME, "id": "?"}, json.dumps([[], {}, {}]).encode(), "no job id", None),
        ({"task": "wsupload.callback", "id": "j1"}, b"{nope", "cannot be decoded", None),
    ],
)
def test_the_consumer_names_what_is_wrong(headers: Any, body: bytes, needle: str, job: str | None) -> None:
    problem = message_problem(kombu_message(headers, body), KNOWN)
    assert problem is not None
    assert needle in problem[0]
    assert problem[1] == ([job] if job else [])


def test_a_bad_source_is_the_tasks_business_not_the_consumers() -> None:
    body = json.dumps([["j1", 42], {}, {}]).encode()
    assert message_problem(kombu_message({"task": UPLOAD_TASK_NAME, "id": "j1"}, body), KNOWN) is None


def test_base64_is_a_transport_detail() -> None:
    raw = json.loads(encode.upload_message("j1", "/a.png", "q"))
    body = base64.b64decode(raw["body"])
    assert message_problem(kombu_message(raw["headers"], body), KNOWN) is None


def test_the_consumer_moves_a_bulk_message_aside_naming_every_job_it_can() -> None:
    known = {**KNOWN, UPLOAD_MANY_TASK_NAME: object()}
    good = json.loads(encode.upload_many_message([("j1", "/a.png"), ("j2", 7)], "q"))  # type: ignore[list-item]
    body = base64.b64decode(good["body"])
    assert message_problem(kombu_message(good["headers"], body), known) is None  # j2's source: the task's business
    forged = {**good["headers"], "wsupload_jobs": ["j9"]}
    problem = message_problem(kombu_message(forged, body), known)
    assert problem == ("the wsupload_jobs header does not list the message's jobs in order", ["j9", "j1", "j2"])


@pytest.mark.parametrize("task", [["wsupload.upload"], {"a": 1}, 7, None])
def test_a_task_header_of_any_json_type_is_read_without_raising(task: object) -> None:
    from wsupload.worker.poison import envelope_jobs

    envelope = json.loads(encode.upload_message("job-1", "/a.png", "q"))
    envelope["headers"]["task"] = task
    assert envelope_jobs(envelope) == (["job-1"], False)  # another task's id, maybe a job's: not an upload
    message = kombu_message(envelope["headers"], base64.b64decode(envelope["body"]))
    problem = message_problem(message, {**KNOWN, UPLOAD_MANY_TASK_NAME: object()})
    assert problem is not None
    assert problem[1] == []  # not an upload: its task id is no job's
