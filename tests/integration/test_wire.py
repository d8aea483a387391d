"""tasks.wire.encode builds the message Celery itself would put in Redis."""

import base64
import json
import uuid

import pytest

from wsupload.config import UPLOAD_TASK_NAME
from wsupload.tasks.wire import encode
from wsupload.worker.producer import Producer

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("options", [None, {"dedup": True, "callback_url": "https://hooks.test/x"}])
def test_the_hand_built_message_matches_celerys(producer: Producer, options: dict[str, object] | None) -> None:
    queue = "wire-" + uuid.uuid4().hex[:6]
    job_id = uuid.uuid4().hex
    kwargs = {"options": options} if options else {}
    producer.app.send_task(UPLOAD_TASK_NAME, args=[job_id, "/m/a.png"], kwargs=kwargs, task_id=job_id, queue=queue)
    raw = producer.redis.rpop(queue)
    assert isinstance(raw, bytes)
    celerys = json.loads(raw)
    ours = json.loads(encode.upload_message(job_id, "/m/a.png", queue, options))

    assert json.loads(base64.b64decode(ours["body"])) == json.loads(base64.b64decode(celerys["body"]))
    for key in ("content-type", "content-encoding"):
        assert ours[key] == celerys[key]
    differ = {"origin", "argsrepr", "kwargsrepr"}  # descriptive only: the process, and repr details
    for key, value in ours["headers"].items():
        assert key in celerys["headers"], key
        if key not in differ:
            assert value == celerys["headers"][key], key
    for key in ("correlation_id", "delivery_mode", "delivery_info", "priority", "body_encoding"):
        assert ours["properties"][key] == celerys["properties"][key], key
