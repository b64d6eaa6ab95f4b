"""Where an item's ops go, held to hashes Kafka's own clients publish.

``murmur2`` against the vectors of Kafka's ``UtilsTest.testMurmur2`` (Java client, signed
32-bit results) and of librdkafka's ``unittest_murmur2`` (``src/rdmurmur2.c``, which checks
its ``murmur2_random`` partitioner against the Java client's hashes, including keys at
unaligned offsets and the empty key). The partitions below were worked out from those
published hashes with Java's ``toPositive(h) % n``, not with our functions. A real
producer's placement is in ``tests/integration/test_kafka_placement.py``.
"""

from __future__ import annotations

import pytest

from dyno_stream.kafka.members import item_partition
from dyno_stream.kafka.partitioning import (
    crc32_partition,
    kafka_partition,
    murmur2,
    rule_partition,
    snapshot_partition,
)

# key -> (published hash as a signed 32-bit int, partition of 4, partition of 12)
VECTORS: dict[bytes, tuple[int, int, int]] = {
    # Kafka, clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java
    b"21": (-973932308, 0, 0),
    b"foobar": (-790332482, 2, 6),
    b"a-little-bit-long-string": (-985981536, 0, 8),
    b"a-little-bit-longer-string": (-1486304829, 3, 11),
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": (-58897971, 1, 5),
    b"abc": (479470107, 3, 3),
    # librdkafka, src/rdmurmur2.c (its hex results as signed 32-bit)
    b"kafka": (-798503068, 0, 4),  # 0xd067cf64
    b"giberish123456789": (-1890243828, 0, 8),  # 0x8f552b0c
    b"1234": (-1614185708, 0, 0),  # 0x9fc97b14
    b"234": (-406844982, 2, 2),  # 0xe7c009ca
    b"34": (-2026295078, 2, 6),  # 0x873930da
    b"4": (1514888353, 1, 1),  # 0x5a4b5ca1
    b"PreAmbleWillBeRemoved,ThePrePartThatIs": (2017611548, 0, 8),  # 0x78424f1c
    b"reAmbleWillBeRemoved,ThePrePartThatIs": (1247982455, 3, 11),  # 0x4a62b377
    b"eAmbleWillBeRemoved,ThePrePartThatIs": (-521871202, 2, 10),  # 0xe0e4e09e
    b"AmbleWillBeRemoved,ThePrePartThatIs": (1656271935, 3, 3),  # 0x62b8b43f
    b"": (275646681, 1, 9),  # 0x106e08d9
}


@pytest.mark.parametrize("key", list(VECTORS), ids=[k.decode() or "empty" for k in VECTORS])
def test_murmur2_is_kafkas(key: bytes) -> None:
    signed, in_4, in_12 = VECTORS[key]
    assert murmur2(key) == signed & 0xFFFFFFFF
    assert kafka_partition(key, 4) == in_4
    assert kafka_partition(key, 12) == in_12


def test_an_items_partition_is_that_of_its_utf8_name() -> None:
    for key, (_, in_4, in_12) in VECTORS.items():
        name = key.decode("utf-8")
        got = (item_partition(name, 4, "murmur2"), item_partition(name, 12, "murmur2"))
        assert got == (in_4, in_12)


# CRC-32 (ISO-HDLC, as zlib and librdkafka's rd_crc32) published check values: the catalogue's
# "123456789" and the common pangram; librdkafka's consistent partitioners take it mod n.
CRC32_VECTORS = {
    b"123456789": 0xCBF43926,
    b"The quick brown fox jumps over the lazy dog": 0x414FA339,
    b"": 0,
}


def test_the_crc32_rule_is_librdkafkas_consistent_partitioner() -> None:
    for key, crc in CRC32_VECTORS.items():
        for n in (4, 12):
            assert crc32_partition(key, n) == crc % n
            assert rule_partition(key, n, "crc32") == crc % n
            assert item_partition(key.decode(), n, "crc32") == crc % n
        assert rule_partition(key, 12, "murmur2") == kafka_partition(key, 12)


def test_a_snapshot_not_co_partitioned_goes_where_its_key_hashes() -> None:
    for key, (_, in_4, in_12) in VECTORS.items():
        # co-partitioned: the source partition, whatever the key
        assert snapshot_partition(key, 3, 12, co_partitioned=True) == 3
        assert snapshot_partition(key, 3, 4, co_partitioned=False) == in_4
        assert snapshot_partition(key, 3, 12, co_partitioned=False) == in_12
