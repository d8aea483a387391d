"""One redaction for every log record and every stored document, whatever the call site did."""

import io
import json
import logging
from collections.abc import Iterator

import pytest

from wsupload.errors import ServerError
from wsupload.tasks.observe import redaction
from wsupload.tasks.store.results import ResultStore, failed, new_doc, utcnow

SECRET = "sk-redaction-test-0123456789"
QUOTED = 'sk-"quoted\\secret'


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    redaction.protect(SECRET, QUOTED, None, "")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("wsupload.test.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield out
    logger.removeHandler(handler)


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR])
def test_a_secret_in_a_message_or_its_arguments_is_masked_at_every_level(captured: io.StringIO, level: int) -> None:
    logger = logging.getLogger("wsupload.test.redaction")
    logger.log(level, "server said: bad key %s", SECRET)
    logger.log(level, f"inline {SECRET} and {{'k': {QUOTED!r}}}")
    text = captured.getvalue()
    assert SECRET not in text
    assert QUOTED not in text
    assert text.count(redaction.MASK) == 3


def test_a_secret_in_a_traceback_is_masked(captured: io.StringIO) -> None:
    logger = logging.getLogger("wsupload.test.redaction")
    try:
        raise ValueError(f"the server echoed {SECRET}")
    except ValueError:
        logger.exception("upload failed")
    text = captured.getvalue()
    assert "Traceback (most recent call last)" in text
    assert "ValueError: the server echoed [redacted]" in text
    assert SECRET not in text


def test_a_secret_in_a_stored_document_is_masked_raw_and_json_escaped(store: ResultStore) -> None:
    error = ServerError(f"HTTP 503: bad key {SECRET} / {QUOTED}", 503)
    store.save(failed(new_doc("j1", "/a.png", utcnow()), error, utcnow()))
    raw = store.redis.get("wsupload:result:j1")
    assert raw is not None
    assert SECRET.encode() not in raw
    assert json.dumps(QUOTED)[1:-1].encode() not in raw
    doc = store.get("j1")
    assert doc is not None
    assert doc["error"]["message"] == "HTTP 503: bad key [redacted] / [redacted]"


def test_nothing_is_masked_before_a_secret_is_registered() -> None:
    fresh = redaction.Redactor()
    assert fresh("nothing to hide") == "nothing to hide"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a %s", ("b",), None)
    assert redaction.redacted_record(record, fresh).getMessage() == "a b"


def test_a_huge_log_message_is_clipped(captured: io.StringIO) -> None:
    logging.getLogger("wsupload.test.redaction").debug("argsrepr: %s", "x" * 10_000_000)
    line = captured.getvalue()
    assert len(line) < 20_000
    assert "more characters]" in line


def test_a_passing_secret_is_masked_only_while_its_block_runs(captured: io.StringIO) -> None:
    logger = logging.getLogger("wsupload.test.redaction")
    query = "expires=1&signature=passing-0123"
    with redaction.protecting(query):
        with redaction.protecting(query):  # two uploads may hold the same form
            logger.debug("PUT /o/1?%s", query)
        logger.debug("PUT /o/1?%s", query)
    logger.debug("after: %s", query)
    lines = captured.getvalue().splitlines()
    assert lines == ["DEBUG PUT /o/1?[redacted]", "DEBUG PUT /o/1?[redacted]", f"DEBUG after: {query}"]
    assert redaction.redact(SECRET) == redaction.MASK  # the lasting secrets stay
