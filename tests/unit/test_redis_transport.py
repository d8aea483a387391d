"""The pause a worker takes after Redis refuses to record a delivered message."""

from wsupload.worker.redis_transport import pause_after


def test_pauses_double_from_one_second_up_to_sixteen() -> None:
    assert [pause_after(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 16, 16]
