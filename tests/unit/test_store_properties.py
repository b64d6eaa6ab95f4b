"""Property tests: the store against a plain reference replay written here from the spec.

The reference below deliberately does not import ``dyno_stream.core.ops``: it is its own simple
reading of the spec's op semantics and hash chain. Random op histories over a few item names
are delivered shuffled, in random batches through ``apply``, with redeliveries, conflicting ops
and flattens at random points; the store must read back exactly what the reference computes,
and the materialized state must always equal a replay of the rows the store holds.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dyno_stream.core.errors import ConflictError, DynoError, LateOpError, UnknownHashError
from dyno_stream.core.events import EventModel, Flatten, make_op
from dyno_stream.store import Changeset, DynoStore, HistoryChangeset, Item
from dyno_stream.store.budget import MemoryBudget

NAMES = ["a", "a/b", "ü%\t", "chilts"]
FIELDS = ["x", "y", "é"]
BASE_MS = 0x013D58C7276E
BOGUS_HASH = "0123456789abcdef0123456789abcdef"

Json = Any
RefOp = tuple[str, Json, str]  # op, change, change json


# -- the reference -----------------------------------------------------------------------------


def cjson(value: Json) -> str:
    """Compact JSON as the spec stores it: separators (",", ":"), raw UTF-8, key order kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def as_text(value: Json) -> str:
    return value if isinstance(value, str) else cjson(value)


def is_number(value: Json) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def ref_apply(value: dict[str, Json], op: str, change: Json) -> dict[str, Json]:
    """One op of the spec, on a copy of ``value``."""
    value = copy.deepcopy(value)
    change = copy.deepcopy(change)
    if op == "putItem":
        return dict(change)
    if op == "delItem":
        return {}
    if op == "putAttrs":
        for k, v in change.items():
            value[k] = v
        return value
    if op == "delAttrs":
        for k in change:
            value.pop(k, None)
        return value
    if op in ("incAttrBy", "decAttrBy"):
        by = change["by"] if op == "incAttrBy" else -change["by"]
        old = value.get(change["field"])
        value[change["field"]] = old + by if is_number(old) else by
        return value
    if op == "append":
        f = change["field"]
        value[f] = as_text(value[f]) + change["str"] if f in value else change["str"]
        return value
    if op == "addToSet":
        f = change["field"]
        members: dict[str, Json]
        if f not in value:
            members = {}
        elif isinstance(value[f], dict):
            members = dict(value[f])
        elif isinstance(value[f], list):
            # not in the spec: the implementation keeps a list's scalar members
            members = {as_text(v): True for v in value[f] if not isinstance(v, dict | list)}
        else:
            members = {as_text(value[f]): True}  # an existing scalar becomes a member
        members[as_text(change["value"])] = True
        value[f] = members
        return value
    raise AssertionError(op)


def link(prev: str, name: str, flake: str, op: str, change_json: str) -> str:
    data = f"{prev}\n{name}\n{flake}\n{op}\n{change_json}\n".encode()
    return hashlib.md5(data).hexdigest()


class RefItem:
    """An item as the spec defines it: every accepted op, and where its history row lies."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ops: dict[str, RefOp] = {}  # flake -> op; includes ops folded into history
        self.base: str | None = None  # flake of the history row

    def chain(self) -> list[tuple[str, str, dict[str, Json], int]]:
        """(flake, hash, value, changes) after each op in key order."""
        out = []
        h, value = "", {}
        for i, flake in enumerate(sorted(self.ops)):
            op, change, cj = self.ops[flake]
            value = ref_apply(value, op, change)
            h = link(h, self.name, flake, op, cj)
            out.append((flake, h, value, i + 1))
        return out

    def offer(self, flake: str, op: str, change: Json, cj: str) -> type[DynoError] | bool:
        """An op arrives: an error type, False for a duplicate, True when stored."""
        if self.base is not None and flake <= self.base:
            return LateOpError
        if flake in self.ops:
            if self.ops[flake][0] == op and self.ops[flake][2] == cj:
                return False
            return ConflictError
        self.ops[flake] = (op, change, cj)
        return True

    def flatten(self, hash_: str) -> type[DynoError] | bool:
        for flake, h, _, _ in self.chain():
            if h == hash_ and (self.base is None or flake >= self.base):
                if flake == self.base:
                    return False
                self.base = flake
                return True
        return UnknownHashError

    def flatten_before(self, flake: str) -> bool:
        older = [f for f in self.ops if f < flake]
        if not older or (self.base is not None and max(older) <= self.base):
            return False
        self.base = max(older)
        return True

    def expected(self) -> tuple[str | None, str | None, int, str | None, int]:
        """(value json or None, timestamp, changes, hash, count)."""
        chain = self.chain()
        if not chain:
            return None, None, 0, None, 0
        flake, h, value, changes = chain[-1]
        count = sum(1 for f in self.ops if self.base is None or f > self.base)
        count += 0 if self.base is None else 1
        return (cjson(value) if value else None), flake, changes, h, count

    def expected_history(self) -> list[tuple[str, str, str]]:
        """(flake, op, json) per row; a history row's json is ``<hash>:<changes>:<value>``."""
        out = []
        for flake, h, value, changes in self.chain():
            if self.base is not None and flake < self.base:
                continue
            if flake == self.base:
                out.append((flake, "history", f"{h}:{changes}:{cjson(value)}"))
            else:
                op, _, cj = self.ops[flake]
                out.append((flake, op, cj))
        return out


def observed(item: Item) -> tuple[str | None, str | None, int, str | None, int]:
    value = None if item.value is None else cjson(item.value)
    return value, item.timestamp, item.changes, item.hash, item.count


def observed_history(store: DynoStore, name: str) -> list[tuple[str, str, str]]:
    out = []
    for row in store.get_history(name):
        assert row.name == name
        if isinstance(row, HistoryChangeset):
            assert row.operation == "history"
            out.append((row.timestamp, "history", f"{row.hash}:{row.changes}:{cjson(row.value)}"))
        else:
            assert isinstance(row, Changeset)
            out.append((row.timestamp, row.operation, cjson(row.change)))
    return out


def replay_history(store: DynoStore, name: str) -> tuple[str | None, str | None, int, str | None]:
    """Our own replay of the rows the store holds (value json, timestamp, changes, hash)."""
    value: dict[str, Json] = {}
    h, changes, ts = "", 0, None
    for row in store.get_history(name):
        ts = row.timestamp
        if isinstance(row, HistoryChangeset):
            value, h, changes = copy.deepcopy(row.value), row.hash, row.changes
        else:
            value = ref_apply(value, row.operation, row.change)
            h = link(h, name, row.timestamp, row.operation, cjson(row.change))
            changes += 1
    return (cjson(value) if value else None), ts, changes, (h or None)


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
        self.ref = {name: RefItem(name) for name in NAMES}

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
            assert observed(item) == self.ref[name].expected(), name

    def pick_hash(self, data: st.DataObject, name: str) -> str:
        """A hash the item had at some point (maybe folded away since), or a bogus one."""
        chain = self.ref[name].chain()
        i = data.draw(st.integers(0, len(chain)), label="hash index")
        return chain[i][1] if i < len(chain) else BOGUS_HASH

    def run_batch(self, data: st.DataObject, entries: list[Op]) -> None:
        saved = copy.deepcopy(self.ref)
        events: list[EventModel] = []
        expected_errors: list[tuple[int, type[DynoError]]] = []
        touched: dict[str, None] = {}
        for name, flake, op, change in entries:
            if data.draw(st.integers(0, 9), label="flatten here") == 0:
                target = data.draw(st.sampled_from(NAMES), label="flatten item")
                h = self.pick_hash(data, target)
                got = self.ref[target].flatten(h)
                if got is True:
                    touched[target] = None
                elif got is not False:
                    expected_errors.append((len(events), got))
                events.append(Flatten(item=target, hash=h))
            model = make_op(op, name, change, flake)
            assert model.change_json == cjson(change)
            result = self.ref[name].offer(flake, op, change, model.change_json)
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
            want = self.ref[name].flatten(h)
            if want is True or want is False:
                assert self.store.flatten(name, h) is want
            else:
                with pytest.raises(want):
                    self.store.flatten(name, h)
        elif action == "flatten_before":
            flake = flake_of(data.draw(st.integers(0, 401), label="before"))
            want_b = self.ref[name].flatten_before(flake)
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
            ref = self.ref[name]
            item = self.store.get_item(name)
            # the rows the store holds are exactly the reference's rows ...
            assert observed_history(self.store, name) == ref.expected_history()
            # ... and the materialized state is their replay
            value, ts, changes, h = replay_history(self.store, name)
            assert (value, ts, changes, h) == observed(item)[:4]
            assert item.count == len(self.store.get_history(name))
        present = sorted(n for n in NAMES if self.ref[n].expected()[0] is not None)
        got = list(self.store.query(min(NAMES), max(NAMES)))
        assert [n for n, _ in got] == present
        for n, item in got:
            assert observed(item) == self.ref[n].expected()
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
                assert observed(one.get_item(name)) == observed(two.get_item(name))
            assert list(one.rows()) == list(two.rows())
            ref = {name: RefItem(name) for name in NAMES}
            for model in models:
                ref[model.item].offer(model.ts, model.op, model.change_value, model.change_json)
            for name in NAMES:
                assert observed(one.get_item(name)) == ref[name].expected()
        finally:
            for store in stores:
                store.close()
