"""The co-partitioned snapshot topic, on the real broker.

The snapshot topic gets the ops topic's partition count, a restore of ops partition p reads
snapshot partition p alone (and stops promptly when cancelled), a pair of topics with other
counts is reported, and ``dyno-stream migrate-snapshots`` moves an old topic's newest
snapshots into a co-partitioned one, each in its source partition.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from helpers import cli_env, read_topic, run_cli, wait_until

from dyno_stream.config import Settings, producer_config
from dyno_stream.core.errors import KafkaAdminError
from dyno_stream.core.events import Snapshot
from dyno_stream.kafka import reading
from dyno_stream.kafka.partitioning import kafka_partition
from dyno_stream.kafka.reading import (
    read_partition_snapshots,
    read_partition_snapshots_from_all,
    read_restore_snapshots,
)
from dyno_stream.kafka.topics import ensure_topics, snapshot_partitioning

FLAKE = "01a22ca30be5-0000-3dfd-02fc00000001"
HASH = "cdc523b696455d8a17248d6fce5b8cdc"


def snapshot(s: Settings, item: str, source_partition: int, changes: int, count: int = 0) -> bytes:
    return orjson.dumps(
        {
            "item": item,
            "value": {"n": changes},
            "timestamp": FLAKE,
            "changes": changes,
            "hash": HASH,
            "count": count or changes,
            "source": {"topic": s.topics.ops, "partition": source_partition, "offset": changes},
        }
    )


def create(s: Settings, topic: str, partitions: int, **config: str) -> None:
    admin = AdminClient(s.kafka.librdkafka())
    new = NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config)
    admin.create_topics([new])[topic].result(30)

    def ready() -> bool:
        meta = admin.list_topics(timeout=10).topics.get(topic)
        return meta is not None and len(meta.partitions) == partitions

    wait_until(ready, 30, lambda: f"{topic} not ready")


def send(s: Settings, topic: str, messages: list[tuple[int, bytes, bytes | None]]) -> None:
    """(partition, key, value) in this order; every one acknowledged."""
    producer = Producer(producer_config(s))
    errors: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    for partition, key, value in messages:
        while True:
            try:
                producer.produce(
                    topic,
                    value,
                    key,
                    partition=partition,
                    on_delivery=delivered,
                )
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(30) == 0
    assert not errors, errors


def newest_changes(snaps: dict[str, Snapshot] | None) -> dict[str, int]:
    assert snaps is not None
    return {name: snap.changes for name, snap in snaps.items()}


def test_ensure_topics_gives_the_snapshot_topic_the_ops_topics_count(
    make_settings: Callable[..., Settings],
) -> None:
    s = make_settings(partitions=1)
    create(s, s.topics.ops, 3)  # made by hand, before any worker
    ensure_topics(s)
    admin = AdminClient(s.kafka.librdkafka())
    assert len(admin.list_topics(timeout=10).topics[s.topics.snapshots].partitions) == 3
    placing = snapshot_partitioning(s, admin)
    assert placing.co_partitioned and placing.problem is None


def test_a_snapshot_topic_with_another_count_is_reported(
    make_settings: Callable[..., Settings],
) -> None:
    s = make_settings(partitions=2)
    create(s, s.topics.ops, 2)
    create(s, s.topics.snapshots, 5, **{"cleanup.policy": "compact"})
    placing = snapshot_partitioning(s, AdminClient(s.kafka.librdkafka()))
    assert not placing.co_partitioned
    assert (placing.ops_partitions, placing.snapshot_partitions) == (2, 5)
    problem = placing.problem or ""
    assert f"snapshot topic {s.topics.snapshots} has 5 partitions" in problem
    assert "whole snapshot topic" in problem and "key hash" in problem
    assert "dyno-stream migrate-snapshots --to" in problem


def test_a_restore_reads_only_its_own_snapshot_partition(
    make_settings: Callable[..., Settings],
) -> None:
    s = make_settings(partitions=4)
    ensure_topics(s)
    mine = [
        (2, b"a", snapshot(s, "a", 2, 1)),
        (2, b"b", snapshot(s, "b", 2, 4)),
        (2, b"a", snapshot(s, "a", 2, 3)),
        (2, b"b", snapshot(s, "b", 2, 2)),  # a stale duplicate after the newest: loses
        (2, b"c", snapshot(s, "c", 2, 1)),
        (2, b"c", None),  # deleted
    ]
    others = [(p, f"o{p}".encode(), snapshot(s, f"o{p}", p, 1)) for p in (0, 1, 3)]
    # a decoy: a newer snapshot of "a", misplaced in partition 1, that wins if it is read
    decoy = [(1, b"a", snapshot(s, "a", 2, 99))]
    send(s, s.topics.snapshots, others + decoy + mine)
    progress: list[int] = []
    got = read_partition_snapshots(s, 2, on_progress=progress.append)
    assert newest_changes(got) == {"a": 3, "b": 4}
    assert progress and progress[-1] == len(mine)  # not one message of another partition
    assert newest_changes(read_restore_snapshots(s, 2, True)) == {"a": 3, "b": 4}
    # the fallback for a topic that is not co-partitioned reads everything: the decoy wins
    assert newest_changes(read_partition_snapshots_from_all(s, 2)) == {"a": 99, "b": 4}
    assert newest_changes(read_restore_snapshots(s, 2, False)) == {"a": 99, "b": 4}
    assert newest_changes(read_partition_snapshots_from_all(s, 3)) == {"o3": 1}


def test_a_cancelled_restore_read_stops_promptly(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = make_settings(partitions=2)
    ensure_topics(s)
    n = 20_000
    send(
        s, s.topics.snapshots, [(1, f"i{i}".encode(), snapshot(s, f"i{i}", 1, 1)) for i in range(n)]
    )
    # cancelled once the first messages are in: the read stops before the partition's end
    stop = threading.Event()
    progress: list[int] = []

    def first_fetch(read: int) -> None:
        progress.append(read)
        if read:
            stop.set()

    assert read_partition_snapshots(s, 1, cancelled=stop.is_set, on_progress=first_fetch) is None
    assert progress and progress[-1] < n
    # cancelled while the broker has no answer (no such partition): seen within 0.3 s
    stop.clear()
    fired: list[float] = []

    def fire() -> None:
        fired.append(time.monotonic())
        stop.set()

    timer = threading.Timer(0.5, fire)
    timer.start()
    got = read_partition_snapshots(s, 7, cancelled=stop.is_set)
    returned = time.monotonic()
    timer.join()
    assert got is None and fired
    assert returned - fired[0] < 0.3
    # not cancelled, a partition that does not exist is an error once its grace is over
    monkeypatch.setattr(reading, "_UNKNOWN_GRACE_S", 1.0)
    with pytest.raises(KafkaAdminError, match="partition"):
        read_partition_snapshots(s, 7)


def test_migrate_snapshots_copies_each_newest_snapshot_to_its_source_partition(
    make_settings: Callable[..., Settings],
) -> None:
    s = make_settings(partitions=3)
    create(s, s.topics.ops, 3)
    create(s, s.topics.snapshots, 1, **{"cleanup.policy": "compact"})  # an old, 1-partition one
    items = [f"item-{i}" for i in range(30)]
    # each item's ops partition is i % 3, whatever its key hashes to
    source = {name: i % 3 for i, name in enumerate(items)}
    assert any(kafka_partition(n.encode(), 3) != p for n, p in source.items())
    messages: list[tuple[int, bytes, bytes | None]] = []
    for name in items:
        messages.append((0, name.encode(), snapshot(s, name, source[name], 1)))
        messages.append((0, name.encode(), snapshot(s, name, source[name], 3)))
    messages.append((0, b"item-0", snapshot(s, "item-0", 0, 2)))  # stale: not copied
    messages.append((0, b"item-1", None))  # deleted: not copied
    messages.append((0, b"junk", b"not a snapshot"))
    send(s, s.topics.snapshots, messages)
    new_topic = f"{s.topics.snapshots}.copart"
    checked = run_cli(cli_env(s), "migrate-snapshots", "--check")
    assert checked.returncode == 3, checked.stderr
    assert "has 1 partitions, the ops topic 3: not co-partitioned" in checked.stdout
    done = run_cli(cli_env(s), "migrate-snapshots", "--to", new_topic)
    assert done.returncode == 0, done.stderr
    assert f"copied 29 items' newest snapshots from {s.topics.snapshots}" in done.stdout
    assert f"DYNO_TOPICS__SNAPSHOTS={new_topic}" in done.stdout
    assert "1 messages were not snapshots" in done.stdout
    copied = read_topic(s, new_topic)
    assert sorted(r.key or b"" for r in copied) == sorted(
        n.encode() for n in items if n != "item-1"
    )
    for rec in copied:
        snap = orjson.loads(rec.value or b"null")
        assert snap["changes"] == 3, snap
        assert rec.partition == source[snap["item"]], (rec, snap)
        assert rec.value == snapshot(s, snap["item"], source[snap["item"]], 3)  # bytes unchanged
    moved = s.model_copy(update={"topics": s.topics.model_copy(update={"snapshots": new_topic})})
    assert snapshot_partitioning(moved, AdminClient(s.kafka.librdkafka())).co_partitioned
    assert newest_changes(read_partition_snapshots(moved, 1)) == {
        n: 3 for n in items if source[n] == 1 and n != "item-1"
    }
    checked = run_cli(cli_env(moved), "migrate-snapshots", "--check")
    assert checked.returncode == 0, checked.stderr
    assert "29 items, each newest snapshot in its ops partition of 3" in checked.stdout


def test_the_check_finds_snapshots_outside_their_ops_partition(
    make_settings: Callable[..., Settings],
) -> None:
    """Same counts, but placed by key hash while the ops were placed otherwise (a producer
    of ops without Java's partitioner): a partition-only restore would miss them."""
    s = make_settings(partitions=2)
    ensure_topics(s)
    send(
        s,
        s.topics.snapshots,
        [
            (0, b"home", snapshot(s, "home", 0, 1)),
            (1, b"away", snapshot(s, "away", 0, 1)),  # made by ops partition 0
            (0, b"away", snapshot(s, "away", 0, 1)),  # an older copy where it belongs
            (1, b"away", snapshot(s, "away", 0, 2)),  # the newest is misplaced again
        ],
    )
    checked = run_cli(cli_env(s), "migrate-snapshots", "--check")
    assert checked.returncode == 3, checked.stderr
    assert "1 of 2 items' newest snapshots" in checked.stdout and "away" in checked.stdout


def test_migrate_snapshots_refuses_while_the_workers_run(
    make_settings: Callable[..., Settings],
) -> None:
    s = make_settings(partitions=1)
    ensure_topics(s)
    member = Consumer(
        {
            **s.kafka.librdkafka(),
            "group.id": s.worker.group_id,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    assigned: list[Any] = []
    member.subscribe([s.topics.ops], on_assign=lambda _c, parts: assigned.extend(parts))
    try:
        wait_until(lambda: member.poll(0.1) is None and bool(assigned), 30, lambda: "no assignment")
        refused = run_cli(cli_env(s), "migrate-snapshots", "--to", f"{s.topics.snapshots}.new")
        assert refused.returncode == 1
        assert "stop the workers first" in refused.stderr
    finally:
        member.close()
