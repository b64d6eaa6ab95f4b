"""Where real producers put keyed messages, on the real broker, against our placement.

librdkafka decides the partition itself (the broker only stores it): a plain confluent-kafka
producer with ``partitioner: murmur2_random`` (Java's partitioner), dyno-stream's own producer
configuration, and one left at librdkafka's default, ``consistent_random`` (CRC32 of the key),
each send the same keys; the delivery reports say where each landed. Kafka's published hash
vectors are in ``tests/unit/test_kafka_placement.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from dyno_stream.config import Settings, producer_config
from dyno_stream.kafka.members import item_partition
from dyno_stream.kafka.partitioning import crc32_partition, kafka_partition
from dyno_stream.kafka.topics import ensure_topics

PARTITIONS = 12
# Kafka's and librdkafka's murmur2 test keys, item names beyond ASCII, and many more
KEYS = [
    b"21",
    b"foobar",
    b"a-little-bit-long-string",
    b"kafka",
    b"giberish123456789",
    b"4",
    b"PreAmbleWillBeRemoved,ThePrePartThatIs",
    "café-21".encode(),
    "日本/ü%".encode(),
    *(f"item-{i:04d}".encode() for i in range(300)),
]


def placed(config: dict[str, Any], topic: str, keys: list[bytes]) -> dict[bytes, int]:
    """Each key's partition, as the producer's delivery report gives it."""
    out: dict[bytes, int] = {}
    errors: list[str] = []

    def done(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            key = msg.key()
            assert key is not None
            out[key] = msg.partition() or 0

    producer = Producer(config)
    for key in keys:
        producer.produce(topic, b"x", key, on_delivery=done)
        producer.poll(0)
    assert producer.flush(60) == 0, "messages not delivered"
    assert not errors, errors[:3]
    assert len(out) == len(keys)
    return out


def test_producers_place_keys_where_our_functions_say(
    make_settings: Callable[..., Settings],
) -> None:
    s = make_settings(partitions=PARTITIONS)
    ensure_topics(s)
    topic = s.topics.ops
    want = {key: kafka_partition(key, PARTITIONS) for key in KEYS}
    assert len(set(want.values())) == PARTITIONS  # the keys reach every partition

    java = placed({**s.kafka.librdkafka(), "partitioner": "murmur2_random"}, topic, KEYS)
    assert java == want
    ours = placed(producer_config(s), topic, KEYS)
    assert ours == want
    assert {k: item_partition(k.decode(), PARTITIONS, "murmur2") for k in KEYS} == want

    # librdkafka's default hashes with CRC32 (the rule "crc32"): a producer left at it puts
    # items elsewhere than murmur2, which the worker forwards to their rule partition
    default = placed(s.kafka.librdkafka(), topic, KEYS)
    assert default == {key: crc32_partition(key, PARTITIONS) for key in KEYS}
    crc32 = s.model_copy(update={"kafka": s.kafka.model_copy(update={"partitioner": "crc32"})})
    assert placed(producer_config(crc32), topic, KEYS) == default
    moved = [k for k in KEYS if default[k] != want[k]]
    assert len(moved) > len(KEYS) // 2, "CRC32 and murmur2 placed nearly every key alike"
