"""Deleting for real, in the store: the deleted marker, compaction removing a
deleted item's rows once the deletion is older than the lateness, the rules for late ops,
erasure, tombstones read by a restore, and the policy choosing deleted items."""

from __future__ import annotations

import io
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Message
from fakes import FakeProducer, batch_processor
from helpers import op_bytes
from rich.console import Console

from dyno_stream.config import CompactionSettings, load_settings
from dyno_stream.core.errors import LateOpError
from dyno_stream.core.events import H_EXPIRE_IF_HASH, Erase, Snapshot, make_op
from dyno_stream.core.flake import FlakeGenerator, new_flake
from dyno_stream.core.snapshots import (
    H_ERASED_ROWS,
    DeletedSnapshot,
    NewestSnapshots,
    tombstone_headers,
    tombstone_snapshot,
)
from dyno_stream.jobs.compaction import compact_offline
from dyno_stream.kafka.partitioning import PlacementRule
from dyno_stream.store import DynoStore
from dyno_stream.store.compaction_policy import items_to_flatten, summaries
from dyno_stream.store.partition import PartitionStore
from dyno_stream.stream.metrics import WorkerMetrics

HOUR_MS = 3_600_000


def flakes_at(hours_ago: float, node: int) -> FlakeGenerator:
    at = time.time_ns() // 1_000_000 - int(hours_ago * HOUR_MS)
    return FlakeGenerator(node=node, pid=1, clock=lambda: at)


def quiet() -> Console:
    return Console(file=io.StringIO(), force_terminal=False, width=200)


def rows(store: DynoStore, name: str) -> list[tuple[str, str]]:
    return list(store.rows(name))


def test_del_item_marks_the_item_deleted_and_a_new_op_brings_it_back(tmp_path: Path) -> None:
    with DynoStore(tmp_path / "s") as store:
        store.put_item("a", {"x": 1})
        store.del_item("a")
        item = store.get_item("a")
        assert item.value is None and item.deleted and item.changes == 2
        store.put_attrs("a", {"y": 2})
        again = store.get_item("a")
        assert again.value == {"y": 2} and not again.deleted and again.changes == 3
        # emptied by delAttrs: reads as absent, but it is not a deletion (no tombstone)
        store.put_item("b", {"x": 1})
        store.del_attrs("b", ["x"])
        assert store.get_item("b").value is None and not store.get_item("b").deleted


def test_offline_compaction_removes_a_deleted_items_rows_past_the_lateness(
    tmp_path: Path,
) -> None:
    """A deletion older than the lateness: every row goes, one marker without values stays,
    whatever the item's row count (below min_rows too). A deletion within the window: kept."""
    old, recent = flakes_at(2.0, 1), flakes_at(0.1, 2)
    path = tmp_path / "s"
    with DynoStore(path) as store:
        store.put_item("gone", {"secret": "s3cr3t"}, ts=old())
        store.put_attrs("gone", {"more": "m0re"}, ts=old())
        store.del_item("gone", ts=old())
        store.put_item("fresh-del", {"secret": "k33p"}, ts=old())
        store.del_item("fresh-del", ts=recent())
        store.put_item("alive", {"v": 1}, ts=old())
        store.put_attrs("alive", {"w": 2}, ts=old())
        before = store.get_item("gone")
    summary = compact_offline(path, CompactionSettings(min_rows=10), quiet())
    assert summary.flattened == 1, summary.details
    with DynoStore(path) as store:
        marker = rows(store, "gone")
        assert len(marker) == 1, marker
        key, value = marker[0]
        assert key.endswith("/history") and value == f"{before.hash}:3:null"
        assert "s3cr3t" not in value
        gone = store.get_item("gone")
        assert gone.deleted and gone.value is None and gone.count == 1
        assert gone.changes == before.changes and gone.hash == before.hash
        assert len(rows(store, "fresh-del")) == 2  # within the window: rows kept
        assert len(rows(store, "alive")) == 2  # two rows, below min_rows: untouched
    raw = b"".join(p.read_bytes() for p in path.rglob("*") if p.is_file())
    assert b"s3cr3t" not in raw and b"m0re" not in raw  # gone from LevelDB's files too


def test_late_ops_around_a_deletion(tmp_path: Path) -> None:
    """Within the window, an op older than the deletion is placed before it (the item stays
    deleted); after the rows are removed, an older op is late, a newer one starts the item
    again from an empty value."""
    gen = flakes_at(2.0, 3)
    t_put, t_late, t_del, t_older = gen(), gen(), gen(), gen()
    path = tmp_path / "s"
    with DynoStore(path) as store:
        store.put_item("a", {"x": 1}, ts=t_put)
        store.del_item("a", ts=t_del)
        store.put_attrs("a", {"late": True}, ts=t_late)  # out of order, before the deletion
        item = store.get_item("a")
        assert item.value is None and item.deleted and item.changes == 3
        assert [k.rsplit("/", 1)[1] for k, _ in rows(store, "a")] == [
            "putItem",
            "putAttrs",
            "delItem",
        ]
    compact_offline(path, CompactionSettings(min_rows=10), quiet())
    with DynoStore(path) as store:
        assert len(rows(store, "a")) == 1
        with pytest.raises(LateOpError):
            store.put_attrs("a", {"zombie": True}, ts=t_put)
        del t_older
        store.put_attrs("a", {"new": 1})  # now: after the deletion
        new = store.get_item("a")
        assert new.value == {"new": 1} and not new.deleted and new.changes == 4


def test_erase_removes_every_row_and_the_state_at_once(tmp_path: Path) -> None:
    path = tmp_path / "s"
    # distinct random tokens: LevelDB compresses its files, a repeated text hides from grep
    secrets = [uuid.uuid4().hex.encode() for _ in range(50)]
    with DynoStore(path) as store:
        for i, secret in enumerate(secrets):
            store.put_attrs("p", {f"k{i}": secret.decode()})
            if i == 25:
                store.flush()  # a state row with values on disk too
        kept = uuid.uuid4().hex
        store.put_item("other", {"v": kept})
        assert store.get_item("p").value is not None
        at, removed = store.erase("p")
        assert removed == 50  # every op row
        assert rows(store, "p") == [(f"p/{at}/history", rows(store, "p")[0][1])]
        assert rows(store, "p")[0][1].endswith(":51:null")
        item = store.get_item("p")
        assert item.deleted and item.value is None and item.count == 1
        with pytest.raises(LateOpError):
            store.apply([make_op("putAttrs", "p", {"z": 1}, "013d58c7276e-0000-188c-786ae2e1f629")])
        assert store.get_item("other").value == {"v": kept}
        # no compaction and no close: the values must already be gone from LevelDB's files
        raw = b"".join(p.read_bytes() for p in path.rglob("*") if p.is_file())
        assert [s for s in secrets if s in raw] == []
        assert kept.encode() in raw  # the search can find what is there


def test_erase_of_an_unknown_item_leaves_a_marker_and_says_it_removed_nothing(
    tmp_path: Path,
) -> None:
    with DynoStore(tmp_path / "s") as store:
        with store.transaction() as tx:
            tx.apply([Erase(item="never", ts="013d58c7276e-0000-188c-786ae2e1f629")])
        assert tx.erased == {0: 0}
        item = store.get_item("never")
        assert item.deleted and item.count == 1 and item.changes == 1


def test_the_rows_an_erasure_removed_are_the_transactions_result(tmp_path: Path) -> None:
    """Counted per erase command, over the rows as the batch leaves them; a deleted marker
    replaced is not a row removed (it holds no value)."""
    with DynoStore(tmp_path / "s") as store:
        store.put_item("folded", {"a": 1})
        store.put_attrs("folded", {"b": 2})
        item = store.get_item("folded")
        assert item.hash is not None
        store.flatten("folded", item.hash)  # one history row holding the value
        store.put_item("deleted", {"a": 1})
        store.del_item("deleted")  # two rows, no value in the state
        store.put_item("gone", {"a": 1})
        store.del_item("gone")
        gone = store.get_item("gone")
        assert gone.hash is not None
        store.flatten("gone", gone.hash)  # only a deleted marker left
        with store.transaction() as tx:
            tx.apply([make_op("putItem", "new", {"x": 1}, new_flake())])  # index 0
            tx.apply(
                [
                    Erase(item="folded", ts=new_flake()),  # 1
                    Erase(item="deleted", ts=new_flake()),  # 2
                    Erase(item="gone", ts=new_flake()),  # 3
                    Erase(item="new", ts=new_flake()),  # 4: its row staged in this batch
                    Erase(item="new", ts=new_flake()),  # 5: only the marker of 4 left
                    make_op("putItem", "new", {"again": 1}, new_flake()),  # 6
                    Erase(item="new", ts=new_flake()),  # 7
                ]
            )
        assert tx.erased == {1: 1, 2: 2, 3: 0, 4: 1, 5: 0, 7: 1}
        for name in ("folded", "deleted", "gone", "new"):
            assert store.get_item(name).deleted and len(rows(store, name)) == 1, name


def tomb(item: str, changes: int, count: int, offset: int) -> list[tuple[str, bytes]]:
    return tombstone_headers(
        "013d58c7276e-0000-188c-786ae2e1f629", changes, "0" * 32, count, "dyno.ops", 0, offset
    )


def snap(item: str, changes: int, offset: int) -> bytes:
    return orjson.dumps(
        {
            "item": item,
            "value": {"v": changes},
            "timestamp": "013d58c7276e-0000-188c-786ae2e1f629",
            "changes": changes,
            "hash": "1" * 32,
            "count": changes,
            "source": {"topic": "dyno.ops", "partition": 0, "offset": offset},
        }
    )


def test_newest_snapshots_keeps_a_tombstone_for_restores_only() -> None:
    kept = NewestSnapshots()
    kept.add(b"a", snap("a", 2, 5), 0)
    kept.add(b"a", None, 0, tomb("a", 3, 3, 9))
    kept.add(b"b", None, 0, tomb("b", 1, 1, 10))
    kept.add(b"b", snap("b", 2, 11), 0)  # a new item after its deletion
    kept.add(b"c", snap("c", 1, 12), 0)
    kept.add(b"c", None, 0, None)  # a tombstone without headers: its key is forgotten
    plain = kept.finish()
    assert plain is not None and sorted(plain) == ["b"]
    restoring = kept.finish(deleted=True)
    assert restoring is not None and sorted(restoring) == ["a", "b"]
    a = restoring["a"].snapshot
    assert isinstance(a, DeletedSnapshot) and a.value is None and a.changes == 3
    assert a.source is not None and a.source.offset == 9
    assert not isinstance(restoring["b"].snapshot, DeletedSnapshot)


def test_a_tombstone_without_dyno_headers_is_not_a_snapshot() -> None:
    assert tombstone_snapshot(b"a", []) is None
    assert tombstone_snapshot(None, tomb("a", 1, 1, 1)) is None
    got = tombstone_snapshot(b"a", tomb("a", 4, 2, 7))
    assert got is not None and got["changes"] == 4 and got["source"]["offset"] == 7


def test_restore_keeps_a_deleted_item_deleted_and_skips_its_older_ops(tmp_path: Path) -> None:
    ps = PartitionStore.open(tmp_path, "dyno.ops", 0, sync=False)
    try:
        deleted = DeletedSnapshot.model_validate(
            tombstone_snapshot(b"gone", tomb("gone", 3, 3, 40))
        )
        alive = Snapshot.model_validate(orjson.loads(snap("alive", 2, 20)))
        ps.restore_from([deleted, alive])
        assert ps.next_offset == 21 and ps.restored == {"gone": 40, "alive": 20}
        item = ps.store.get_item("gone")
        assert item.deleted and item.value is None and item.changes == 3
        assert [v for _, v in ps.store.rows("gone")] == [f"{'0' * 32}:3:null"]
        with pytest.raises(LateOpError):  # an op from before the deletion
            ps.store.put_attrs("gone", {"x": 1}, ts="013d58c7276e-0000-188c-786ae2e1f629")
    finally:
        ps.close()


def test_the_policy_chooses_deleted_items_past_the_cutoff_whatever_their_rows() -> None:
    old = flakes_at(2.0, 4)()
    recent = flakes_at(0.0, 5)()
    cutoff = flakes_at(1.0, 6)()

    def summary(item: str, value: Any, count: int, ts: str) -> dict[str, Any]:
        return {"item": item, "value": value, "count": count, "hash": "a" * 32, "changes": 5,
                "timestamp": ts}  # fmt: skip

    snaps = [
        summary("d-old", None, 2, old),
        summary("d-new", None, 2, recent),
        summary("marker", None, 1, old),
        summary("short", {}, 2, old),
    ]
    chosen, seen = items_to_flatten(snaps, CompactionSettings(min_rows=10), cutoff)
    assert seen == 4 and [c.name for c in chosen] == ["d-old"]


def test_summaries_include_deleted_items_below_min_rows(tmp_path: Path) -> None:
    with DynoStore(tmp_path / "s") as store:
        store.put_item("d", {"x": 1})
        store.del_item("d")
        store.put_item("a", {"x": 1})
        got = {s["item"]: s for s in summaries(store, min_rows=10)}
    assert sorted(got) == ["d"] and got["d"]["value"] is None and got["d"]["count"] == 2


def _message(offset: int, item: str, op: str, change: Any, headers: Any = None) -> Message:
    return Message(
        topic="ops",
        partition=0,
        offset=offset,
        key=item.encode(),
        value=op_bytes(item, op, new_flake(), change) if op != "erase" else orjson.dumps(
            {"item": item, "op": "erase", "ts": new_flake()}
        ),
        headers=headers,
        timestamp=(TIMESTAMP_LOG_APPEND_TIME, int(time.time() * 1000)),
    )  # fmt: skip


def test_a_batch_publishes_tombstones_and_drops_expiries_of_changed_items(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One batch: an expiry of an unchanged item (deleted), one of an item whose hash moved
    on and one of an item with an earlier op in the batch (both dropped, answered with a
    snapshot), and an erasure after the dropped ones (logged, by name only)."""
    s = load_settings(
        topics={"ops": "ops", "snapshots": "snaps", "dead_letter": "dead"},
        worker={"data_dir": str(tmp_path), "commit_interval_s": 0},
    )
    producer, metrics = FakeProducer(), WorkerMetrics()
    processor = batch_processor(s, producer, metrics, PlacementRule("murmur2", 1))
    ps = PartitionStore.open(tmp_path, "ops", 0, sync=False)
    running = {("ops", 0): ps}
    try:
        first = [_message(i, n, "putAttrs", {"v": 1}) for i, n in enumerate(["y", "z", "q", "w"])]
        processor.process(first, running)
        hashes = {n: ps.store.get_item(n).hash or "" for n in ["y", "z", "q"]}
        ps.store.put_attrs("q", {"moved": 1})  # q changes after the pass saw it

        def expire(offset: int, item: str) -> Message:
            h = [(H_EXPIRE_IF_HASH, hashes[item].encode())]
            return _message(offset, item, "delItem", {}, h)

        producer.produced.clear()
        with caplog.at_level(logging.INFO, "dyno_stream.stream.processing"):
            processor.process(
                [
                    _message(4, "z", "putAttrs", {"v": 2}),
                    expire(5, "y"),
                    expire(6, "z"),
                    expire(7, "q"),
                    _message(8, "w", "erase", None),
                ],
                running,
            )
        processor.checkpoint.advance(wait=True)
        assert ps.store.get_item("y").deleted
        assert ps.store.get_item("z").value == {"v": 2}
        assert ps.store.get_item("q").value == {"v": 1, "moved": 1}
        assert ps.store.get_item("w").deleted and ps.store.get_item("w").count == 1
        out = {p.key: p for p in producer.produced if p.topic == "snaps"}
        assert out[b"y"].value is None and out[b"w"].value is None  # tombstones
        for name, offset in ((b"z", 6), (b"q", 7)):  # answers: snapshots from the command on
            snap = orjson.loads(out[name].value or b"")
            assert snap["source"]["offset"] == offset and snap["value"] is not None
        headers = dict(out[b"y"].headers or [])
        assert headers["dyno.source.offset"] == b"5"
        assert [r.getMessage() for r in caplog.records if "erased" in r.getMessage()] == [
            "erased 'w' (ops/0@8): 1 rows removed"
        ]
        # the answer says how many rows the store removed; a plain deletion's says nothing
        assert dict(out[b"w"].headers or [])[H_ERASED_ROWS] == b"1"
        assert H_ERASED_ROWS not in headers
    finally:
        ps.close()


def test_an_erasure_answers_with_the_rows_removed_also_after_a_crash(tmp_path: Path) -> None:
    """An erasure's answer (its tombstone) says the rows removed, 0 for an item the store
    never held; published again from the pending row (a crash before Kafka took it), it
    still says so."""
    s = load_settings(
        topics={"ops": "ops", "snapshots": "snaps", "dead_letter": "dead"},
        worker={"data_dir": str(tmp_path), "commit_interval_s": 0},
    )
    producer, metrics = FakeProducer(), WorkerMetrics()
    processor = batch_processor(s, producer, metrics, PlacementRule("murmur2", 1))
    ps = PartitionStore.open(tmp_path, "ops", 0, sync=False)
    try:
        batch = [_message(i, "p", "putAttrs", {f"k{i}": i}) for i in range(3)]
        processor.process(batch, {("ops", 0): ps})
        producer.produced.clear()
        producer.mode = "hold"  # Kafka does not take the answers: they stay pending
        processor.process(
            [_message(3, "p", "erase", None), _message(4, "nobody", "erase", None)],
            {("ops", 0): ps},
        )
        said = {p.key: dict(p.headers or [])[H_ERASED_ROWS] for p in producer.produced}
        assert said == {b"p": b"3", b"nobody": b"0"}
        assert ps.pending_erasures() == {"p": 3, "nobody": 0}
        assert ps.pending_snapshots()[0] == {"p": 3, "nobody": 4}

        again = FakeProducer()  # the worker started again, on the same store
        batch_processor(
            s, again, WorkerMetrics(), PlacementRule("murmur2", 1)
        ).publisher.republish_pending(ps)
        said = {p.key: dict(p.headers or [])[H_ERASED_ROWS] for p in again.produced}
        assert said == {b"p": b"3", b"nobody": b"0"}
        assert all(p.value is None for p in again.produced)  # tombstones
    finally:
        ps.close()
