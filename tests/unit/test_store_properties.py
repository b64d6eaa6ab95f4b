"""Property tests: the store against the reference model (bench/reference.py).

The reference imports nothing of ``dyno_stream``: it is its own reading of the spec's op
semantics, hash chain and flatten. Random op histories over a few item names are delivered
shuffled, in random batches through ``apply``, with redeliveries, conflicting ops and flattens
at random points; the store must read back exactly what the reference computes, hold exactly
the rows it says, and its materialized state must always equal a replay of those rows.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import reference as ref
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dyno_stream.core.errors import ConflictError, DynoError, LateOpError, UnknownHashError
from dyno_stream.core.events import EventModel, Flatten, make_op
from dyno_stream.store import DynoStore, Item
from dyno_stream.store.budget import MemoryBudget

NAMES = ["a", "a/b", "ü%\t", "chilts"]
FIELDS = ["x", "y", "é"]
BASE_MS = 0x013D58C7276E
BOGUS_HASH = "0123456789abcdef0123456789abcdef"

Json = Any
Summary = tuple[str | None, str | None, int, str | None, int, bool]

#: what the store does for each of the reference's outcomes: returns True (stored, folded),
#: False (a duplicate, nothing to fold) or raises
OFFERED: dict[str, bool | type[DynoError]] = {
    ref.STORED: True,
    ref.DUPLICATE: False,
    ref.LATE: LateOpError,
    ref.CONFLICT: ConflictError,
}
FLATTENED: dict[str, bool | type[DynoError]] = {
    ref.FOLDED: True,
    ref.NOTHING: False,
    ref.UNKNOWN_HASH: UnknownHashError,
}


def summary(s: ref.State | Item) -> Summary:
    """(value as compact JSON, so attribute order counts; timestamp, changes, hash, count,
    deleted)."""
    value = None if s.value is None else ref.compact(s.value)
    return value, s.timestamp, s.changes, s.hash, s.count, s.deleted


def expected(item: ref.ItemHistory) -> Summary:
    return summary(item.state())


def stored_rows(store: DynoStore, name: str) -> list[tuple[str, str, str]]:
    """(flake, op, text) of each row the store holds for ``name``, as stored."""
    out = []
    for key, text in store.rows(name):
        _, flake, op = key.rsplit("/", 2)
        out.append((flake, op, text))
    return out


def replay_rows(name: str, rows: list[tuple[str, str, str]]) -> Summary:
    """The reference's replay of the rows a store holds (a history row starts it)."""
    value: dict[str, Json] = {}
    h, changes, ts, deleted = "", 0, None, False
    for flake, op, text in rows:
        ts = flake
        if op == ref.HISTORY:
            h, n, folded = text.split(":", 2)
            changes, value = int(n), json.loads(folded) or {}
            deleted = folded == "null"
        else:
            value = ref.apply_op(value, op, json.loads(text))
            h = ref.chain_hash(h, name, flake, op, text)
            changes += 1
            deleted = op == "delItem"
    shown = ref.compact(value) if value else None
    return shown, ts, changes, (h or None), len(rows), deleted


# -- strategies --------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
fields = st.sampled_from(FIELDS)
attrs = st.dictionaries(st.one_of(fields, fields, st.text(max_size=2)), json_values, max_size=3)
numbers = st.integers(-100, 100) | st.floats(-100, 100, allow_nan=False, allow_infinity=False)


def _pair(op: str) -> Callable[[Json], tuple[str, Json]]:
    return lambda change: (op, change)


changes = st.one_of(
    attrs.map(_pair("putItem")),
    st.just(("delItem", {})),
    attrs.map(_pair("putAttrs")),
    st.lists(fields, max_size=2).map(_pair("delAttrs")),
    st.builds(lambda f, by: ("incAttrBy", {"field": f, "by": by}), fields, numbers),
    st.builds(lambda f, by: ("decAttrBy", {"field": f, "by": by}), fields, numbers),
    st.builds(lambda f, s: ("append", {"field": f, "str": s}), fields, st.text(max_size=4)),
    st.builds(lambda f, v: ("addToSet", {"field": f, "value": v}), fields, scalars),
)
op_lists = st.lists(st.tuples(st.sampled_from(NAMES), changes), min_size=1, max_size=24)


def flake_of(t: int) -> str:
    """Distinct t give distinct flakes, in t order (ms and counter both vary)."""
    return f"{BASE_MS + t // 4:012x}-{t % 4:04x}-188c-786ae2e1f629"


Op = tuple[str, str, str, Json]  # name, flake, op, change


# -- the property ------------------------------------------------------------------------------


class Harness:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = self.open()
        self.ref = {name: ref.ItemHistory(name) for name in NAMES}

    def open(self) -> DynoStore:
        # a cache smaller than the item set, so states are written behind by eviction too:
        # about two small states' worth
        return DynoStore(self.path, budget=MemoryBudget(8 * 1024 * 1024, state_bytes=2000))

    def reopen(self) -> None:
        self.store.close()
        self.store = self.open()

    def crash(self) -> None:
        """Lose every state written behind (the process dies): LevelDB keeps only batches."""
        self.store._db.close()
        self.store._db = None
        self.store = self.open()

    def check_items(self) -> None:
        for name in NAMES:
            item = self.store.get_item(name)
            assert item.name == name
            assert summary(item) == expected(self.ref[name]), name

    def pick_hash(self, data: st.DataObject, name: str) -> str:
        """A hash the item had at some point (maybe folded away since), or a bogus one."""
        steps = self.ref[name].steps()
        i = data.draw(st.integers(0, len(steps)), label="hash index")
        return steps[i].hash if i < len(steps) else BOGUS_HASH

    def run_batch(self, data: st.DataObject, entries: list[Op]) -> None:
        saved = copy.deepcopy(self.ref)
        events: list[EventModel] = []
        expected_errors: list[tuple[int, type[DynoError]]] = []
        touched: dict[str, None] = {}
        for name, flake, op, change in entries:
            if data.draw(st.integers(0, 9), label="flatten here") == 0:
                target = data.draw(st.sampled_from(NAMES), label="flatten item")
                h = self.pick_hash(data, target)
                # compaction's flatten: rows older than a cut-off, not past the hash it
                # published (which may lie after the cut-off)
                before = None
                if data.draw(st.booleans(), label="before a cut-off"):
                    before = flake_of(data.draw(st.integers(0, 401), label="cut-off"))
                outcome = (
                    self.ref[target].flatten(h)
                    if before is None
                    else self.ref[target].flatten_before(before, h)
                )
                got = FLATTENED[outcome]
                if got is True:
                    touched[target] = None
                elif got is not False:
                    expected_errors.append((len(events), got))
                events.append(Flatten(item=target, hash=h, before=before))
            model = make_op(op, name, change, flake)
            assert model.change_json == ref.change_json(op, change)
            result = OFFERED[self.ref[name].offer(flake, op, change)]
            if result is True:
                touched[name] = None
            elif result is not False:
                expected_errors.append((len(events), result))
            events.append(model)

        for _, err in expected_errors:
            event(f"expected {err.__name__}")
        if len(touched) < len(events) - len(expected_errors):
            event("redelivery or no-op flatten")
        strict = data.draw(st.booleans(), label="strict")
        if strict and expected_errors:
            rows = list(self.store.rows())
            with pytest.raises(expected_errors[0][1]):
                self.store.apply(events, internal_rows={b"\x00meta\x00test": b"strict"})
            self.ref = saved  # atomic: nothing of the batch was written
            event("strict batch rolled back")
            assert list(self.store.rows()) == rows
            assert self.store.get_meta(b"\x00meta\x00test") != b"strict"
        elif strict:
            assert self.store.apply(events) == list(touched)
        else:
            errors: list[tuple[int, type[DynoError]]] = []

            def on_error(i: int, event: EventModel, err: DynoError) -> None:
                assert event is events[i]
                errors.append((i, type(err)))

            marker = str(len(events)).encode()
            got = self.store.apply(
                events, internal_rows={b"\x00meta\x00test": marker}, on_error=on_error
            )
            assert errors == expected_errors
            assert got == list(touched)
            assert self.store.get_meta(b"\x00meta\x00test") == marker
        self.check_items()

    def between_batches(self, data: st.DataObject) -> None:
        action = data.draw(
            st.sampled_from(["none", "none", "flatten", "flatten_before", "reopen", "crash"]),
            label="act",
        )
        name = data.draw(st.sampled_from(NAMES), label="item")
        if action == "flatten":
            h = self.pick_hash(data, name)
            want = FLATTENED[self.ref[name].flatten(h)]
            if want is True or want is False:
                assert self.store.flatten(name, h) is want
            else:
                with pytest.raises(want):
                    self.store.flatten(name, h)
        elif action == "flatten_before":
            flake = flake_of(data.draw(st.integers(0, 401), label="before"))
            want_b = FLATTENED[self.ref[name].flatten_before(flake)]
            assert self.store.flatten_before(name, flake) is want_b
        elif action == "reopen":
            self.reopen()
        elif action == "crash":
            self.crash()
        self.check_items()

    def final_checks(self) -> None:
        self.reopen()
        self.check_items()
        for name in NAMES:
            item = self.store.get_item(name)
            # the rows the store holds are exactly the reference's rows ...
            rows = stored_rows(self.store, name)
            assert rows == self.ref[name].rows()
            # ... and the materialized state is their replay
            assert replay_rows(name, rows) == summary(item)
            assert item.count == len(self.store.get_history(name))
        present = sorted(n for n in NAMES if self.ref[n].state().value is not None)
        got = list(self.store.query(min(NAMES), max(NAMES)))
        assert [n for n, _ in got] == present
        for n, item in got:
            assert summary(item) == expected(self.ref[n])
        assert [n for n, _ in self.store.scan(lambda n, i: True)] == present
        # internal rows never show up as item rows
        assert all(not k.startswith("\x00") for k, _ in self.store.rows())


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(ops=op_lists, data=st.data())
def test_store_matches_reference_replay(ops: list[tuple[str, tuple[str, Json]]], data: Any) -> None:
    times = data.draw(
        st.lists(st.integers(0, 400), min_size=len(ops), max_size=len(ops), unique=True),
        label="times",
    )
    all_ops: list[Op] = [
        (name, flake_of(t), op, change) for (name, (op, change)), t in zip(ops, times, strict=True)
    ]
    queue: list[Op] = list(data.draw(st.permutations(all_ops), label="order"))
    for _ in range(data.draw(st.integers(0, 4), label="redeliveries")):
        again = data.draw(st.sampled_from(all_ops))
        queue.insert(data.draw(st.integers(0, len(queue))), again)
    for _ in range(data.draw(st.integers(0, 2), label="conflicts")):
        name, flake, _, _ = data.draw(st.sampled_from(all_ops))
        clash: Op = (name, flake, "putAttrs", {"conflict": flake})
        queue.insert(data.draw(st.integers(0, len(queue))), clash)

    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(Path(tmp) / "db")
        try:
            while queue:
                size = data.draw(st.integers(1, 6), label="batch size")
                batch, queue = queue[:size], queue[size:]
                h.run_batch(data, batch)
                h.between_batches(data)
            h.final_checks()
            if any(r.base is not None for r in h.ref.values()):
                event("ends with a history row")
        finally:
            h.store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=op_lists, data=st.data())
def test_same_ops_any_order_same_store(ops: list[tuple[str, tuple[str, Json]]], data: Any) -> None:
    """Two stores holding the same ops hold the same items, hashes and rows."""
    times = data.draw(
        st.lists(st.integers(0, 400), min_size=len(ops), max_size=len(ops), unique=True)
    )
    models = [
        make_op(op, name, change, flake_of(t))
        for (name, (op, change)), t in zip(ops, times, strict=True)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        stores = [DynoStore(Path(tmp) / "one"), DynoStore(Path(tmp) / "two")]
        try:
            for store in stores:
                order = data.draw(st.permutations(models))
                while order:
                    size = data.draw(st.integers(1, 5))
                    store.apply(order[:size])
                    order = order[size:]
            one, two = stores
            for name in NAMES:
                assert summary(one.get_item(name)) == summary(two.get_item(name))
            assert list(one.rows()) == list(two.rows())
            items = {name: ref.ItemHistory(name) for name in NAMES}
            for model in models:
                items[model.item].offer(model.ts, model.op, model.change_value)
            for name in NAMES:
                assert summary(one.get_item(name)) == expected(items[name])
        finally:
            for store in stores:
                store.close()
