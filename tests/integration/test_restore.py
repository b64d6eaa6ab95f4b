"""Restore: a worker rebuilds a missing or stale partition store from the snapshot topic.

Real broker, real worker processes, nothing mocked. A partition whose store is missing (a
worker killed and its disk lost, or a fresh worker) or behind what the ops topic still keeps
is restored from each item's newest snapshot (one ``history`` row per item); the ops after
each snapshot's source offset are then replayed, and the ops a snapshot already holds are
skipped. The end state must equal the reference model's replay of every op produced
(bench/reference.py): value and ``changes`` exact (no op lost, none applied twice), and the
same hash.
"""

from __future__ import annotations

import random
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from helpers import (
    Produced,
    WorkerProcess,
    assignment,
    check_against_reference,
    counter_total,
    high_watermark,
    history_rows,
    last_snapshots_by_offset,
    only_items,
    random_op,
    reference_item,
    running_partitions,
    store_items,
    wait_caught_up,
    wait_until,
)

from dyno_stream.client import DynoClient, MaterializedView
from dyno_stream.config import Settings
from dyno_stream.core.events import make_op
from dyno_stream.core.flake import new_flake
from dyno_stream.kafka.topics import ensure_topics
from dyno_stream.store import DynoStore, Item
from dyno_stream.store.partition import snapshot_bytes
from dyno_stream.stream.worker import producer_config

# ---------------------------------------------------------------------------------------------
# three worker processes, one killed and its disk wiped
# ---------------------------------------------------------------------------------------------

N_OPS = 30_000
N_ITEMS = 600
PARTITIONS = 6
FIRST = 10_000  # produced and applied before the kill
KILL_AFTER = 4_000  # more ops produced, then SIGKILL while the workers are busy


def test_three_worker_processes_one_killed_and_wiped_others_restore(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    started = time.monotonic()
    s = make_settings(partitions=PARTITIONS)
    ensure_topics(s)
    workers = [WorkerProcess(s, f"w{i}", tmp_path) for i in range(3)]
    victim, survivors = workers[2], workers[:2]
    view = MaterializedView(s).start()
    produced = Produced()
    rnd = random.Random(20240607)
    try:
        # a stable group before any op: each worker holds two partitions, and none has ever
        # applied an op of a partition it does not hold now (so a takeover must restore)
        wait_until(
            lambda: (
                all(len(w.partitions()) == 2 for w in workers)
                and set().union(*(w.partitions() for w in workers)) == set(range(PARTITIONS))
            ),
            90,
            lambda: (
                f"the 3 workers did not share the 6 partitions: {assignment(workers)}"
                + "".join(w.tail() for w in workers if not w.alive())
            ),
        )
        grouped_at = time.monotonic() - started

        with DynoClient(s) as client:
            produced.send(client, (random_op(rnd, i, N_ITEMS) for i in range(FIRST)))
            client.flush(60)
            wait_caught_up(view, produced.reference(), 90, assignment(workers))
            first_at = time.monotonic() - started
            victim_parts = victim.partitions()
            assert len(victim_parts) == 2

            # go on producing on a thread; kill the victim while the workers are busy
            failure: list[BaseException] = []

            def produce_rest() -> None:
                try:
                    produced.send(client, (random_op(rnd, i, N_ITEMS) for i in range(FIRST, N_OPS)))
                except BaseException as exc:
                    failure.append(exc)

            producer = threading.Thread(target=produce_rest, daemon=True)
            producer.start()
            wait_until(
                lambda: len(produced.models) >= FIRST + KILL_AFTER or not producer.is_alive(),
                60,
                lambda: f"only {len(produced.models)} ops produced",
            )
            victim.proc.kill()  # SIGKILL: no revoke, no flush, no goodbye to the group
            assert victim.proc.wait(10) == -signal.SIGKILL
            shutil.rmtree(victim.data_dir)
            killed_at = time.monotonic() - started
            producer.join(120)
            assert not producer.is_alive(), "producing took over 2 minutes"
            assert not failure, failure
            client.flush(60)
        assert len(produced.models) == N_OPS

        ref = produced.reference()
        assert len(ref.changes) == N_ITEMS
        part_of = produced.partitions()

        # the survivors take over the victim's partitions (after its session times out)
        wait_until(
            lambda: set().union(*(w.partitions() for w in survivors)) == set(range(PARTITIONS)),
            60,
            lambda: f"the survivors did not take over every partition: {assignment(workers)}",
        )
        wait_caught_up(view, ref, 120, assignment(workers))
        caught_up_at = time.monotonic() - started
        owner = {p: w for w in survivors for p in w.partitions()}
        assert all(w.alive() for w in survivors), "".join(w.tail() for w in survivors)

        # nothing went to the dead-letter topic
        assert high_watermark(s, s.topics.dead_letter) == (0, 0), "ops were dead-lettered"

        # the survivors stop cleanly on SIGTERM
        for w in survivors:
            w.proc.send_signal(signal.SIGTERM)
        codes = [w.wait_exit() for w in survivors]
        assert codes == [0, 0], "".join(w.tail() for w in survivors)

        # the final snapshots: value, changes and hash as the reference model says
        assert view.wait_until_caught_up(30), "the view did not read the snapshot topic's end"
        final = dict(view)
        assert set(final) == set(ref.changes)
        check_against_reference(final, ref, "the view")
        assert all(final[n]["source"]["partition"] == part_of[n] for n in final)
        # what compaction would keep (the last snapshot in topic order) is the final one too
        check_against_reference(last_snapshots_by_offset(s), ref, "the last snapshots")

        # the stores of the partitions' last owners hold the same items
        for p in range(PARTITIONS):
            items = store_items(owner[p].store(p))
            mine = {n for n, q in part_of.items() if q == p and ref.value(n) is not None}
            assert set(items) == mine, f"partition {p} in {owner[p].name}'s store"
            check_against_reference(
                items, only_items(ref, mine), f"{owner[p].name}'s store of partition {p}"
            )

        # restore really happened: each of the victim's partitions was restored from
        # snapshots by its new owner, whose store has one history row per restored item
        for p in victim_parts:
            w = owner[p]
            n_restored = w.restored().get(p)
            assert n_restored, (
                f"{w.name} took over partition {p} but did not restore it from snapshots" + w.tail()
            )
            hist = history_rows(w.store(p))
            assert len(hist) == n_restored and set(hist.values()) == {1}, (
                f"partition {p}: {n_restored} items restored, history rows {len(hist)}"
            )
            assert set(hist) <= {n for n, q in part_of.items() if q == p}
        print(
            f"\nrestore: grouped at {grouped_at:.1f}s, first {FIRST} applied at {first_at:.1f}s, "
            f"killed at {killed_at:.1f}s, caught up at {caught_up_at:.1f}s, "
            f"total {time.monotonic() - started:.1f}s; victim partitions {sorted(victim_parts)}, "
            f"restored {[w.restored() for w in survivors]}"
        )
    finally:
        view.close()
        for w in workers:
            w.cleanup()


# ---------------------------------------------------------------------------------------------
# a fresh worker in the group: the same store, rebuilt from snapshots
# ---------------------------------------------------------------------------------------------


def _wait_assigned(rw: Any, settings: Settings, partitions: int, timeout: float = 60) -> None:
    want = sorted(f"{settings.topics.ops}/{p}" for p in range(partitions))
    wait_until(
        lambda: running_partitions(rw.worker) == want or not rw.thread.is_alive(),
        timeout,
        lambda: f"worker holds {rw.worker.health.partitions}, want {want}",
    )
    assert rw.thread.is_alive(), f"the worker died: {rw.error!r}"


def test_fresh_worker_restores_the_same_items_and_applies_new_ops_on_top(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    tmp_path: Path,
) -> None:
    s1 = make_settings(partitions=2)
    s2 = s1.model_copy(
        update={"worker": s1.worker.model_copy(update={"data_dir": tmp_path / "data-2"})}
    )
    rnd = random.Random(7)
    produced = Produced()
    w1 = start_worker(s1)
    with MaterializedView(s1) as view:
        _wait_assigned(w1, s1, 2)
        with DynoClient(s1) as client:
            produced.send(client, (random_op(rnd, i, 150, "fresh") for i in range(3000)))
        ref1 = produced.reference()
        wait_caught_up(view, ref1, 60)
        w1.stop()
        n_first = len(produced.models)

        first: dict[str, Item] = {}
        for p in range(2):
            with DynoStore(s1.worker.data_dir / s1.topics.ops / f"{p:04d}") as store:
                names = {n for n, q in produced.partitions().items() if q == p}
                first.update({n: store.get_item(n) for n in names})
        assert set(first) == set(ref1.changes)
        check_against_reference(first, ref1, "store 1")

        # the fresh worker restores both partitions before it reports them assigned
        w2 = start_worker(s2)
        _wait_assigned(w2, s2, 2)
        restored = {n: w2.worker.reads.item(n) for n in first}
        differ = [
            (n, first[n], r)
            for n, r in restored.items()
            if r is None
            or (r["value"], r["hash"], r["changes"])
            != (first[n].value, first[n].hash, first[n].changes)
        ]
        assert not differ, f"{len(differ)} restored items differ from store 1: {differ[:3]}"
        assert {r["count"] for r in restored.values() if r} == {1}, "one history row per item"
        assert counter_total(w2.worker.metrics.restored_items) == len(first)

        # new ops (on old and new items) chain on from the restored history rows
        with DynoClient(s1) as client:
            produced.send(client, (random_op(rnd, i, 200, "fresh") for i in range(1000)))
        ref = produced.reference()
        wait_caught_up(view, ref, 60)
        w2.stop()
        assert view.wait_until_caught_up(30)
        final = dict(view)
    assert high_watermark(s1, s1.topics.dead_letter) == (0, 0), "ops were dead-lettered"

    check_against_reference(final, ref, "the view")
    # the fresh worker applied the new ops only: every old one was in a snapshot
    assert counter_total(w2.worker.metrics.ops_applied) == len(produced.models) - n_first
    new_ops = Counter(m.item for m in produced.models[n_first:])
    part_of = produced.partitions()
    for p in range(2):
        path = s2.worker.data_dir / s2.topics.ops / f"{p:04d}"
        items = store_items(path)
        mine = {n for n, q in part_of.items() if q == p and ref.value(n) is not None}
        assert set(items) == mine
        check_against_reference(items, only_items(ref, mine), f"store 2, partition {p}")
        hist = history_rows(path)
        assert set(hist) == {n for n in first if part_of[n] == p}
        for n, item in items.items():
            assert item.count == (1 if n in first else 0) + new_ops[n], n


# ---------------------------------------------------------------------------------------------
# a store behind retention: set aside, restored, caught up
# ---------------------------------------------------------------------------------------------


def test_store_behind_the_ops_topic_retention_is_set_aside_and_restored(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    tmp_path: Path,
) -> None:
    s1 = make_settings(partitions=1)
    s2 = s1.model_copy(
        update={"worker": s1.worker.model_copy(update={"data_dir": tmp_path / "data-2"})}
    )
    rnd = random.Random(11)
    produced = Produced()
    ensure_topics(s1)
    with MaterializedView(s1) as view:
        # worker 1 applies the first ops, then stops with its store at offset 500
        w1 = start_worker(s1)
        _wait_assigned(w1, s1, 1)
        with DynoClient(s1) as client:
            produced.send(client, (random_op(rnd, i, 40, "ret") for i in range(500)))
        wait_caught_up(view, produced.reference(), 60)
        w1.stop()
        # another worker (another disk) applies more while worker 1 is away
        w2 = start_worker(s2)
        _wait_assigned(w2, s2, 1)
        with DynoClient(s1) as client:
            produced.send(client, (random_op(rnd, i, 60, "ret") for i in range(500, 1000)))
        ref_before = produced.reference()
        wait_caught_up(view, ref_before, 60)
        w2.stop()

        # retention drops every op so far: worker 1's offset is no longer in the topic
        admin = AdminClient(s1.kafka.librdkafka())
        tp = TopicPartition(s1.topics.ops, 0, 1000)
        for fut in admin.delete_records([tp]).values():
            fut.result(30)
        assert high_watermark(s1, s1.topics.ops) == (1000, 1000)

        w1b = start_worker(s1)
        _wait_assigned(w1b, s1, 1)
        store_dir = s1.worker.data_dir / s1.topics.ops
        # the store behind was set aside, the partition restored, and then the copy deleted
        assert [p.name for p in store_dir.iterdir()] == ["0000"], list(store_dir.iterdir())
        for name, changes in ref_before.changes.items():
            r = w1b.worker.reads.item(name)
            assert r is not None and (r["value"], r["changes"], r["count"]) == (
                ref_before.value(name),
                changes,
                1,
            ), (name, r)

        with DynoClient(s1) as client:
            produced.send(client, (random_op(rnd, i, 80, "ret") for i in range(1000, 1300)))
        ref = produced.reference()
        wait_caught_up(view, ref, 60)
        w1b.stop()
        assert view.wait_until_caught_up(30)
        final = dict(view)
    assert high_watermark(s1, s1.topics.dead_letter) == (0, 0), "ops were dead-lettered"

    check_against_reference(final, ref, "the view")
    assert counter_total(w1b.worker.metrics.ops_applied) == 300
    items = store_items(store_dir / "0000")
    check_against_reference(
        items, only_items(ref, {n for n in ref.changes if ref.value(n)}), "the new store"
    )


# ---------------------------------------------------------------------------------------------
# a bad message in the snapshot topic
# ---------------------------------------------------------------------------------------------


def test_restore_reads_past_a_message_that_is_not_a_snapshot(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    tmp_path: Path,
) -> None:
    """The snapshot topic is open to any producer: one bad message must not stop restores."""
    s1 = make_settings(partitions=1)
    s2 = s1.model_copy(
        update={"worker": s1.worker.model_copy(update={"data_dir": tmp_path / "data-2"})}
    )
    rnd = random.Random(3)
    produced = Produced()
    ensure_topics(s1)
    with MaterializedView(s1) as view:
        w1 = start_worker(s1)
        _wait_assigned(w1, s1, 1)
        with DynoClient(s1) as client:
            produced.send(client, (random_op(rnd, i, 20, "bad") for i in range(200)))
        ref = produced.reference()
        wait_caught_up(view, ref, 60)
        w1.stop()
    producer = Producer(s1.kafka.librdkafka())
    producer.produce(s1.topics.snapshots, b"not json", b"bad-garbage")
    producer.produce(s1.topics.snapshots, None, b"bad-tombstone")
    assert producer.flush(30) == 0

    w2 = start_worker(s2)
    _wait_assigned(w2, s2, 1, timeout=30)
    restored = {n: w2.worker.reads.item(n) for n in ref.changes}
    check_against_reference(
        {n: r for n, r in restored.items() if r is not None}, ref, "the fresh worker"
    )
    w2.stop()
    assert high_watermark(s1, s1.topics.dead_letter) == (0, 0), "ops were dead-lettered"


# ---------------------------------------------------------------------------------------------
# a crash that published only part of a batch's snapshots
# ---------------------------------------------------------------------------------------------


def test_restore_after_a_crash_that_published_part_of_a_batch(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    tmp_path: Path,
) -> None:
    """Item X's newest snapshot is behind its ops while item Y's is ahead of X's op.

    As left by a worker killed after applying a batch and publishing only Y's snapshot: the
    restore must resume after the oldest snapshot (X's op is replayed) and skip what Y's
    snapshot already holds (Y's op is not applied twice).
    """
    s1 = make_settings(partitions=1)
    s2 = s1.model_copy(
        update={"worker": s1.worker.model_copy(update={"data_dir": tmp_path / "data-2"})}
    )
    rnd = random.Random(5)
    produced = Produced()
    ensure_topics(s1)
    with MaterializedView(s1) as view:
        w1 = start_worker(s1)
        _wait_assigned(w1, s1, 1)
        with DynoClient(s1) as client:
            produced.send(client, (random_op(rnd, i, 10, "part") for i in range(100)))
        wait_caught_up(view, produced.reference(), 60)
        w1.stop()

        # the batch: one op of X, then one of Y; of its snapshots only Y's was published
        with DynoClient(s1) as client:
            produced.send(
                client,
                [
                    make_op("putAttrs", "part-0001", {"late": "x"}, new_flake()),
                    make_op("incAttrBy", "part-0002", {"field": "n", "by": 100}, new_flake()),
                ],
            )
        ref_y = produced.reference()
        y_offset = produced.futures[-1].result(30).offset
        assert produced.futures[-2].result(30).offset == y_offset - 1
        producer = Producer(producer_config(s1))
        producer.produce(
            s1.topics.snapshots,
            snapshot_bytes(reference_item(ref_y, "part-0002"), s1.topics.ops, 0, y_offset),
            b"part-0002",
        )
        assert producer.flush(30) == 0
        ref = produced.reference()
        assert view.wait_until_caught_up(30)
        x_snap, y_snap = view.get("part-0001"), view.get("part-0002")
        assert x_snap is not None and y_snap is not None
        assert y_snap["changes"] == ref.changes["part-0002"]  # Y's snapshot has Y's op
        assert x_snap["changes"] == ref.changes["part-0001"] - 1  # X's is behind X's op
        assert x_snap["source"]["offset"] < y_offset - 1

        w2 = start_worker(s2)
        _wait_assigned(w2, s2, 1)
        wait_caught_up(view, ref, 60)
        w2.stop()
        assert view.wait_until_caught_up(30)
        final = dict(view)
    check_against_reference(final, ref, "the view")
    assert counter_total(w2.worker.metrics.ops_applied) == 1  # X's op, and only it
    assert high_watermark(s1, s1.topics.dead_letter) == (0, 0), "ops were dead-lettered"
    check_against_reference(
        store_items(s2.worker.data_dir / s2.topics.ops / "0000"),
        only_items(ref, {n for n in ref.changes if ref.value(n)}),
        "the restored store",
    )
