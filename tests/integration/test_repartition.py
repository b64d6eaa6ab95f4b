"""Growing the ops topic in place, and moving to more partitions (``dyno-stream repartition``).

Kafka places a key at ``hash(key) % partitions``: after partitions are added, an item's later
ops land on another partition, whose store knows nothing of its history. These tests hold that
the worker and the client refuse that, loudly, and that the repartition tool moves every item
to new topics without losing or doubling an op.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions
from conftest import RunningWorker
from helpers import (
    Produced,
    Reference,
    check_against_reference,
    cli_env,
    published,
    random_op,
    read_topic,
    run_cli,
    running_partitions,
    wait_caught_up,
    wait_until,
)

from dyno_stream.client import DynoClient, MaterializedView
from dyno_stream.config import Settings
from dyno_stream.core.errors import PartitionCountError, PublishError
from dyno_stream.core.events import OpModel
from dyno_stream.jobs.repartition import new_topic_names
from dyno_stream.kafka.partitioning import kafka_partition
from dyno_stream.kafka.topics import ensure_topics
from dyno_stream.store.partition import PartitionStore


def _ops(n: int, n_items: int, seed: int) -> list[OpModel]:
    rnd = random.Random(seed)
    return [random_op(rnd, i, n_items) for i in range(n)]


def _grow(settings: Settings, topic: str, partitions: int) -> None:
    admin = AdminClient(settings.kafka.librdkafka())
    for future in admin.create_partitions([NewPartitions(topic, partitions)]).values():
        future.result(30)
    wait_until(
        lambda: len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == partitions,
        30,
        lambda: f"{topic} to show {partitions} partitions",
    )


def test_kafka_partition_is_where_librdkafka_puts_a_key(
    make_settings: Callable[..., Settings],
) -> None:
    s = make_settings(partitions=7)
    ensure_topics(s)
    producer = Producer({**s.kafka.librdkafka(), "partitioner": "murmur2_random"})
    got: dict[str, int] = {}
    keys = [f"item-{i}" for i in range(300)] + ["", "a", "ab", "abc", "ünïcode-é", "x" * 1000]
    for key in keys:
        producer.produce(
            s.topics.ops,
            b"{}",
            key.encode(),
            on_delivery=lambda _e, m, k=key: got.__setitem__(k, m.partition()),
        )
    assert producer.flush(30) == 0
    wrong = {
        k: (got[k], kafka_partition(k.encode(), 7))
        for k in keys
        if got[k] != kafka_partition(k.encode(), 7)
    }
    assert not wrong, wrong


def test_growing_the_ops_topic_in_place_stops_the_worker_and_no_item_diverges(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], RunningWorker],
) -> None:
    s = make_settings(partitions=4)
    t = s.topics
    first, second = _ops(2_000, 400, seed=20), _ops(2_000, 400, seed=21)
    running = start_worker(s)
    produced = Produced()
    with DynoClient(s) as client:
        produced.send(client, first)
        client.flush()
    with MaterializedView(s) as view:
        wait_caught_up(view, produced.reference(), 60, "(the first half)")
    where_first = produced.partitions()

    _grow(s, t.ops, 8)
    # the second half from a plain producer, as any Kafka client would send it
    producer = Producer({**s.kafka.librdkafka(), "partitioner": "murmur2_random"})
    for m in second:
        producer.produce(t.ops, m.model_dump_json().encode(), m.item.encode())
        producer.poll(0)
    assert producer.flush(30) == 0
    produced.models.extend(second)

    expected = (
        f"ops topic {t.ops} has 8 partitions, was 4: items would split across stores; "
        "see 'dyno-stream repartition'"
    )
    wait_until(lambda: not running.thread.is_alive(), 60, lambda: "the worker to stop")
    assert isinstance(running.error, PartitionCountError), running.error
    assert str(running.error) == expected
    ok, health = running.worker.health.snapshot()
    assert not ok and health["status"] == "refused" and health["reason"] == expected
    assert running.worker.metrics.ops_partitions._value.get() == 8
    assert running.worker.metrics.ops_partitions_recorded._value.get() == 4

    # a client refuses to send, with the same message
    with DynoClient(s) as client, pytest.raises(PartitionCountError) as refused:
        client.put_attrs("item-0001", {"x": 1})
    assert str(refused.value) == expected

    # a worker started again (a supervisor's restart) refuses at once too
    again = start_worker(s)
    wait_until(lambda: not again.thread.is_alive(), 60, lambda: "the restarted worker to stop")
    assert str(again.error) == expected

    # no store of a new partition, no snapshot from one, and every snapshot ever published
    # is a prefix of its item's ops: none restarts its changes
    stores = sorted(p.name for p in (s.worker.data_dir / t.ops).iterdir())
    assert stores == ["0000", "0001", "0002", "0003"], stores
    records = read_topic(s, t.snapshots)
    history = published(records, produced.models)
    assert not history.wrong, history.wrong[:3]
    assert not history.backwards and history.ops_applied_twice == 0
    moved = {
        m.item
        for m in second
        if m.item in where_first and kafka_partition(m.item.encode(), 8) != where_first[m.item]
    }
    assert moved, "the test needs items whose key now hashes to a new partition"
    ref_first = Reference()
    for m in first:
        ref_first.add(m)
    for name in moved:  # their later ops wait, unapplied, in the new partitions
        assert history.last[name]["changes"] == ref_first.changes[name], name

    # nothing committed past what the stores hold, nothing at all for the new partitions
    consumer = Consumer({**s.kafka.librdkafka(), "group.id": s.worker.group_id})
    try:
        committed = consumer.committed([TopicPartition(t.ops, p) for p in range(8)], timeout=10)
    finally:
        consumer.close()
    for tp in committed:
        if tp.partition >= 4:
            assert tp.offset < 0, tp  # no offset committed
        else:
            ps = PartitionStore.open(s.worker.data_dir, t.ops, tp.partition, sync=False)
            try:
                assert ps.next_offset is not None and tp.offset <= ps.next_offset, tp
            finally:
                ps.close()

    # a worker on a new machine (no store at all) refuses too: the snapshot topic's count
    fresh = start_worker(
        s.model_copy(
            update={"worker": s.worker.model_copy(update={"data_dir": s.worker.data_dir / "new"})}
        )
    )
    wait_until(lambda: not fresh.thread.is_alive(), 60, lambda: "the fresh worker to stop")
    assert str(fresh.error) == expected

    # the way out: move to new topics; the ops waiting in the new partitions are forwarded
    done = run_cli(cli_env(s), "repartition", "--partitions", "8", "--drain-timeout", "3")
    assert done.returncode == 0, done.stderr
    moved_s = _moved_settings(s, 8)
    start_worker(moved_s)
    ref = produced.reference()
    with MaterializedView(moved_s) as view:
        wait_caught_up(view, ref, 120, "(after the move)")
    after = published(read_topic(moved_s, moved_s.topics.snapshots), produced.models)
    after.check()
    check_against_reference(after.last, ref, moved_s.topics.snapshots)


def _moved_settings(s: Settings, partitions: int) -> Settings:
    """The settings ``dyno-stream repartition`` prints: the new topics, the same rest."""
    new_ops, new_snapshots = new_topic_names(s, partitions)
    topics = s.topics.model_copy(
        update={"ops": new_ops, "snapshots": new_snapshots, "partitions": partitions}
    )
    return s.model_copy(update={"topics": topics})


@pytest.mark.parametrize(
    ("partitions", "kill_after", "old_running"),
    [
        (8, None, True),
        (8, None, False),
        (8, "copy:2000", False),
        (8, "forward:6000", False),
        (2, None, False),
    ],
    ids=["grow-drained", "grow-forwarded", "killed-copying", "killed-forwarding", "shrink"],
)
def test_repartition_moves_every_item_with_ops_before_during_and_after(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], RunningWorker],
    partitions: int,
    kill_after: str | None,
    old_running: bool,
) -> None:
    """Ops applied before the move; then more sent to the old topic, which the old worker
    still running applies (the tool waits for it) or which the tool forwards (the old worker
    stopped); then ops sent to the new topics after the switch."""
    n_items = 5_000
    s = make_settings(partitions=4)
    produced = Produced()
    # applied by the old deployment
    old = start_worker(s)
    with DynoClient(s) as client:
        produced.send(client, _ops(20_000, n_items, seed=1))
        client.flush()
    with MaterializedView(s) as view:
        wait_caught_up(view, produced.reference(), 120, "(before the move)")
    if not old_running:
        old.stop()
    with DynoClient(s) as client:
        produced.send(client, _ops(8_000, n_items, seed=2))
        client.flush()
    applied = produced.models if old_running else produced.models[:20_000]
    with_snapshot = {m.item for m in applied}

    env = cli_env(s)
    moved = _moved_settings(s, partitions)
    dry = run_cli(env, "repartition", "--partitions", str(partitions), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"{len(with_snapshot):,} items" in dry.stdout, dry.stdout
    assert moved.topics.ops not in _topics(s), "a dry run created a topic"

    drain = "120" if old_running else "3"
    args = ["repartition", "--partitions", str(partitions), "--drain-timeout", drain]
    if kill_after is not None:
        killed = run_cli({**env, "DYNO_REPARTITION_KILL_AFTER": kill_after}, *args)
        assert killed.returncode == -9, (killed.returncode, killed.stdout, killed.stderr)
    done = run_cli(env, *args)
    assert done.returncode == 0, done.stderr
    runs = "over 2 runs" if kill_after else "ops forwarded in"
    assert f"{len(with_snapshot):,} items moved" in done.stdout and runs in done.stdout, done.stdout
    assert f"DYNO_TOPICS__OPS={moved.topics.ops}" in done.stdout
    if old_running:  # the old worker applied everything: nothing left to forward
        assert " 0 ops forwarded" in done.stdout, done.stdout
        old.stop()
    else:
        assert " 8,000 ops forwarded" in done.stdout, done.stdout

    # the old topic is fenced: an op sent there fails, reported to its sender
    with DynoClient(s) as client:
        late = client.put_attrs("item-0001", {"late": True})
        with pytest.raises(PublishError, match="too large"):
            late.result(30)

    # the new deployment restores from the new snapshot topic; ops go on after the switch
    start_worker(moved)
    with DynoClient(moved) as client:
        produced.send(client, _ops(4_000, n_items, seed=3))
        client.flush()
    ref = produced.reference()
    with MaterializedView(moved) as view:
        wait_caught_up(view, ref, 180, "(after the move)")
    records = read_topic(moved, moved.topics.snapshots)
    history = published(records, produced.models)
    history.check()  # every snapshot a prefix of its item's ops: none lost, none twice
    check_against_reference(history.last, ref, moved.topics.snapshots)
    misplaced = [
        (r.key, r.partition)
        for r in records
        if r.key is not None and r.partition != kafka_partition(r.key, partitions)
    ]
    assert not misplaced, misplaced[:5]


def _topics(s: Settings) -> set[str]:
    return set(AdminClient(s.kafka.librdkafka()).list_topics(timeout=10).topics)


def test_repartition_keeps_deleted_items_deleted(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], RunningWorker],
) -> None:
    """A deleted item's newest message in the old snapshot topic is its tombstone, and the
    snapshot before it (with its values) is still there until Kafka compacts the topic; the
    move copies the tombstone, not that snapshot, so the new workers never restore the item
    (a copied snapshot would bring deleted and erased values back)."""
    s = make_settings(partitions=4)
    names = [f"gone-{i:02d}" if i % 2 else f"kept-{i:02d}" for i in range(20)]
    old = start_worker(s)
    with DynoClient(s) as client:
        for name in names:
            client.put_attrs(name, {"secret": f"value of {name}"})
        client.flush()
        with MaterializedView(s) as view:  # each item's snapshot published before its tombstone
            wait_until(
                lambda: view.wait_until_caught_up(5) and len(view) == len(names),
                120,
                lambda: f"view holds {sorted(dict(view))}",
            )
        for name in names:
            if name.startswith("gone"):
                client.del_item(name)
        client.flush()
    with MaterializedView(s) as view:
        wait_until(
            lambda: (
                view.wait_until_caught_up(5)
                and sorted(dict(view)) == sorted(n for n in names if n.startswith("kept"))
            ),
            120,
            lambda: f"view holds {sorted(dict(view))}",
        )
    old.stop()
    done = run_cli(cli_env(s), "repartition", "--partitions", "8", "--drain-timeout", "3")
    assert done.returncode == 0, done.stderr
    moved = _moved_settings(s, 8)
    copied = read_topic(moved, moved.topics.snapshots)
    by_key = {r.key.decode(): r.value for r in copied if r.key is not None}
    assert sorted(by_key) == sorted(names), sorted(by_key)
    for name, value in by_key.items():
        assert (value is None) == name.startswith("gone"), (name, value)
    new = start_worker(moved)
    wait_until(
        lambda: len(running_partitions(new.worker)) == 8,
        120,
        lambda: f"running {running_partitions(new.worker)}",
    )
    for name in names:
        item = new.worker.reads.item(name)
        assert (item is None) == name.startswith("gone"), (name, item)
