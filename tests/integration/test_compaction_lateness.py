"""Compaction never makes an on-time op late, whatever the worker's lag.

docs/operations/compaction.md promises that an op reaching Kafka within the allowed lateness
(one hour) of its flake's time is applied. Each scenario here is a worker two hours behind its
partition: the ops reach Kafka now, with flakes of the last hour, and the worker's clock
(``time.time``) runs two hours ahead, as it would on a worker that had been down or behind a
large backlog for two hours. A fold measured by the wall clock alone folds op B (flake t+5 min)
while op A (flake t, reached Kafka at t+10 min: on time) still waits in Kafka, and A becomes a
``late`` dead letter.

Real broker, real worker, LevelDB on disk.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer
from helpers import read_topic, wait_until, with_compaction
from rich.console import Console

from dyno_stream.config import CompactionSettings, Settings, producer_config
from dyno_stream.core.deadletter import H_REASON
from dyno_stream.core.flake import FlakeGenerator
from dyno_stream.jobs.compaction import compact_offline
from dyno_stream.kafka.topics import ensure_topics
from dyno_stream.store import DynoStore

MIN_MS = 60_000
WAIT_S = 60.0


def produce(s: Settings, ops: list[tuple[str, str, int, Any]]) -> None:
    """Raw op events ``(item, op, flake ms, change)``, in this order."""
    producer = Producer(producer_config(s))
    gens: dict[int, FlakeGenerator] = {}
    for item, op, flake_ms, change in ops:
        gen = gens.setdefault(flake_ms, FlakeGenerator(node=1, clock=lambda ms=flake_ms: ms))
        event = {"item": item, "op": op, "ts": gen.next(), "change": change}
        producer.produce(s.topics.ops, json.dumps(event).encode(), item.encode())
    assert producer.flush(30) == 0


@pytest.fixture
def two_hours_later(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's and the compaction pass's clock, two hours ahead of the broker's."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 7200)


def item_snapshot(s: Settings, name: str) -> dict[str, Any] | None:
    """The item's newest snapshot (most changes) on the snapshot topic."""
    return max(snapshots_of(s, name), key=lambda d: d["changes"], default=None)


def snapshots_of(s: Settings, name: str) -> list[dict[str, Any]]:
    return [
        json.loads(r.value or b"null")
        for r in read_topic(s, s.topics.snapshots)
        if r.key == name.encode()
    ]


def late_letters(s: Settings) -> list[str]:
    return [
        f"{r.key!r}: {r.headers}"
        for r in read_topic(s, s.topics.dead_letter)
        if r.headers.get(H_REASON) == b"late"
    ]


def wait_for_changes(s: Settings, name: str, changes: int) -> dict[str, Any]:
    wait_until(
        lambda: (item_snapshot(s, name) or {}).get("changes") == changes,
        WAIT_S,
        lambda: (
            f"{name} never reached {changes} changes: {item_snapshot(s, name)}, "
            f"late: {late_letters(s)}"
        ),
    )
    snap = item_snapshot(s, name)
    assert snap is not None
    return snap


def test_offline_compaction_of_a_lagging_store_keeps_an_on_time_op_placeable(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    two_hours_later: None,
) -> None:
    s = make_settings()
    ensure_topics(s)
    t = time.time_ns() // 1_000_000 - 10 * MIN_MS  # the broker's time minus ten minutes
    produce(
        s,
        [
            ("x", "putItem", t - 60 * MIN_MS, {"v": 0}),  # old: may be folded
            ("x", "putAttrs", t + 5 * MIN_MS, {"b": 1}),  # op B
        ],
    )
    worker = start_worker(s)
    wait_for_changes(s, "x", 2)
    worker.stop()

    produce(s, [("x", "putAttrs", t, {"a": 1})])  # op A: on time, not yet consumed
    policy = CompactionSettings(min_rows=2, lateness_s=3600)
    store = s.worker.data_dir / s.topics.ops / "0000"
    summary = compact_offline(store, policy, Console(file=io.StringIO()))
    # the pass did run: the old row is folded, B (newer than the consumed time minus an
    # hour) is not
    assert summary.flattened == 1, summary.fields()
    with DynoStore(store) as db:
        ops = [key.rsplit("/", 1)[1] for key, _ in db.rows("x")]
    assert ops == ["history", "putAttrs"], ops

    start_worker(s)
    snap = wait_for_changes(s, "x", 3)
    assert snap["value"] == {"v": 0, "b": 1, "a": 1}
    assert late_letters(s) == []


def test_scheduled_compaction_behind_a_backlog_keeps_an_on_time_op_placeable(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    two_hours_later: None,
) -> None:
    # one event a batch and a pass every 50 ms: many passes run while the worker is between
    # op B and op A in the backlog
    s = make_settings(batch_size=1)
    s = with_compaction(s, interval_s=0.05, min_rows=2, lateness_s=3600.0)
    ensure_topics(s)
    t = time.time_ns() // 1_000_000 - 10 * MIN_MS
    filler = [(f"f-{i % 20}", "putAttrs", t + 6 * MIN_MS, {"n": i}) for i in range(3000)]
    produce(
        s,
        [
            ("x", "putItem", t - 60 * MIN_MS, {"v": 0}),
            ("x", "putAttrs", t + 5 * MIN_MS, {"b": 1}),  # op B
            *filler,
            ("x", "putAttrs", t, {"a": 1}),  # op A, on time
        ],
    )
    start_worker(s)
    snap = wait_for_changes(s, "x", 3)
    assert snap["value"] == {"v": 0, "b": 1, "a": 1}
    assert late_letters(s) == []
    # and a pass did fold x while the worker was between B (offset 1) and A (offset 3002):
    # only a pass publishes x's snapshot from there
    a_offset = 2 + len(filler)
    folded_behind = [
        d for d in snapshots_of(s, "x") if 1 < d["source"]["offset"] < a_offset and d["count"] == 2
    ]
    assert folded_behind, snapshots_of(s, "x")


def test_scheduled_compaction_of_a_partition_consumed_to_its_end_folds_by_the_wall_clock(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    two_hours_later: None,
) -> None:
    """Nothing waits in Kafka, so nothing can become late: rows an hour older than the
    worker's clock fold, although they are newer than the consumed time minus an hour."""
    s = make_settings()
    s = with_compaction(s, interval_s=0.2, min_rows=2, lateness_s=3600.0)
    ensure_topics(s)
    t = time.time_ns() // 1_000_000 - 10 * MIN_MS
    produce(s, [("y", "putAttrs", t + k, {"k": k}) for k in range(4)])
    start_worker(s)
    wait_until(
        lambda: any(d["count"] == 1 for d in snapshots_of(s, "y")),
        WAIT_S,
        lambda: f"y never folded: {snapshots_of(s, 'y')}",
    )
