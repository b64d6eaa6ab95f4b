"""Compaction never makes an on-time op late, whatever the worker's lag (issue 18).

The README promises that an op reaching Kafka within the allowed lateness (one hour) of its
flake's time is applied. Each scenario here is a worker two hours behind its partition: the
ops were produced with Kafka timestamps (CreateTime) two hours ago, as if the worker had been
down or behind a large backlog since, and the wall clock is today's. A fold measured by the
wall clock alone would fold op B (flake t+5 min) while op A (flake t, reached Kafka at t+10
min: on time) still waits in Kafka, and A would become a ``late`` dead letter.

Real broker, real worker, LevelDB on disk.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer
from helpers import read_topic, wait_until
from rich.console import Console

from dyno_stream.checkpoint import H_REASON
from dyno_stream.compaction import compact_offline
from dyno_stream.config import CompactionSettings, Settings, producer_config
from dyno_stream.flake import FlakeGenerator
from dyno_stream.store import DynoStore
from dyno_stream.topics import ensure_topics

MIN_MS = 60_000
WAIT_S = 60.0


def produce(s: Settings, ops: list[tuple[str, str, int, Any, int]]) -> None:
    """Raw op events ``(item, op, flake ms, change, Kafka timestamp ms)``, in this order."""
    producer = Producer(producer_config(s))
    gens: dict[int, FlakeGenerator] = {}
    for item, op, flake_ms, change, sent_ms in ops:
        gen = gens.setdefault(flake_ms, FlakeGenerator(node=1, clock=lambda ms=flake_ms: ms))
        event = {"item": item, "op": op, "ts": gen.next(), "change": change}
        producer.produce(s.topics.ops, json.dumps(event).encode(), item.encode(), timestamp=sent_ms)
    assert producer.flush(30) == 0


def item_snapshot(s: Settings, name: str) -> dict[str, Any] | None:
    """The item's newest snapshot (most changes) on the snapshot topic."""
    snaps = [
        json.loads(r.value or b"null")
        for r in read_topic(s, s.topics.snapshots)
        if r.key == name.encode()
    ]
    return max(snaps, key=lambda d: d["changes"], default=None)


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
        lambda: f"{name} never reached {changes} changes: {item_snapshot(s, name)}",
    )
    snap = item_snapshot(s, name)
    assert snap is not None
    return snap


def test_offline_compaction_of_a_lagging_store_keeps_an_on_time_op_placeable(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
) -> None:
    s = make_settings()
    ensure_topics(s)
    t = int(time.time() * 1000) - 120 * MIN_MS  # two hours ago
    produce(
        s,
        [
            ("x", "putItem", t - 60 * MIN_MS, {"v": 0}, t - 60 * MIN_MS),  # old: may be folded
            ("x", "putAttrs", t + 5 * MIN_MS, {"b": 1}, t + 5 * MIN_MS),  # op B
        ],
    )
    worker = start_worker(s)
    wait_for_changes(s, "x", 2)
    worker.stop()

    produce(s, [("x", "putAttrs", t, {"a": 1}, t + 10 * MIN_MS)])  # op A: on time, unconsumed
    policy = CompactionSettings(min_rows=2, lateness_s=3600)
    store = s.worker.data_dir / s.topics.ops / "0000"
    summary = compact_offline(store, policy, Console(file=io.StringIO()))
    # the pass did run: the old row is folded, B (newer than the consumed time minus an hour)
    # is not
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
) -> None:
    # one event a batch and a pass every 50 ms: many passes run while the worker is between
    # op B and op A in the backlog
    s = make_settings(batch_size=1)
    s = s.model_copy(
        update={
            "compaction": s.compaction.model_copy(
                update={"interval_s": 0.05, "min_rows": 2, "lateness_s": 3600.0}
            )
        }
    )
    ensure_topics(s)
    t = int(time.time() * 1000) - 120 * MIN_MS
    filler = [
        (f"f-{i % 20}", "putAttrs", t + 6 * MIN_MS, {"n": i}, t + 6 * MIN_MS) for i in range(3000)
    ]
    produce(
        s,
        [
            ("x", "putItem", t - 60 * MIN_MS, {"v": 0}, t - 60 * MIN_MS),
            ("x", "putAttrs", t + 5 * MIN_MS, {"b": 1}, t + 5 * MIN_MS),  # op B
            *filler,
            ("x", "putAttrs", t, {"a": 1}, t + 10 * MIN_MS),  # op A, on time
        ],
    )
    worker = start_worker(s)
    snap = wait_for_changes(s, "x", 3)
    assert snap["value"] == {"v": 0, "b": 1, "a": 1}
    assert late_letters(s) == []
    # and the passes did fold while the worker was behind: every filler item's rows are
    # newer than its consumed time minus an hour, x's first row is not
    assert worker.worker.metrics.compacted._value.get() >= 1
