"""A worker with a small memory budget and many partitions keeps its state caches within
the budget's part for them (``dyno_state_cache_bytes``), and loses nothing to eviction."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import Producer
from helpers import counter_total, running_partitions, wait_until

from dyno_stream.config import Settings, producer_config
from dyno_stream.core.flake import FlakeGenerator
from dyno_stream.core.ops import ItemState
from dyno_stream.store import DynoStore
from dyno_stream.store.budget import estimate_state_bytes

PARTITIONS = 16
ITEMS = 30_000
BATCH = 500


def _value(i: int) -> dict[str, Any]:
    return {"email": f"m-{i:07d}@example.com", "city": "Wellington", "n": i, "note": "x" * 20}


def _gauge(gauge: Any) -> float:
    value: float = gauge.collect()[0].samples[0].value
    return value


def test_many_partitions_keep_their_state_caches_within_a_small_budget(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], Any]
) -> None:
    s = make_settings(PARTITIONS, memory_mb=16, batch_size=BATCH)
    worker = start_worker(s)
    wait_until(
        lambda: len(running_partitions(worker.worker)) == PARTITIONS,
        60,
        lambda: f"running: {running_partitions(worker.worker)}",
    )
    metrics = worker.worker.metrics
    budget = _gauge(metrics.state_cache_budget_bytes)
    assert budget == int(16 * 1024 * 1024 * 0.6)

    seen: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            seen.append(_gauge(metrics.state_cache_bytes))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    gen = FlakeGenerator(node=3, pid=3)
    producer = Producer(producer_config(s))
    for i in range(ITEMS):
        name = f"m-{i:07d}"
        event = {"item": name, "op": "putAttrs", "ts": gen(), "change": _value(i)}
        producer.produce(s.topics.ops, orjson.dumps(event), name.encode())
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0

    def applied() -> float:
        return counter_total(metrics.ops_applied)

    wait_until(lambda: applied() >= ITEMS, 180, lambda: f"applied {applied():.0f} of {ITEMS}")
    done.set()
    sampler.join(5)
    worker.stop()

    # one batch's new states may stand in one store before it evicts: the rest never
    one_state = estimate_state_bytes(len(ItemState(_value(ITEMS), gen(), 1, "0" * 32, 1).encode()))
    assert max(seen) <= budget + BATCH * one_state, (max(seen), budget)
    # ... and the caches were full: eviction, not a small load, kept them there
    assert max(seen) > 0.8 * budget, (max(seen), budget)

    # nothing lost: every item, read from the stores the worker left, is what was written
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((s.worker.data_dir / s.topics.ops).iterdir()):
        with DynoStore(path) as store:
            found.update((name, item.value) for name, item in store.scan(lambda _n, _i: True))
    assert len(found) == ITEMS
    assert all(found[f"m-{i:07d}"] == _value(i) for i in range(ITEMS))
