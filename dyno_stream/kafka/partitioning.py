"""Where Kafka puts a keyed message: Java's default partitioner, which librdkafka calls
``murmur2_random`` and every dyno-stream producer uses, so that an item lands on the same
partition whoever sends it. ``dyno-stream repartition`` needs it to place each item's
snapshot on the partition its ops will reach in the new topic; ``snapshot_partition`` says
where any producer of snapshots puts one."""

from __future__ import annotations

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (Java's ``Utils.murmur2``), as an unsigned 32-bit value."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    end = length & ~3
    for i in range(0, end, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    rest = length & 3
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Java's default partitioner (and librdkafka's ``murmur2_random``) gives a
    keyed message: ``toPositive(murmur2(key)) % partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def snapshot_partition(
    key: bytes, source_partition: int, snapshot_partitions: int, co_partitioned: bool
) -> int:
    """The partition a snapshot is produced to: the partition of the ops that made it when
    the snapshot topic is co-partitioned with the ops topic (``topics.snapshot_partitioning``),
    so a restore of ops partition p reads snapshot partition p alone, whatever partitioner
    placed the ops; otherwise where its key hashes, as Kafka would place it."""
    if co_partitioned:
        return source_partition
    return kafka_partition(key, snapshot_partitions)
