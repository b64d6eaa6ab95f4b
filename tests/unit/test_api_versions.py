"""The ApiVersions answer as the doctor reads it (the bytes a broker sends, built by hand)."""

from __future__ import annotations

import struct

import pytest

from dyno_stream.kafka.api_versions import (
    _CORRELATION,
    CONSUMER_GROUP_HEARTBEAT,
    BrokerApis,
    parse_response,
)


def _answer(
    apis: list[tuple[int, int, int]], error: int = 0, correlation: int = _CORRELATION
) -> bytes:
    body = struct.pack(">ihi", correlation, error, len(apis))
    return body + b"".join(struct.pack(">hhh", *api) for api in apis)


def test_a_broker_offering_kip848_is_told_apart_from_one_that_does_not() -> None:
    new = BrokerApis("b:9092", parse_response(_answer([(0, 0, 11), (68, 0, 1), (18, 0, 4)])))
    old = BrokerApis("b:9092", parse_response(_answer([(0, 0, 11), (18, 0, 3)])))
    assert new.kip848 and new.versions[CONSUMER_GROUP_HEARTBEAT] == (0, 1)
    assert "offers ConsumerGroupHeartbeat v0-v1" in new.describe()
    assert not old.kip848
    assert "does not offer ConsumerGroupHeartbeat" in old.describe()


def test_an_error_or_another_requests_answer_is_refused() -> None:
    with pytest.raises(ValueError, match="error code 35"):
        parse_response(_answer([], error=35))
    with pytest.raises(ValueError, match="another request"):
        parse_response(_answer([], correlation=7))
