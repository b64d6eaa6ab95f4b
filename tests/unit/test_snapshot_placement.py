"""Where a snapshot goes, and what a snapshot topic that is not co-partitioned means.

On the broker: ``tests/integration/test_snapshot_partitioning.py``.
"""

from __future__ import annotations

from dyno_stream.kafka.partitioning import snapshot_partition
from dyno_stream.kafka.topics import SnapshotPartitioning


def test_a_co_partitioned_snapshot_goes_to_its_source_partition_whatever_its_key() -> None:
    keys = [f"item-{i}".encode() for i in range(50)]
    for key in keys:
        for source in range(4):
            assert snapshot_partition(key, source, 4, co_partitioned=True) == source
    # otherwise Kafka's own placement by key, over the snapshot topic's count: these keys'
    # murmur2 hashes are published by Kafka and librdkafka (tests/unit/test_kafka_placement.py)
    published = {b"21": 0, b"4": 1, b"foobar": 2, b"abc": 3}
    for key, partition in published.items():
        assert snapshot_partition(key, 0, 4, co_partitioned=False) == partition


def test_the_partitioning_check_says_what_a_mismatch_means() -> None:
    same = SnapshotPartitioning("dyno.ops", "dyno.snapshots", 4, 4)
    assert same.co_partitioned and same.problem is None
    other = SnapshotPartitioning("dyno.ops", "dyno.snapshots", 4, 16)
    assert not other.co_partitioned
    assert other.problem is not None
    assert other.problem.startswith(
        "snapshot topic dyno.snapshots has 16 partitions and ops topic dyno.ops 4: they are "
        "not co-partitioned"
    )
    assert "a new topic of 4 partitions" in other.problem
    # a topic that does not exist yet is created co-partitioned: nothing to report
    missing = SnapshotPartitioning("dyno.ops", "dyno.snapshots", 4, None)
    assert not missing.co_partitioned and missing.problem is None
