"""Deleting for real: restores and crashes never bring a deleted item back.

A broker of this module's own: its snapshot topic compacts within seconds (small
``segment.ms``, ``delete.retention.ms`` and ``min.cleanable.dirty.ratio``), so a test can
watch Kafka remove a tombstone itself and restore after that.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from helpers import REPO, WorkerProcess, read_topic, wait_until

from dyno_stream.client import DynoClient, Receipt
from dyno_stream.config import Settings
from dyno_stream.core.snapshots import H_ERASED_ROWS, parse_message
from dyno_stream.devtools.broker import LocalBroker
from dyno_stream.kafka.topics import ensure_topics
from dyno_stream.store import DynoStore

WAIT_S = 90.0
FAULT_INJECTOR = REPO / "tests" / "faultinject"


def own_settings(make_settings: Callable[..., Settings], broker: LocalBroker) -> Settings:
    base = make_settings()
    s = base.model_copy(
        update={"kafka": base.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap})}
    )
    ensure_topics(s)
    return s


def compact_fast(s: Settings) -> None:
    """The snapshot topic compacts, and drops tombstones, within seconds."""
    admin = AdminClient(s.kafka.librdkafka())
    entries = [
        ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
        for name, value in {
            "segment.ms": "300",
            "delete.retention.ms": "300",
            "min.cleanable.dirty.ratio": "0.01",
            "min.compaction.lag.ms": "0",
        }.items()
    ]
    resource = ConfigResource("TOPIC", s.topics.snapshots, incremental_configs=entries)
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


def snapshot_keys(s: Settings) -> list[tuple[bytes | None, bool]]:
    return [(r.key, r.value is None) for r in read_topic(s, s.topics.snapshots)]


def wait_snapshot_of(s: Settings, item: str, at_offset: int, worker: WorkerProcess) -> None:
    """Until a snapshot of ``item`` as of op ``at_offset`` is published: the worker has
    applied everything up to there."""

    def seen() -> bool:
        for r in read_topic(s, s.topics.snapshots):
            snap = parse_message(r.key, r.value, list(r.headers.items()))
            if snap is not None and snap["item"] == item and snap["source"]["offset"] >= at_offset:
                return True
        return False

    wait_until(seen, WAIT_S, lambda: f"no snapshot of {item} at {at_offset}{worker.tail()}")


def stop(worker: WorkerProcess) -> None:
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit(60) == 0, worker.tail()


def rows_of(data_dir: Path, s: Settings, item: str) -> list[tuple[str, str]]:
    with DynoStore(data_dir / s.topics.ops / "0000") as store:
        return list(store.rows(item))


def test_a_restore_never_resurrects_a_deleted_item(
    make_settings: Callable[..., Settings], own_broker: LocalBroker, tmp_path: Path
) -> None:
    s = own_settings(make_settings, own_broker)
    compact_fast(s)
    secret = uuid.uuid4().hex
    w1 = WorkerProcess(s, "w1", tmp_path)
    workers = [w1]
    try:
        with DynoClient(s) as client:
            client.put_item("keep", {"v": 1}).result(30)  # the oldest snapshot: replay from 1
            client.put_item("gone", {"secret": secret}).result(30)
            client.put_attrs("gone", {"more": secret}).result(30)
            deletion = client.del_item("gone").result(30)
        wait_snapshot_of(s, "gone", deletion.offset, w1)
        stop(w1)

        # 1. a new disk while the tombstone is in the topic: the item restores as its
        #    deleted marker, and the replay skips its ops up to the tombstone's offset
        w2 = WorkerProcess(s, "w2", tmp_path)
        workers.append(w2)
        with DynoClient(s) as client:  # a probe: w2 has applied everything up to it
            last = client.put_attrs("probe-2", {"v": 2}).result(30)
        wait_snapshot_of(s, "probe-2", last.offset, w2)
        stop(w2)
        assert w2.restored() == {0: 2}, w2.tail()
        rows = rows_of(w2.data_dir, s, "gone")
        assert len(rows) == 1 and rows[0][1].endswith(":3:null"), rows
        assert secret not in str(rows)
        with DynoStore(w2.store(0)) as store:
            assert store.get_item("gone").deleted

        # 2. Kafka removes the tombstone itself (and every snapshot of the item before it)
        filler = Producer(s.kafka.librdkafka())
        deadline = time.monotonic() + 180
        while (b"gone", True) in snapshot_keys(s) or (b"gone", False) in snapshot_keys(s):
            assert time.monotonic() < deadline, f"Kafka kept the tombstone: {snapshot_keys(s)}"
            for _ in range(20):  # roll segments, so that the cleaner has work
                filler.produce(s.topics.snapshots, None, b"filler", partition=0)
            filler.flush(10)
            time.sleep(0.5)
        # a new disk again: no snapshot and no tombstone of the item; the replay from the
        # oldest snapshot's offset applies its ops, the deletion among them
        w3 = WorkerProcess(s, "w3", tmp_path)
        workers.append(w3)
        with DynoClient(s) as client:
            last = client.put_attrs("probe-3", {"v": 3}).result(30)
        wait_snapshot_of(s, "probe-3", last.offset, w3)
        stop(w3)
        assert w3.restored() == {0: 2}, w3.tail()  # keep (offset 0) and probe-2
        with DynoStore(w3.store(0)) as store:
            # keep's snapshot is the oldest (offset 0): the item's ops were replayed, and
            # the deletion with them
            item = store.get_item("gone")
            assert item.value is None and item.deleted and item.changes == 3, item
            assert store.get_item("keep").value == {"v": 1}
        published = [r for r in read_topic(s, s.topics.snapshots) if r.key == b"gone" and r.value]
        assert published == [], "a snapshot of the deleted item was published again"
    finally:
        for w in workers:
            w.cleanup()


def test_a_worker_killed_between_an_erasure_and_its_tombstone_resurrects_nothing(
    make_settings: Callable[..., Settings], own_broker: LocalBroker, tmp_path: Path
) -> None:
    s = own_settings(make_settings, own_broker)
    flag = tmp_path / "killed-once"
    env = {
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(FAULT_INJECTOR), os.environ.get("PYTHONPATH")])
        ),
        "DYNO_FAULT_KILL_AT_TOMBSTONE": str(flag),
    }
    secret = uuid.uuid4().hex
    w1 = WorkerProcess(s, "w1", tmp_path, env=env)
    workers = [w1]
    try:
        with DynoClient(s) as client:
            for i in range(20):
                client.put_attrs("person", {f"k{i}": secret})
            client.put_item("other", {"v": 1}).result(30)
            erased: Receipt = client.erase("person").result(30)
        wait_until(lambda: not w1.alive(), WAIT_S, lambda: f"not killed{w1.tail()}")
        assert w1.proc.returncode == -signal.SIGKILL and flag.exists(), w1.tail()
        assert "faultinject: killed before a tombstone" in w1.text()
        # the erasure's write batch landed before the kill: its rows are gone already
        rows = rows_of(w1.data_dir, s, "person")
        assert len(rows) == 1 and rows[0][1].endswith(":21:null"), rows
        assert not [
            r for r in read_topic(s, s.topics.snapshots) if r.key == b"person" and r.value is None
        ]

        # started again on its disk: it publishes what the kill left pending, the tombstone
        w2 = WorkerProcess(s, "w1-again", tmp_path, data_dir=w1.data_dir, env=env)
        workers.append(w2)
        wait_until(
            lambda: any(
                r.key == b"person" and r.value is None for r in read_topic(s, s.topics.snapshots)
            ),
            WAIT_S,
            lambda: f"no tombstone after the restart{w2.tail()}",
        )
        with DynoClient(s) as client:
            last = client.put_attrs("other", {"v": 2}).result(30)
        wait_snapshot_of(s, "other", last.offset, w2)
        stop(w2)
        rows = rows_of(w1.data_dir, s, "person")
        assert len(rows) == 1 and rows[0][1].endswith(":21:null"), rows
        records = [r for r in read_topic(s, s.topics.snapshots) if r.key == b"person"]
        # the last word on the item is its tombstone, from the erasure's offset
        assert records[-1].value is None, records[-1]
        assert int(records[-1].headers["dyno.source.offset"]) == erased.offset
        # published again from the pending row, it still says the rows the erasure removed
        assert records[-1].headers[H_ERASED_ROWS] == b"20", records[-1].headers

        # and a new disk restores it as deleted, with nothing of its values
        w3 = WorkerProcess(s, "w3", tmp_path)
        workers.append(w3)
        with DynoClient(s) as client:
            last = client.put_attrs("other", {"v": 3}).result(30)
        wait_snapshot_of(s, "other", last.offset, w3)
        stop(w3)
        rows = rows_of(w3.data_dir, s, "person")
        assert len(rows) == 1 and rows[0][1].endswith(":21:null"), rows
        raw = b"".join(p.read_bytes() for p in w3.data_dir.rglob("*") if p.is_file())
        assert secret.encode() not in raw
    finally:
        for w in workers:
            w.cleanup()
