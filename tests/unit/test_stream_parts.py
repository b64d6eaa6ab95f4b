"""The worker's parts (``dyno_stream.stream``) with fake Kafka clients (``tests/fakes.py``)
and real LevelDB: the commit order, republishing, and partitions restored beside the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Message, TopicPartition
from fakes import FakeConsumer, FakeProducer
from helpers import op_bytes, wait_until

from dyno_stream.config import Settings, load_settings
from dyno_stream.core.errors import PublishError
from dyno_stream.core.events import Snapshot, Source
from dyno_stream.core.flake import new_flake
from dyno_stream.kafka.partitioning import PlacementRule
from dyno_stream.store.partition import PartitionStore
from dyno_stream.stream.assignment import Assignment
from dyno_stream.stream.checkpoint import MAX_IN_FLIGHT, MAX_IN_FLIGHT_BATCHES, Checkpoint
from dyno_stream.stream.http import Health
from dyno_stream.stream.metrics import WorkerMetrics
from dyno_stream.stream.processing import BatchProcessor
from dyno_stream.stream.publisher import Publisher
from dyno_stream.stream.restorer import RestoreJob, Restorer

TOPIC = "ops"
Snapshots = Callable[[int, Callable[[], bool], Callable[[int], None]], dict[str, Snapshot] | None]


def _settings(tmp_path: Path) -> Settings:
    return load_settings(
        topics={"ops": TOPIC, "snapshots": "snaps", "dead_letter": "dead"},
        worker={"data_dir": str(tmp_path), "commit_interval_s": 0, "publish_timeout_s": 0.5},
    )


def _msg(offset: int, item: str = "x", partition: int = 0) -> Message:
    value = op_bytes(item, "incAttrBy", new_flake(), {"field": "n", "by": 1})
    return Message(
        topic=TOPIC,
        partition=partition,
        offset=offset,
        key=item.encode(),
        value=value,
        timestamp=(TIMESTAMP_LOG_APPEND_TIME, int(time.time() * 1000)),
    )


class Parts:
    """The parts of one worker, wired as ``Worker.__init__`` wires them."""

    def __init__(
        self,
        settings: Settings,
        snapshots: Snapshots | None = None,
        low_watermark: Callable[[str, int], int] = lambda t, p: 0,
        committed: Callable[[str, int], int | None] = lambda t, p: None,
    ) -> None:
        self.consumer, self.producer = FakeConsumer(), FakeProducer()
        self.metrics, self.health = WorkerMetrics(), Health()
        self.checkpoint = Checkpoint(settings, self.producer, self.consumer, self.metrics)
        self.publisher = Publisher(settings, self.producer, self.checkpoint, self.metrics)
        self.restorer = Restorer(
            settings, self.metrics, snapshots or (lambda p, c, on: {}), low_watermark, committed
        )
        self.assignment = Assignment(
            self.consumer,
            self.restorer,
            self.checkpoint,
            self.publisher,
            self.metrics,
            self.health,
        )
        self.processor = BatchProcessor(
            settings, self.checkpoint, self.publisher, self.metrics, PlacementRule("murmur2", 2)
        )

    def assign_and_start(self, *partitions: int) -> None:
        self.assignment.on_assign(self.consumer, [TopicPartition(TOPIC, p) for p in partitions])

        def started() -> bool:
            self.assignment.step()
            return len(self.assignment.running()) == len(partitions)

        wait_until(started, 10, lambda: f"states {self.assignment.states()}")

    def close(self) -> None:
        self.assignment.close()
        self.restorer.close()


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    p = Parts(_settings(tmp_path))
    yield p
    p.close()


def _pending(ps: PartitionStore) -> dict[str, int]:
    return ps.pending_snapshots()[0]


def test_offsets_are_committed_only_once_the_batch_is_acknowledged(parts: Parts) -> None:
    parts.assign_and_start(0)
    parts.producer.mode = "hold"
    parts.processor.process([_msg(0), _msg(1)], parts.assignment.running())
    ps = parts.assignment.running()[(TOPIC, 0)]
    assert ps.next_offset == 2  # applied and in the store ...
    assert _pending(ps) == {"x": 1}  # ... its snapshot pending until Kafka takes it
    parts.checkpoint.commit(parts.assignment.running())
    assert parts.consumer.commits == []  # nothing acknowledged: nothing committed

    parts.producer.mode = "ack"
    parts.checkpoint.advance(wait=True)
    parts.checkpoint.commit(parts.assignment.running())
    assert parts.consumer.commits == [[(TOPIC, 0, 2)]]
    assert len(ps.pending_snapshots()[1]) == 1  # deleted with the next write, not before
    parts.processor.process([_msg(2)], parts.assignment.running())
    # batch 1's row went with batch 2's transaction; batch 2's own is pending
    pending, rows = ps.pending_snapshots()
    assert (pending, len(rows)) == ({"x": 2}, 1)


def test_a_failed_delivery_raises_and_leaves_the_batch_pending(parts: Parts) -> None:
    parts.assign_and_start(0)
    parts.producer.mode = "fail"
    with pytest.raises(PublishError, match="1 failed"):
        parts.processor.process([_msg(0)], parts.assignment.running())
        parts.checkpoint.advance(wait=True)
    ps = parts.assignment.running()[(TOPIC, 0)]
    assert _pending(ps) == {"x": 0}
    parts.checkpoint.commit(parts.assignment.running())
    assert parts.consumer.commits == []


def test_a_partition_starts_at_its_stores_offset_and_republishes_what_is_pending(
    tmp_path: Path,
) -> None:
    s = _settings(tmp_path)
    first = Parts(s)
    first.assign_and_start(0)
    first.producer.mode = "hold"
    first.processor.process([_msg(0), _msg(1), _msg(2)], first.assignment.running())
    first.close()  # a crash before Kafka took the snapshot: it stays pending in the store

    again = Parts(s)
    try:
        again.assign_and_start(0)
        # assigned paused first, then assigned again at the store's offset and resumed
        calls = again.consumer.calls
        assert [c[0] for c in calls] == ["assign", "pause", "unassign", "assign", "resume"]
        assert calls[3] == ("assign", [(TOPIC, 0, 3)])
        [snap] = again.producer.produced
        assert (snap.topic, snap.key, snap.partition) == ("snaps", b"x", 0)
        again.checkpoint.advance(wait=True)
        again.checkpoint.delete_acknowledged(again.assignment.stores().values())
        assert _pending(again.assignment.running()[(TOPIC, 0)]) == {}
    finally:
        again.close()


def test_messages_of_a_partition_not_running_are_not_applied(tmp_path: Path) -> None:
    release = threading.Event()

    def slow_snapshots(
        partition: int, cancelled: Callable[[], bool], on_progress: Callable[[int], None]
    ) -> dict[str, Snapshot] | None:
        while not release.wait(0.05):
            if cancelled():
                return None
        return {}

    parts = Parts(_settings(tmp_path), slow_snapshots)
    try:
        parts.assignment.on_assign(parts.consumer, [TopicPartition(TOPIC, 0)])
        parts.assignment.step()
        assert parts.assignment.states() == {f"{TOPIC}/0": "RESTORING"}
        parts.processor.process([_msg(0)], parts.assignment.running())
        assert parts.producer.produced == []  # dropped: consumed again once it runs
        release.set()
        wait_until(
            lambda: parts.assignment.step() or bool(parts.assignment.running()),
            10,
            lambda: f"{parts.assignment.states()}",
        )
        assert parts.assignment.running()[(TOPIC, 0)].next_offset is None  # from the start
    finally:
        parts.close()


def test_a_revoke_during_a_restore_stops_it_and_leaves_nothing_to_trust(tmp_path: Path) -> None:
    reading = threading.Event()
    stopped = threading.Event()
    test_over = threading.Event()  # ends the restore whatever the code does

    def endless_snapshots(
        partition: int, cancelled: Callable[[], bool], on_progress: Callable[[int], None]
    ) -> dict[str, Snapshot] | None:
        reading.set()
        while not cancelled() and not test_over.is_set():
            time.sleep(0.01)
        stopped.set()
        return None

    s = _settings(tmp_path)
    parts = Parts(s, endless_snapshots)
    try:
        parts.assignment.on_assign(parts.consumer, [TopicPartition(TOPIC, 0)])
        assert reading.wait(10)
        # the revoke returns only once the restore has stopped: it must cancel it, since the
        # snapshots never end by themselves
        revoke = threading.Thread(
            target=parts.assignment.on_revoke,
            args=(parts.consumer, [TopicPartition(TOPIC, 0)]),
            daemon=True,
        )
        revoke.start()
        revoke.join(60)
        assert not revoke.is_alive(), "the revoke did not cancel the restore"
        assert stopped.is_set(), "the revoke returned while the restore still ran"
        assert parts.assignment.states() == {}
        assert parts.consumer.calls[-1] == ("unassign", [(TOPIC, 0, -1001)])
        assert parts.consumer.commits == []
    finally:
        test_over.set()
        parts.close()
    # the store's lock is free for the next owner, and it holds no offset to resume from
    ps = PartitionStore.open(s.worker.data_dir, TOPIC, 0, False)
    try:
        assert ps.next_offset is None
    finally:
        ps.close()


def test_a_revoke_commits_the_stores_offset_and_closes_it(parts: Parts) -> None:
    parts.assign_and_start(0, 1)
    parts.processor.process([_msg(0), _msg(0, "y", 1), _msg(1, "y", 1)], parts.assignment.running())
    ps1 = parts.assignment.running()[(TOPIC, 1)]
    parts.assignment.on_revoke(parts.consumer, [TopicPartition(TOPIC, 1)])
    assert parts.consumer.commits[-1] == [(TOPIC, 1, 2)]
    assert ps1.store.closed
    assert list(parts.assignment.running()) == [(TOPIC, 0)]  # the other one goes on
    assert _pending(parts.assignment.running()[(TOPIC, 0)]) == {"x": 0}


def test_a_store_locked_by_its_last_owner_is_waited_for_beside_the_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dyno_stream.stream.restorer")
    s = _settings(tmp_path)
    held = PartitionStore.open(s.worker.data_dir, TOPIC, 0, False)
    parts = Parts(s)
    try:
        caplog.set_level(logging.INFO, "dyno_stream.stream.restorer")
        parts.assignment.on_assign(parts.consumer, [TopicPartition(TOPIC, 0)])
        wait_until(  # the restorer found the store locked, and waits
            lambda: "still locked by its last owner" in caplog.text,
            10,
            lambda: f"the restorer said: {caplog.text!r}",
        )
        parts.assignment.step()  # returns at once: the wait is the restorer's
        assert parts.assignment.states() == {f"{TOPIC}/0": "RESTORING"}
        held.close()
        wait_until(
            lambda: parts.assignment.step() or bool(parts.assignment.running()),
            10,
            lambda: f"{parts.assignment.states()}",
        )
    finally:
        parts.close()
        held.close()


def test_ops_deleted_while_restoring_are_said_and_the_partition_starts_past_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Retention moves the ops topic's start from 0 to 50 while the snapshots are read: the
    restore's offset (11, after the snapshot's 10) is gone. Said, and started at 50, not
    left to Kafka's silent out-of-range reset."""
    lows = iter([0, 50])
    snapshot = Snapshot(
        item="x",
        value={"n": 1},
        timestamp=new_flake(),
        changes=1,
        hash="h",
        count=1,
        source=Source(topic=TOPIC, partition=0, offset=10),
    )
    parts = Parts(_settings(tmp_path), lambda p, c, on: {"x": snapshot}, lambda t, p: next(lows))
    try:
        parts.assign_and_start(0)
        assert parts.assignment.running()[(TOPIC, 0)].next_offset == 50
        assert ("assign", [(TOPIC, 0, 50)]) in parts.consumer.calls
    finally:
        parts.close()
    assert "ops 11-49 of ops/0 were deleted while it was restored" in caplog.text


def test_a_store_behind_is_set_aside_restored_and_the_copies_deleted(tmp_path: Path) -> None:
    """Behind the ops topic's start: set aside, restored into a new store; once that is
    ready, the copy and one a restore cut short left earlier are deleted. Another
    partition's leftover goes when a worker starts (``remove_stale_copies`` of the topic)."""
    s = _settings(tmp_path)
    first = Parts(s)
    first.assign_and_start(0)
    first.processor.process([_msg(0), _msg(1)], first.assignment.running())
    first.checkpoint.advance(wait=True)
    first.close()  # the store stays at offset 2
    root = tmp_path / TOPIC
    for leftover in ("0000.stale-1", "0001.stale-1"):
        (root / leftover).mkdir()
        (root / leftover / "CURRENT").write_text("a store's file")
    snapshot = Snapshot(
        item="x",
        value={"n": 7},
        timestamp=new_flake(),
        changes=7,
        hash="h",
        count=1,
        source=Source(topic=TOPIC, partition=0, offset=9),
    )
    again = Parts(s, lambda p, c, on: {"x": snapshot}, lambda t, p: 5)
    try:
        again.assign_and_start(0)
        ps = again.assignment.running()[(TOPIC, 0)]
        assert ps.next_offset == 10 and ps.store.get_item("x").value == {"n": 7}  # restored
        assert sorted(p.name for p in root.iterdir()) == ["0000", "0001.stale-1"]
    finally:
        again.close()
    from dyno_stream.store.partition import remove_stale_copies

    assert remove_stale_copies(root) == [root / "0001.stale-1"]
    assert [p.name for p in root.iterdir()] == ["0000"]


def test_a_replay_below_the_groups_committed_offset_publishes_nothing_stale(
    tmp_path: Path,
) -> None:
    """A partition back on this worker's disk after another worker took it further: the
    replay of the ops that worker published already must not publish older snapshots."""
    s = _settings(tmp_path)
    first = Parts(s)
    first.assign_and_start(0)
    first.processor.process([_msg(0), _msg(1, "y")], first.assignment.running())
    first.checkpoint.advance(wait=True)
    first.close()  # this store stays at offset 2; another worker went on to offset 5

    again = Parts(s, committed=lambda t, p: 5)
    try:
        again.assign_and_start(0)
        ps = again.assignment.running()[(TOPIC, 0)]
        assert ps.published_through == 5
        again.processor.process([_msg(2), _msg(3, "y"), _msg(4)], again.assignment.running())
        assert again.producer.produced == []  # the other worker published x and y as of 4
        assert ps.pending_snapshots()[0] == {}
        again.processor.process([_msg(5, "y")], again.assignment.running())
        assert [m.key for m in again.producer.produced] == [b"y"]
        assert ps.published_through is None
    finally:
        again.close()


def test_a_store_with_nothing_to_restore_replays_quietly_below_the_committed_offset(
    tmp_path: Path,
) -> None:
    """No snapshot of the partition at all (every item deleted, the tombstones removed by
    Kafka) and the group committed offset 3: the replay from the start publishes nothing
    below it, so a deleted item's values never come back."""
    parts = Parts(_settings(tmp_path), committed=lambda t, p: 3)
    try:
        parts.assign_and_start(0)
        ps = parts.assignment.running()[(TOPIC, 0)]
        assert ps.published_through == 3
        parts.processor.process([_msg(0), _msg(1, "y"), _msg(2)], parts.assignment.running())
        assert parts.producer.produced == []
    finally:
        parts.close()


def test_small_batches_do_not_wait_for_acknowledgements_while_the_pipeline_has_room(
    tmp_path: Path,
) -> None:
    """The bound on batches in flight counts events: twenty batches of one event each go out
    with no acknowledgement and no wait for one (a wait stopped the loop under a moderate
    load whenever the broker was slow for a moment: the latency tail)."""
    s = _settings(tmp_path)
    # a publish timeout no slow machine reaches: only the bound may make the loop wait
    s = s.model_copy(update={"worker": s.worker.model_copy(update={"publish_timeout_s": 600})})
    parts = Parts(s)
    try:
        parts.assign_and_start(0)
        parts.producer.mode = "hold"  # no acknowledgement comes
        parts.producer.refuse_waits = True  # and a poll that waits for one fails at once
        for offset in range(20):
            parts.processor.process([_msg(offset, f"item-{offset}")], parts.assignment.running())
        assert parts.producer.waits == 0
        parts.producer.refuse_waits = False
        assert parts.checkpoint.in_flight == 20
        parts.producer.mode = "ack"
        parts.checkpoint.advance(wait=True)
        assert parts.checkpoint.in_flight == 0
        parts.checkpoint.delete_acknowledged(parts.assignment.stores().values())
        assert _pending(parts.assignment.running()[(TOPIC, 0)]) == {}  # all 20 acknowledged
    finally:
        parts.close()


def _patient_parts(tmp_path: Path, **worker: Any) -> Parts:
    """Parts whose publish timeout no slow machine reaches, with no acknowledgement coming
    and a wait for one refused at once (``FakeProducer.refuse_waits``): only the bounds on
    what is in flight make the loop wait."""
    s = _settings(tmp_path)
    s = s.model_copy(
        update={"worker": s.worker.model_copy(update={"publish_timeout_s": 600, **worker})}
    )
    parts = Parts(s)
    parts.assign_and_start(0)
    parts.producer.mode = "hold"
    parts.producer.refuse_waits = True
    return parts


def test_full_batches_in_flight_stay_bounded(tmp_path: Path) -> None:
    """Beyond MAX_IN_FLIGHT full batches' worth of events the loop waits for the oldest, as
    it did when the bound counted batches."""
    parts = _patient_parts(tmp_path, batch_size=2)
    try:
        running = parts.assignment.running()
        for b in range(MAX_IN_FLIGHT):  # full batches of 2 events: within the bound
            parts.processor.process([_msg(2 * b, "a"), _msg(2 * b + 1, "b")], running)
        assert parts.producer.waits == 0
        with pytest.raises(AssertionError, match="polled with a wait"):
            parts.processor.process([_msg(2 * MAX_IN_FLIGHT, "a")], running)
    finally:
        parts.close()


def test_batches_in_flight_stay_bounded_in_number(tmp_path: Path) -> None:
    parts = _patient_parts(tmp_path)
    try:
        running = parts.assignment.running()
        for offset in range(MAX_IN_FLIGHT_BATCHES):
            parts.processor.process([_msg(offset)], running)
        assert parts.producer.waits == 0
        with pytest.raises(AssertionError, match="polled with a wait"):
            parts.processor.process([_msg(MAX_IN_FLIGHT_BATCHES)], running)
    finally:
        parts.close()


def test_a_batch_unacknowledged_past_the_publish_timeout_raises(tmp_path: Path) -> None:
    """A batch still unacknowledged when the loop waits for it past ``publish_timeout_s``
    (0 here: at once) gives up: its snapshot stays pending, to be published again."""
    s = _settings(tmp_path)
    s = s.model_copy(update={"worker": s.worker.model_copy(update={"publish_timeout_s": 0})})
    parts = Parts(s)
    try:
        parts.assign_and_start(0)
        parts.producer.mode = "hold"
        with pytest.raises(PublishError, match="unacknowledged"):
            parts.processor.process([_msg(0)], parts.assignment.running())
            parts.checkpoint.advance(wait=True)
        assert _pending(parts.assignment.running()[(TOPIC, 0)]) == {"x": 0}
    finally:
        parts.close()


def test_partitions_assigned_divide_the_memory_budget_before_their_stores_open(
    parts: Parts,
) -> None:
    """Each new store opens with its share for every partition the worker holds (not for the
    stores open so far, which would give the first one the whole budget); a revoke gives the
    shares back."""
    budget = parts.restorer.budget
    start = parts.restorer.start
    seen_at_start: list[int] = []

    def recording_start(topic: str, partition: int, ops_partitions: int | None) -> RestoreJob:
        seen_at_start.append(budget.stores)
        return start(topic, partition, ops_partitions)

    parts.restorer.start = recording_start  # type: ignore[method-assign]
    parts.assign_and_start(0, 1, 2, 3)
    assert seen_at_start == [4, 4, 4, 4]
    assert budget.state_share == budget.state_bytes // 4
    parts.assignment.on_revoke(parts.consumer, [TopicPartition(TOPIC, p) for p in (1, 2, 3)])
    assert budget.stores == 1 and budget.state_share == budget.state_bytes


def test_a_message_off_its_rule_partition_is_forwarded_there_not_applied(parts: Parts) -> None:
    """ "y" belongs on partition 0 of 2 by murmur2 (crc32 puts it on 1, as kcat would): it is
    forwarded to partition 0 with its bytes and headers, kept pending until Kafka takes it,
    and never applied to partition 1's store."""
    parts.assign_and_start(0, 1)
    parts.producer.mode = "hold"
    misplaced = _msg(0, "y", 1)
    parts.processor.process([misplaced, _msg(1, "d", 1)], parts.assignment.running())
    ps1 = parts.assignment.running()[(TOPIC, 1)]
    assert ps1.store.get_item("y").value is None  # not applied where it landed
    assert list(ps1.store.rows("y")) == []
    assert _pending(ps1) == {"d": 1}
    [(_key, letter)] = ps1.pending_dead_letters()  # survives a crash until acknowledged
    assert (letter.reason, letter.forward_to) == ("wrong-partition", 0)
    [forward] = [m for m in parts.producer.produced if m.key == b"y"]
    assert (forward.topic, forward.partition, forward.value) == (TOPIC, 0, misplaced.value())
    headers = dict(forward.headers or [])
    assert headers["dyno.forwarded.from"] == f"{TOPIC}/1@0".encode()
    assert headers["dyno.forwarded.partitioner"] == b"crc32"
    assert [m.topic for m in parts.producer.produced].count("dead") == 0

    parts.producer.mode = "ack"
    parts.checkpoint.advance(wait=True)
    parts.checkpoint.commit(parts.assignment.running())
    assert parts.consumer.commits[-1] == [(TOPIC, 1, 2)]
    assert parts.metrics.forwarded.labels("crc32")._value.get() == 1
