"""What the processing reads off a consumed Kafka message: where it is, its time, its
headers (an expiry's condition), and the dead letter it becomes when it is bad."""

from __future__ import annotations

import time

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from dyno_stream.core.deadletter import DeadLetter
from dyno_stream.core.errors import DynoError
from dyno_stream.core.events import H_EXPIRE_IF_HASH


def header_pairs(msg: Message) -> list[tuple[str, bytes | str | None]]:
    raw = msg.headers() or []
    return list(raw.items() if isinstance(raw, dict) else raw)


def expiry_condition(msg: Message) -> str | None:
    """The hash a delItem sent by expiry is conditional on (``H_EXPIRE_IF_HASH``), if any."""
    for key, value in header_pairs(msg):
        if key == H_EXPIRE_IF_HASH and value is not None:
            return value.decode() if isinstance(value, bytes) else value
    return None


def dead_letter(msg: Message, exc: DynoError) -> DeadLetter:
    """The dead letter for a message that ``exc`` says is bad: its bytes, and why."""
    topic, partition, offset = topic_partition_offset(msg)
    raw = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    headers = [(k, _as_bytes(v)) for k, v in pairs]
    return DeadLetter(
        topic,
        partition,
        offset,
        msg.key(),
        msg.value(),
        headers,
        exc.reason,
        str(exc),
        getattr(exc, "field", None),
        exc.headers(),
    )


def topic_partition_offset(msg: Message) -> tuple[str, int, int]:
    """A consumed message's topic, partition and offset (always set on consumed messages)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


def consumed_ms(msg: Message) -> int | None:
    """The message's Kafka timestamp in ms, capped at this machine's clock; None if it has
    none. On a CreateTime topic a producer's clock far ahead would otherwise put the
    partition's consumed time in the future for good; capped, it can still make a lagging
    partition look further along than it is (one reason the ops topic is LogAppendTime)."""
    kind, ms = msg.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE or ms < 0:
        return None
    return min(ms, int(time.time() * 1000))


def _as_bytes(v: str | bytes | None) -> bytes:
    return b"" if v is None else v.encode() if isinstance(v, str) else v
