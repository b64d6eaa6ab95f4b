"""One memory budget for every store of a worker (``dyno_stream.store.budget``): the state
caches' shares in bytes, eviction when the budget is divided among more stores, the LevelDB
options sized from it, and the size estimate against a measurement."""

from __future__ import annotations

import gc
import threading
import tracemalloc
from pathlib import Path

import orjson

from dyno_stream.core.flake import FlakeGenerator
from dyno_stream.core.keys import state_key
from dyno_stream.core.ops import ItemState
from dyno_stream.store import DynoStore
from dyno_stream.store.budget import (
    MAX_BLOCK_CACHE,
    MAX_WRITE_BUFFER,
    MIB,
    MIN_OPEN_FILES,
    MemoryBudget,
    estimate_state_bytes,
)

GEN = FlakeGenerator(node=7, pid=7)


def _value(i: int) -> dict[str, object]:
    """A flat item of about 100 bytes (bench_compare's distinct items)."""
    return {"email": f"m-{i:07d}@example.com", "city": "Wellington", "n": 10**6 + i, "note": "x"}


def _state_bytes() -> int:
    """The estimate of one state of ``_value``'s shape."""
    return estimate_state_bytes(len(ItemState(_value(0), GEN(), 1, "0" * 32, 1).encode()))


def _crash(store: DynoStore) -> None:
    """Close LevelDB under the store without its flush: what a killed process leaves."""
    store._db.close()
    store._db = None


def test_a_store_keeps_its_states_within_its_share_in_bytes(tmp_path: Path) -> None:
    one = _state_bytes()
    budget = MemoryBudget(64 * MIB, state_bytes=10 * one)
    store = DynoStore(tmp_path / "a", budget=budget, flush_interval_s=3600)
    for i in range(50):
        store.put_item(f"i{i:02d}", _value(i), ts=GEN())
    assert store._states.bytes <= budget.state_share == 10 * one
    assert store._states.bytes == sum(store._states.sizes.values())
    assert list(store._states.cache) == [f"i{i:02d}" for i in range(40, 50)]
    store.close()


def test_a_second_store_halves_the_first_ones_share_at_once_writing_its_dirty_states(
    tmp_path: Path,
) -> None:
    """The shares are re-divided when a store joins: the first store evicts down to its new
    share right then (not at its next write), and the dirty states it lets go reach their
    rows before they leave memory; a crash after that loses nothing."""
    one = _state_bytes()
    budget = MemoryBudget(64 * MIB, state_bytes=8 * one)
    a = DynoStore(tmp_path / "a", budget=budget, flush_interval_s=3600)
    for i in range(8):
        a.put_item(f"i{i}", _value(i), ts=GEN())
    assert len(a._states.cache) == 8 and len(a._states.dirty) == 8  # none written yet
    assert a._db.get(state_key("i0")) is None

    b = DynoStore(tmp_path / "b", budget=budget, flush_interval_s=3600)
    assert budget.state_share == 4 * one
    assert list(a._states.cache) == ["i4", "i5", "i6", "i7"]  # trimmed without a write of a
    for i in range(4):  # the evicted dirty states were written to their rows
        raw = a._db.get(state_key(f"i{i}"))
        assert raw is not None and ItemState.decode(raw).value == _value(i)

    for i in range(20):
        b.put_item(f"b{i}", _value(i), ts=GEN())
    assert a._states.bytes + b._states.bytes <= budget.state_bytes
    assert b._states.bytes <= budget.state_share

    _crash(a)  # the journal names the states still dirty: rebuilt from their rows at open
    b.close()
    with DynoStore(tmp_path / "a") as again:
        assert [again.get_item(f"i{i}").value for i in range(8)] == [_value(i) for i in range(8)]


def test_a_store_that_closes_gives_its_share_back(tmp_path: Path) -> None:
    one = _state_bytes()
    budget = MemoryBudget(64 * MIB, state_bytes=8 * one)
    a = DynoStore(tmp_path / "a", budget=budget)
    b = DynoStore(tmp_path / "b", budget=budget)
    assert budget.state_share == 4 * one
    b.close()
    assert budget.state_share == 8 * one
    for i in range(8):
        a.put_item(f"i{i}", _value(i), ts=GEN())
    assert len(a._states.cache) == 8
    a.close()


def test_the_partitions_held_divide_the_budget_before_their_stores_open(tmp_path: Path) -> None:
    """A worker assigned 64 partitions opens its first store with 1/64 of the budget, not
    all of it: the worker tells the budget how many it holds first."""
    # the README's figures for 256 MiB: 60% (161,061,273 bytes) to the state caches, the
    # other 107,374,183 to LevelDB; over 64 stores 2,516,582 and 1,677,721 bytes each, and a
    # quarter of LevelDB's share (419,430) each to the block cache and the write buffer
    budget = MemoryBudget.megabytes(256)
    assert (budget.state_bytes, budget.leveldb_bytes) == (161_061_273, 107_374_183)
    budget.hold(64)
    assert budget.state_share == 2_516_582
    first = DynoStore(tmp_path / "a", budget=budget)
    assert first._states.budget.state_share == 2_516_582
    options = budget.leveldb_options()
    assert options["write_buffer_size"] == 419_430
    assert options["lru_cache_size"] == 419_430
    assert options["max_open_files"] == MIN_OPEN_FILES == 74  # 419,430 / 32 KiB is 12: the least
    # alone in a large budget, a store gets LevelDB's defaults at most
    whole = MemoryBudget.megabytes(1024).leveldb_options()
    assert whole["write_buffer_size"] == MAX_WRITE_BUFFER == 4 * MIB
    assert whole["lru_cache_size"] == MAX_BLOCK_CACHE == 32 * MIB
    # too small a budget: a quarter of 16 MiB x 40% / 64 is 26,214 bytes, below the least
    small = MemoryBudget.megabytes(16)
    small.hold(64)
    assert small.leveldb_options()["write_buffer_size"] == 256 * 1024
    first.close()
    budget.hold(0)
    assert budget.state_share == 161_061_273


def test_trimming_from_another_thread_while_a_store_is_written_loses_nothing(
    tmp_path: Path,
) -> None:
    """Stores open and close on the restorer's threads while the loop writes: each eviction
    runs under its own store's lock, and nothing waits for a lock while holding another."""
    one = _state_bytes()
    budget = MemoryBudget(64 * MIB, state_bytes=40 * one)
    a = DynoStore(tmp_path / "a", budget=budget, flush_interval_s=3600)
    done = threading.Event()
    failed: list[BaseException] = []

    def churn() -> None:
        try:
            n = 0
            while not done.is_set():
                with DynoStore(tmp_path / f"c{n % 3}", budget=budget) as other:
                    other.put_item("x", {"n": n}, ts=GEN())
                n += 1
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    for i in range(600):
        a.put_attrs(f"i{i % 150:03d}", {"n": i}, ts=GEN())
    done.set()
    thread.join(30)
    assert not thread.is_alive() and not failed
    _crash(a)
    with DynoStore(tmp_path / "a") as again:
        assert [again.get_item(f"i{k:03d}").value for k in range(150)] == [
            {"n": 450 + k} for k in range(150)
        ]


def test_the_estimate_is_above_the_measured_size_of_flat_states() -> None:
    """The factor of ``estimate_state_bytes``, measured: decoded states held by name, as the
    cache holds them, take less memory than their estimate."""
    encoded = [ItemState(_value(i), GEN(), 1, "0" * 32, 1).encode() for i in range(5000)] + [
        ItemState({"n": i}, GEN(), 3, "1" * 32, 3).encode() for i in range(5000)
    ]
    names = [orjson.loads(orjson.dumps(f"item-{i:07d}")) for i in range(len(encoded))]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = {name: ItemState.decode(raw) for name, raw in zip(names, encoded, strict=True)}
        sizes = {
            name: estimate_state_bytes(len(raw)) for name, raw in zip(names, encoded, strict=True)
        }
        measured = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(held) == len(sizes) == 10_000
    estimated = sum(sizes.values())
    assert measured < estimated < 3 * measured
