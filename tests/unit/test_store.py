"""DynoStore unit tests: every example of the store spec, persistence, level-dyno stores."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import plyvel
import pytest

from dyno_stream.core.errors import (
    ConflictError,
    DynoError,
    InvalidChangeError,
    InvalidFlakeError,
    InvalidNameError,
    LateOpError,
    StoreClosedError,
    StoreError,
    UnknownHashError,
    ValidationError,
)
from dyno_stream.core.events import Flatten, make_op, parse_event
from dyno_stream.core.flake import FlakeGenerator, format_flake
from dyno_stream.core.ops import ItemState
from dyno_stream.store import Changeset, DynoStore, HistoryChangeset, Item
from dyno_stream.store.budget import MemoryBudget, estimate_state_bytes
from dyno_stream.store.write_batch import WriteBatch

SEED = "013d58c7276e-0000-188c-786ae2e1f629"
SEED_MS = 0x013D58C7276E


def F(i: int) -> str:
    """The i-th flake after the seed example's (same pid and node)."""
    return format_flake(SEED_MS + i, 0, 0x188C, 0x786AE2E1F629)


def md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def link(prev: str, name: str, flake: str, op: str, change: Any) -> str:
    change_json = json.dumps(change, separators=(",", ":"), ensure_ascii=False)
    return md5(f"{prev}\n{name}\n{flake}\n{op}\n{change_json}\n")


def dump(store: DynoStore) -> list[str]:
    return [f"{k} = {v}" for k, v in store.rows()]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DynoStore]:
    s = DynoStore(tmp_path / "db")
    yield s
    s.close()


def seed(store: DynoStore) -> None:
    store.put_item("chilts", {"nick": "chilts", "email": "me@example.com"}, ts=F(0))
    store.del_attrs("chilts", ["email"], ts=F(1))
    store.put_attrs("chilts", {"name": "Andy Chilton"}, ts=F(2))


# -- the seed example --------------------------------------------------------------------------


def test_seed_example(store: DynoStore) -> None:
    seed(store)
    item = store.get_item("chilts")
    assert item.value == {"nick": "chilts", "name": "Andy Chilton"}
    assert list(item.value) == ["nick", "name"]
    assert item.timestamp == F(2)
    assert item.changes == 3
    assert item.count == 3
    h = link("", "chilts", F(0), "putItem", {"nick": "chilts", "email": "me@example.com"})
    h = link(h, "chilts", F(1), "delAttrs", ["email"])
    h = link(h, "chilts", F(2), "putAttrs", {"name": "Andy Chilton"})
    assert item.hash == h
    assert dump(store) == [
        f'chilts/{SEED}/putItem = {{"nick":"chilts","email":"me@example.com"}}',
        f'chilts/{F(1)}/delAttrs = ["email"]',
        f'chilts/{F(2)}/putAttrs = {{"name":"Andy Chilton"}}',
    ]


def test_seed_example_flatten_to_last_hash_leaves_one_history_row(store: DynoStore) -> None:
    seed(store)
    before = store.get_item("chilts")
    assert store.flatten("chilts", before.hash or "") is True
    after = store.get_item("chilts")
    assert (after.value, after.hash, after.changes, after.timestamp) == (
        before.value,
        before.hash,
        before.changes,
        before.timestamp,
    )
    assert after.count == 1
    assert dump(store) == [
        f'chilts/{F(2)}/history = {before.hash}:3:{{"nick":"chilts","name":"Andy Chilton"}}'
    ]
    history = store.get_history("chilts")
    assert history == [
        HistoryChangeset(
            "chilts", F(2), {"nick": "chilts", "name": "Andy Chilton"}, before.hash or "", 3
        )
    ]
    assert history[0].operation == "history"
    # flattening again is a no-op
    assert store.flatten("chilts", before.hash or "") is False
    assert dump(store)[0].startswith(f"chilts/{F(2)}/history = ")
    assert store.get_item("chilts") == after


def test_known_hash_of_one_put_item(store: DynoStore) -> None:
    store.put_item("chilts", {"nick": "chilts"}, ts=SEED)
    item = store.get_item("chilts")
    assert item.hash == "2b847185c137c7f8ff54bf5ebf72bb6e"
    assert item == Item("chilts", {"nick": "chilts"}, SEED, 1, item.hash, 1)


def test_missing_item_reads_as_absent(store: DynoStore) -> None:
    item = store.get_item("nobody")
    assert (item.value, item.timestamp, item.changes, item.hash, item.count) == (
        None,
        None,
        0,
        None,
        0,
    )
    assert store.get_history("nobody") == []


# -- every op through the store ----------------------------------------------------------------


def test_api_methods_return_the_flake_stored_under(tmp_path: Path) -> None:
    gen = FlakeGenerator(node=0x786AE2E1F629, pid=0x188C, clock=lambda: SEED_MS)
    with DynoStore(tmp_path / "db", flakes=gen) as s:
        got = [
            s.put_item("x", {"a": 1}),
            s.put_attrs("x", {"b": 2}),
            s.del_attrs("x", ["b"]),
            s.inc_attr_by("x", "n"),
            s.dec_attr_by("x", "n", 3),
            s.append("x", "s", "hi"),
            s.add_to_set("x", "t", "red"),
            s.del_item("x"),
            s.put_item("x", {"z": 0}, ts=F(5)),
        ]
        assert got[0] == SEED
        assert got[-1] == F(5)
        assert got == sorted(got)
        assert len(set(got)) == len(got)
        stamps = [c.timestamp for c in s.get_history("x")]
        assert stamps == got
        assert [c.operation for c in s.get_history("x")] == [
            "putItem",
            "putAttrs",
            "delAttrs",
            "incAttrBy",
            "decAttrBy",
            "append",
            "addToSet",
            "delItem",
            "putItem",
        ]
        assert s.get_item("x").value == {"z": 0}
        assert s.get_item("x").changes == 9


def test_put_item_replaces(store: DynoStore) -> None:
    store.put_item("x", {"a": 1, "b": 2}, ts=F(0))
    store.put_item("x", {"c": {"d": [1, 2.5]}}, ts=F(1))
    assert store.get_item("x").value == {"c": {"d": [1, 2.5]}}


def test_del_item_makes_item_absent_but_keeps_history(store: DynoStore) -> None:
    store.put_item("x", {"a": 1}, ts=F(0))
    store.del_item("x", ts=F(1))
    item = store.get_item("x")
    assert item.value is None
    assert item.timestamp == F(1)
    assert item.changes == 2
    assert item.count == 2
    assert item.hash == link(link("", "x", F(0), "putItem", {"a": 1}), "x", F(1), "delItem", {})
    assert dump(store)[-1] == f"x/{F(1)}/delItem = {{}}"
    store.put_attrs("x", {"b": 1}, ts=F(2))
    assert store.get_item("x").value == {"b": 1}


def test_empty_put_item_reads_as_absent(store: DynoStore) -> None:
    store.put_item("x", {}, ts=F(0))
    item = store.get_item("x")
    assert item.value is None
    assert item.count == 1
    assert item.timestamp == F(0)


def test_put_and_del_attrs(store: DynoStore) -> None:
    store.put_attrs("x", {"a": 1, "b": 2}, ts=F(0))
    store.put_attrs("x", {"b": 3, "c": None}, ts=F(1))
    assert store.get_item("x").value == {"a": 1, "b": 3, "c": None}
    store.del_attrs("x", ["a", "nope"], ts=F(2))
    assert store.get_item("x").value == {"b": 3, "c": None}
    store.del_attrs("x", ["b", "c"], ts=F(3))
    assert store.get_item("x").value is None


def test_inc_and_dec(store: DynoStore) -> None:
    store.put_item("x", {"s": "text", "b": True}, ts=F(0))
    store.inc_attr_by("x", "n", 5, ts=F(1))  # missing -> by
    store.dec_attr_by("x", "m", 2, ts=F(2))  # missing -> -by
    store.inc_attr_by("x", "s", 3, ts=F(3))  # non-numeric -> by
    store.dec_attr_by("x", "b", 4, ts=F(4))  # a bool is not numeric -> -by
    store.inc_attr_by("x", "n", 0.5, ts=F(5))
    store.dec_attr_by("x", "m", ts=F(6))  # by defaults to 1
    assert store.get_item("x").value == {"s": 3, "b": -4, "n": 5.5, "m": -3}


def test_append(store: DynoStore) -> None:
    store.put_item("x", {"n": 5, "o": {"k": "é"}, "z": None}, ts=F(0))
    store.append("x", "s", "ab", ts=F(1))  # missing -> the text
    store.append("x", "s", "cd", ts=F(2))
    store.append("x", "n", "x", ts=F(3))  # 5 -> "5" first
    store.append("x", "o", "!", ts=F(4))
    store.append("x", "z", "?", ts=F(5))
    assert store.get_item("x").value == {"n": "5x", "o": '{"k":"é"}!', "z": "null?", "s": "abcd"}


def test_add_to_set(store: DynoStore) -> None:
    store.put_item("x", {"old": "red", "num": 7}, ts=F(0))
    store.add_to_set("x", "tags", "red", ts=F(1))
    store.add_to_set("x", "tags", "blue", ts=F(2))
    store.add_to_set("x", "tags", "red", ts=F(3))
    store.add_to_set("x", "old", "green", ts=F(4))  # existing scalar becomes a member
    store.add_to_set("x", "num", 8, ts=F(5))
    store.add_to_set("x", "misc", True, ts=F(6))
    store.add_to_set("x", "misc", None, ts=F(7))
    store.add_to_set("x", "misc", 1.5, ts=F(8))
    assert store.get_item("x").value == {
        "old": {"red": True, "green": True},
        "num": {"7": True, "8": True},
        "tags": {"red": True, "blue": True},
        "misc": {"true": True, "null": True, "1.5": True},
    }


def test_unicode_values_stored_as_raw_utf8(store: DynoStore) -> None:
    store.put_item("ü", {"name": "Zoë", "城市": "東京"}, ts=F(0))
    assert dump(store) == [f'ü/{F(0)}/putItem = {{"name":"Zoë","城市":"東京"}}']
    assert store.get_item("ü").value == {"name": "Zoë", "城市": "東京"}


# -- history, query, scan ----------------------------------------------------------------------


def test_get_history(store: DynoStore) -> None:
    seed(store)
    history = store.get_history("chilts")
    assert history == [
        Changeset("chilts", F(0), "putItem", {"nick": "chilts", "email": "me@example.com"}),
        Changeset("chilts", F(1), "delAttrs", ["email"]),
        Changeset("chilts", F(2), "putAttrs", {"name": "Andy Chilton"}),
    ]
    first = history[0]
    assert isinstance(first, Changeset)
    assert (first.name, first.timestamp, first.operation) == ("chilts", F(0), "putItem")


def test_history_after_partial_flatten(store: DynoStore) -> None:
    seed(store)
    h0 = link("", "chilts", F(0), "putItem", {"nick": "chilts", "email": "me@example.com"})
    h1 = link(h0, "chilts", F(1), "delAttrs", ["email"])
    assert store.flatten("chilts", h1) is True
    history = store.get_history("chilts")
    assert history == [
        HistoryChangeset("chilts", F(1), {"nick": "chilts"}, h1, 2),
        Changeset("chilts", F(2), "putAttrs", {"name": "Andy Chilton"}),
    ]
    assert dump(store) == [
        f'chilts/{F(1)}/history = {h1}:2:{{"nick":"chilts"}}',
        f'chilts/{F(2)}/putAttrs = {{"name":"Andy Chilton"}}',
    ]
    item = store.get_item("chilts")
    assert item.value == {"nick": "chilts", "name": "Andy Chilton"}
    assert item.changes == 3
    assert item.count == 2
    assert item.timestamp == F(2)
    assert item.hash == link(h1, "chilts", F(2), "putAttrs", {"name": "Andy Chilton"})


def test_query_range_inclusive_in_name_order(store: DynoStore) -> None:
    for i, name in enumerate(["b", "a", "d", "c/x", "c", "e", "ä"]):
        store.put_item(name, {"i": i}, ts=F(i))
    store.del_item("d", ts=F(10))
    it = store.query("b", "e")
    assert iter(it) is it
    got = list(it)
    assert [n for n, _ in got] == ["b", "c", "c/x", "e"]  # d absent: skipped
    assert all(isinstance(item, Item) and item.name == n for n, item in got)
    assert dict(got)["c/x"].value == {"i": 3}
    assert [n for n, _ in store.query("a", "a")] == ["a"]
    assert [n for n, _ in store.query("a", "ä")] == ["a", "b", "c", "c/x", "e", "ä"]
    assert list(store.query("f", "z")) == []
    assert list(store.query("e", "b")) == []


def test_scan(store: DynoStore) -> None:
    for i in range(6):
        store.put_item(f"n{i}", {"i": i}, ts=F(i))
    store.del_item("n4", ts=F(10))
    seen: list[tuple[str, Item]] = []

    def pred(name: str, item: Item) -> bool:
        seen.append((name, item))
        return item.value is not None and item.value["i"] % 2 == 0

    got = list(store.scan(pred))
    assert [n for n, _ in got] == ["n0", "n2"]
    assert all(item.value is not None for _, item in seen)
    assert {n for n, _ in seen} == {"n0", "n1", "n2", "n3", "n5"}


# -- flatten -----------------------------------------------------------------------------------


def _five(store: DynoStore, name: str = "x") -> list[str]:
    """Five ops on ``name``; returns the chain hash after each."""
    changes: list[tuple[str, Any]] = [
        ("putItem", {"a": 1}),
        ("incAttrBy", {"field": "a", "by": 2}),
        ("putAttrs", {"b": "x"}),
        ("append", {"field": "b", "str": "y"}),
        ("addToSet", {"field": "c", "value": 1}),
    ]
    hashes: list[str] = []
    h = ""
    for i, (op, change) in enumerate(changes):
        store.apply([make_op(op, name, change, F(i))])
        h = link(h, name, F(i), op, change)
        hashes.append(h)
    assert store.get_item(name).hash == h
    return hashes


def test_flatten_middle_hash_keeps_later_rows(store: DynoStore) -> None:
    hashes = _five(store)
    before = store.get_item("x")
    rows_after_2 = dump(store)[3:]
    assert store.flatten("x", hashes[2]) is True
    after = store.get_item("x")
    assert (after.value, after.hash, after.changes, after.timestamp) == (
        before.value,
        before.hash,
        before.changes,
        before.timestamp,
    )
    assert after.count == 3
    assert dump(store) == [f'x/{F(2)}/history = {hashes[2]}:3:{{"a":3,"b":"x"}}', *rows_after_2]
    # flatten further: the history row folds in too
    assert store.flatten("x", hashes[3]) is True
    assert dump(store)[0] == f'x/{F(3)}/history = {hashes[3]}:4:{{"a":3,"b":"xy"}}'
    assert store.get_item("x").count == 2
    # the hash of a folded row is no longer in the chain
    with pytest.raises(UnknownHashError):
        store.flatten("x", hashes[1])
    # flattening to the history row's own hash again is a no-op
    assert store.flatten("x", hashes[3]) is False
    assert store.get_item("x") == Item("x", before.value, F(4), 5, before.hash, 2)


def test_flatten_first_row(store: DynoStore) -> None:
    hashes = _five(store)
    assert store.flatten("x", hashes[0]) is True
    assert dump(store)[0] == f'x/{F(0)}/history = {hashes[0]}:1:{{"a":1}}'
    assert store.get_item("x").count == 5
    assert store.get_item("x").hash == hashes[-1]


def test_flatten_unknown_hash_raises_and_changes_nothing(store: DynoStore) -> None:
    _five(store)
    rows, item = dump(store), store.get_item("x")
    with pytest.raises(UnknownHashError) as info:
        store.flatten("x", "0" * 32)
    # the error names the item and the hash, and is the dead letter reason for it
    assert str(info.value) == f"'x': no row of its history has hash {'0' * 32}"
    assert info.value.reason == "unknown-hash"
    with pytest.raises(UnknownHashError, match="'nobody'"):
        store.flatten("nobody", "0" * 32)
    assert dump(store) == rows
    assert store.get_item("x") == item


def test_flatten_via_apply(store: DynoStore) -> None:
    hashes = _five(store)
    event = parse_event(json.dumps({"op": "flatten", "item": "x", "hash": hashes[4]}))
    assert store.apply([event]) == ["x"]
    assert store.get_item("x").count == 1
    assert store.apply([Flatten(item="x", hash=hashes[4])]) == []  # no-op the second time
    with pytest.raises(UnknownHashError):
        store.apply([Flatten(item="x", hash="f" * 32)])


def test_flatten_before(store: DynoStore) -> None:
    hashes = _five(store)
    before = store.get_item("x")
    assert store.flatten_before("x", F(0)) is False  # nothing older
    assert store.flatten_before("x", F(3)) is True  # folds F(0)..F(2), not F(3)
    assert dump(store)[0] == f'x/{F(2)}/history = {hashes[2]}:3:{{"a":3,"b":"x"}}'
    assert len(dump(store)) == 3
    after = store.get_item("x")
    assert (after.value, after.hash, after.changes, after.timestamp, after.count) == (
        before.value,
        before.hash,
        before.changes,
        before.timestamp,
        3,
    )
    assert store.flatten_before("x", F(3)) is False  # again: only the history row is older
    assert store.flatten_before("x", F(1)) is False  # all older rows are folded already
    assert store.flatten_before("x", F(99)) is True
    assert store.get_item("x").count == 1
    assert dump(store) == [f'x/{F(4)}/history = {hashes[4]}:5:{{"a":3,"b":"xy","c":{{"1":true}}}}']


def test_flatten_before_refuses_bad_flake(store: DynoStore) -> None:
    _five(store)
    rows = dump(store)
    for bad in ["soon", "013D58C7276E-0000-188C-786AE2E1F629", F(3)[:-1]]:
        with pytest.raises(InvalidFlakeError):
            store.flatten_before("x", bad)
    assert dump(store) == rows


def test_flatten_before_refuses_flake_with_trailing_newline(store: DynoStore) -> None:
    _five(store)
    rows = dump(store)
    with pytest.raises(InvalidFlakeError):
        store.flatten_before("x", F(3) + "\n")
    assert dump(store) == rows


# -- late ops, duplicates, conflicts, order ----------------------------------------------------


def test_late_op_refused_nothing_stored(store: DynoStore) -> None:
    hashes = _five(store)
    store.flatten("x", hashes[2])
    rows, item = dump(store), store.get_item("x")
    for ts in [F(2), F(1), format_flake(SEED_MS + 1, 5, 1, 1)]:
        with pytest.raises(LateOpError):
            store.put_attrs("x", {"late": True}, ts=ts)
    # a redelivery of a folded op is late too
    with pytest.raises(LateOpError):
        store.put_item("x", {"a": 1}, ts=F(0))
    assert dump(store) == rows
    assert store.get_item("x") == item
    # an op after the history row but before later rows is still placed
    store.put_attrs("x", {"mid": 1}, ts=format_flake(SEED_MS + 2, 1, 0, 0))
    assert store.get_item("x").value == {"a": 3, "b": "xy", "mid": 1, "c": {"1": True}}
    assert store.get_item("x").changes == 6


def test_duplicate_op_is_a_no_op(store: DynoStore) -> None:
    _five(store)
    rows, item = dump(store), store.get_item("x")
    assert store.apply([make_op("incAttrBy", "x", {"field": "a", "by": 2}, F(1))]) == []
    assert store.apply([make_op("addToSet", "x", {"field": "c", "value": 1}, F(4))]) == []
    store.put_item("x", {"a": 1}, ts=F(0))
    assert dump(store) == rows
    assert store.get_item("x") == item


def test_conflicting_op_at_same_flake(store: DynoStore) -> None:
    _five(store)
    rows, item = dump(store), store.get_item("x")
    with pytest.raises(ConflictError):
        store.inc_attr_by("x", "a", 3, ts=F(1))  # same op, other change
    with pytest.raises(ConflictError):
        store.put_attrs("x", {"a": 2}, ts=F(1))  # other op
    with pytest.raises(ConflictError):
        store.put_item("x", {"a": 1, "z": 0}, ts=F(4))  # the latest row
    assert dump(store) == rows
    assert store.get_item("x") == item


def test_conflict_within_one_batch(store: DynoStore) -> None:
    with pytest.raises(ConflictError):
        store.apply([make_op("putItem", "y", {"a": 1}, F(0)), make_op("delItem", "y", {}, F(0))])
    assert dump(store) == []


def test_arrival_order_does_not_matter(tmp_path: Path) -> None:
    events = [
        make_op("putItem", "x", {"n": 1, "s": "a"}, F(0)),
        make_op("incAttrBy", "x", {"field": "n", "by": 2.5}, F(1)),
        make_op("append", "x", {"field": "s", "str": "b"}, F(2)),
        make_op("delAttrs", "x", ["n"], F(3)),
        make_op("decAttrBy", "x", {"field": "n", "by": 1}, F(4)),
        make_op("addToSet", "x", {"field": "s", "value": "c"}, F(5)),
    ]
    with DynoStore(tmp_path / "a") as a, DynoStore(tmp_path / "b") as b:
        a.apply(events)
        for e in [events[5], events[2], events[0], events[4], events[1], events[3]]:
            b.apply([e])
        assert a.get_item("x") == b.get_item("x")
        assert b.get_item("x").value == {"s": {"ab": True, "c": True}, "n": -1}
        assert list(a.rows()) == list(b.rows())


# -- batches: atomicity, on_error, extra rows --------------------------------------------------


def test_batch_with_late_third_op_writes_nothing(store: DynoStore) -> None:
    hashes = _five(store, "x")
    store.flatten("x", hashes[3])
    store.put_item("y", {"k": 1}, ts=F(0))
    rows, x, y = dump(store), store.get_item("x"), store.get_item("y")
    batch = [
        make_op("putAttrs", "y", {"k": 2}, F(1)),
        make_op("putAttrs", "x", {"new": 1}, F(10)),
        make_op("putAttrs", "x", {"late": 1}, F(2)),  # at/before the history row
        make_op("putAttrs", "z", {"k": 3}, F(11)),
    ]
    with pytest.raises(LateOpError):
        store.apply(batch, internal_rows={b"\x00meta\x00offset": b"42"})
    assert dump(store) == rows
    assert store.get_item("x") == x
    assert store.get_item("y") == y
    assert store.get_item("z").value is None
    assert store.get_meta(b"\x00meta\x00offset") is None


def test_on_error_skips_bad_ops(store: DynoStore) -> None:
    hashes = _five(store, "x")
    store.flatten("x", hashes[3])
    errors: list[tuple[int, Any, DynoError]] = []
    batch = [
        make_op("putAttrs", "y", {"k": 2}, F(1)),
        make_op("putAttrs", "x", {"late": 1}, F(2)),
        make_op("putAttrs", "y", {"k": 3}, F(1)),  # conflicts with the first
        Flatten(item="x", hash="0" * 32),
        make_op("putAttrs", "x", {"new": 1}, F(10)),
    ]
    touched = store.apply(
        batch,
        internal_rows={b"\x00meta\x00o": b"1"},
        on_error=lambda i, e, err: errors.append((i, e, err)),
    )
    assert [(i, type(err)) for i, _, err in errors] == [
        (1, LateOpError),
        (2, ConflictError),
        (3, UnknownHashError),
    ]
    assert [e for _, e, _ in errors] == [batch[1], batch[2], batch[3]]
    assert touched == ["y", "x"]
    assert store.get_item("y").value == {"k": 2}
    assert store.get_item("x").value == {"a": 3, "b": "xy", "c": {"1": True}, "new": 1}
    assert store.get_meta(b"\x00meta\x00o") == b"1"


def test_apply_returns_names_touched_in_order(store: DynoStore) -> None:
    touched = store.apply(
        [
            make_op("putItem", "b", {"a": 1}, F(0)),
            make_op("putItem", "a", {"a": 1}, F(1)),
            make_op("putAttrs", "b", {"c": 1}, F(2)),
        ]
    )
    assert touched == ["b", "a"]


def test_extra_rows_land_with_the_batch(store: DynoStore) -> None:
    store.apply([make_op("putItem", "x", {"a": 1}, F(0))], internal_rows={b"\x00meta\x00p0": b"10"})
    assert store.get_meta(b"\x00meta\x00p0") == b"10"
    store.apply([], internal_rows={b"\x00meta\x00p0": None, b"\x00meta\x00p1": b"11"})
    assert store.get_meta(b"\x00meta\x00p0") is None
    assert list(store.iter_meta(b"\x00meta\x00p")) == [(b"\x00meta\x00p1", b"11")]
    # internal rows are not item rows
    assert dump(store) == [f'x/{F(0)}/putItem = {{"a":1}}']


def test_extra_with_non_internal_key_refused(store: DynoStore) -> None:
    for key in [b"x/" + F(1).encode() + b"/putItem", b"meta", b"\x01"]:
        with pytest.raises(DynoError):
            store.apply([make_op("putItem", "y", {"a": 1}, F(1))], internal_rows={key: b"{}"})
    assert dump(store) == []
    assert store.get_item("y").value is None
    with pytest.raises(DynoError):
        store.get_meta(b"meta")


def test_internal_rows_live_outside_item_space(store: DynoStore) -> None:
    weird = "\x00state\x00x"
    store.put_item(weird, {"w": 1}, ts=F(0))
    store.put_item("x", {"x": 1}, ts=F(1))
    assert store.get_item(weird).value == {"w": 1}
    assert store.get_item("x").value == {"x": 1}
    assert [k for k, _ in store.rows()] == [
        f"%00state%00x/{F(0)}/putItem",
        f"x/{F(1)}/putItem",
    ]
    assert [n for n, _ in store.scan(lambda n, i: True)] == [weird, "x"]


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "a/b",
        "a/",
        "/",
        "100%",
        "%2F",
        "tab\tname",
        "line\nbreak",
        "nul\x00",
        "\x85",
        "日本/語",
        "🎉",
    ],
)
def test_special_names_round_trip(tmp_path: Path, name: str) -> None:
    with DynoStore(tmp_path / "db") as s:
        s.put_item(name, {"n": name}, ts=F(0))
        s.put_item("a", {"plain": True}, ts=F(1))
        s.inc_attr_by(name, "c", ts=F(2))
        assert s.get_item(name).value == {"n": name, "c": 1}
        assert s.get_item(name).hash == link(
            link("", name, F(0), "putItem", {"n": name}), name, F(2), "incAttrBy",
            {"field": "c", "by": 1},
        )  # fmt: skip
        assert [c.timestamp for c in s.get_history(name)] == [F(0), F(2)]
        assert s.get_item("a").value == {"plain": True}
        assert [n for n, _ in s.query(name, name)] == [name]
    with DynoStore(tmp_path / "db") as s:
        assert s.get_item(name).value == {"n": name, "c": 1}
        assert sorted(n for n, _ in s.scan(lambda n, i: True)) == sorted({name, "a"})


def test_a_and_a_slash_b_are_separate(store: DynoStore) -> None:
    store.put_item("a", {"v": "a"}, ts=F(0))
    store.put_item("a/b", {"v": "a/b"}, ts=F(1))
    store.put_item("a/b/c", {"v": "a/b/c"}, ts=F(2))
    store.del_item("a", ts=F(3))
    assert store.get_item("a").value is None
    assert store.get_item("a").count == 2
    assert store.get_item("a/b").value == {"v": "a/b"}
    assert store.get_item("a/b").count == 1
    assert [c.timestamp for c in store.get_history("a")] == [F(0), F(3)]
    assert [c.timestamp for c in store.get_history("a/b")] == [F(1)]
    h = store.get_item("a/b").hash or ""
    assert store.flatten("a/b", h) is True
    assert store.get_item("a/b/c").count == 1
    assert [n for n, _ in store.query("a", "a/c")] == ["a/b", "a/b/c"]


def test_1024_byte_name_ok_1025_refused(store: DynoStore) -> None:
    ok = "é" * 512
    store.put_item(ok, {"a": 1}, ts=F(0))
    assert store.get_item(ok).value == {"a": 1}
    for bad in ["x" * 1025, ok + "x"]:
        with pytest.raises(InvalidNameError) as info:
            store.put_item(bad, {"a": 1}, ts=F(1))
        assert info.value.field == "item"
        with pytest.raises(InvalidNameError):
            store.get_item(bad)
    assert len(dump(store)) == 1
    slashes = "/" * 1024  # escapes to a 3,072-byte key part, still one valid name
    store.put_item(slashes, {"s": 1}, ts=F(2))
    assert store.get_item(slashes).value == {"s": 1}
    assert [n for n, _ in store.query(slashes, slashes)] == [slashes]


def test_path_may_be_a_string(tmp_path: Path) -> None:
    with DynoStore(str(tmp_path / "db")) as s:
        s.put_item("x", {"a": 1}, ts=F(0))
    with DynoStore(tmp_path / "db") as s:
        assert s.get_item("x").value == {"a": 1}


# -- bad input ---------------------------------------------------------------------------------


BAD_CALLS: list[tuple[str, type[ValidationError], str, Any]] = [
    ("empty name", InvalidNameError, "item", lambda s: s.put_item("", {"a": 1}, ts=F(0))),
    ("non-str name", InvalidNameError, "item", lambda s: s.put_item(5, {"a": 1}, ts=F(0))),
    ("surrogate name", InvalidNameError, "item", lambda s: s.put_item("\udc80", {}, ts=F(0))),
    ("upper flake", InvalidFlakeError, "ts", lambda s: s.put_item("x", {}, ts=F(0).upper())),
    ("short flake", InvalidFlakeError, "ts", lambda s: s.del_item("x", ts=F(0)[:-1])),
    ("newline flake", InvalidFlakeError, "ts", lambda s: s.del_item("x", ts=F(0) + "\n")),
    ("put list", InvalidChangeError, "change", lambda s: s.put_item("x", [1], ts=F(0))),
    ("put attrs str", InvalidChangeError, "change", lambda s: s.put_attrs("x", "a", ts=F(0))),
    ("del attrs str", InvalidChangeError, "change", lambda s: s.del_attrs("x", "a", ts=F(0))),
    ("inc by str", InvalidChangeError, "change.by", lambda s: s.inc_attr_by("x", "n", "z", F(0))),
    ("inc field int", InvalidChangeError, "change.field", lambda s: s.inc_attr_by("x", 1, 1, F(0))),
    ("append int", InvalidChangeError, "change.str", lambda s: s.append("x", "f", 5, ts=F(0))),
    ("set list", InvalidChangeError, "change.value", lambda s: s.add_to_set("x", "f", [1], F(0))),
    ("nan", InvalidChangeError, "change.a", lambda s: s.put_item("x", {"a": float("nan")}, F(0))),
    ("inf", InvalidChangeError, "change.by", lambda s: s.dec_attr_by("x", "n", float("inf"), F(0))),
    ("nested inf", InvalidChangeError, "change.a.0",
     lambda s: s.put_attrs("x", {"a": [float("-inf")]}, F(0))),
    ("set", InvalidChangeError, "change.a", lambda s: s.put_item("x", {"a": {1}}, F(0))),
    ("bytes", InvalidChangeError, "change.a", lambda s: s.put_item("x", {"a": b"z"}, F(0))),
]  # fmt: skip


@pytest.mark.parametrize(
    ("label", "cls", "field", "call"), BAD_CALLS, ids=[b[0] for b in BAD_CALLS]
)
def test_bad_input_refused_naming_the_field(
    store: DynoStore, label: str, cls: type[ValidationError], field: str, call: Any
) -> None:
    store.put_item("x", {"keep": 1}, ts=F(-1))
    rows = dump(store)
    with pytest.raises(cls) as info:
        call(store)
    assert info.value.field == field, label
    assert str(info.value).startswith(f"{field}: "), label  # the message names it too
    assert dump(store) == rows
    assert store.get_item("x").value == {"keep": 1}


@pytest.mark.parametrize(
    ("label", "call"),
    [
        ("value", lambda s: s.put_item("x", {"a": "bad\udc80"}, ts=F(0))),
        ("attr name", lambda s: s.put_attrs("x", {"\ud800": 1}, ts=F(0))),
        ("append", lambda s: s.append("x", "f", "\ud800", ts=F(0))),
        ("set field", lambda s: s.add_to_set("x", "\ud800", "v", ts=F(0))),
        ("del attrs", lambda s: s.del_attrs("x", ["\ud800"], ts=F(0))),
    ],
)
def test_change_with_lone_surrogate_is_a_dyno_error(
    store: DynoStore, label: str, call: Any
) -> None:
    # a lone surrogate cannot be written as UTF-8 JSON: the value is not JSON, so the store
    # must refuse it with an InvalidChangeError (not a UnicodeEncodeError), writing nothing
    store.put_item("x", {"keep": 1}, ts=F(-1))
    rows = dump(store)
    with pytest.raises(InvalidChangeError) as info:
        call(store)
    assert info.value.field.startswith("change"), label
    assert dump(store) == rows


def test_lone_surrogate_change_refused_before_the_store(store: DynoStore) -> None:
    # validation refuses it, so a batch never holds an op the store could not write
    with pytest.raises(InvalidChangeError) as info:
        make_op("putItem", "x", {"a": "\ud800"}, F(0))
    assert info.value.field == "change"
    store.apply([make_op("putItem", "y", {"a": 1}, F(1))])
    assert store.get_item("y").value == {"a": 1}
    assert store.get_item("x").value is None


def test_inc_to_infinity_refused_nothing_written(store: DynoStore) -> None:
    store.put_item("x", {"n": 1.5e308}, ts=F(0))
    rows = dump(store)
    with pytest.raises(InvalidChangeError) as info:
        store.inc_attr_by("x", "n", 1.5e308, ts=F(1))
    assert info.value.field == "change.by"
    assert dump(store) == rows
    assert store.get_item("x").value == {"n": 1.5e308}


# -- lifecycle ---------------------------------------------------------------------------------


def test_store_closed_error_after_close(tmp_path: Path) -> None:
    s = DynoStore(tmp_path / "db")
    s.put_item("x", {"a": 1}, ts=F(0))
    s.close()
    assert s.closed
    s.close()  # closing twice is harmless
    calls: list[Any] = [
        lambda: s.get_item("x"),
        lambda: s.put_item("x", {"a": 2}, ts=F(1)),
        lambda: s.put_item("x", {"a": 2}),
        lambda: s.apply([make_op("delItem", "x", {}, F(1))]),
        lambda: s.flatten("x", "0" * 32),
        lambda: s.flatten_before("x", F(5)),
        lambda: s.get_history("x"),
        lambda: list(s.query("a", "z")),
        lambda: list(s.scan(lambda n, i: True)),
        lambda: list(s.rows()),
        lambda: s.get_meta(b"\x00meta\x00x"),
    ]
    for call in calls:
        with pytest.raises(StoreClosedError):
            call()
    with DynoStore(tmp_path / "db") as again:
        assert again.get_item("x").value == {"a": 1}
    assert again.closed


def test_query_iterator_across_close_raises_store_closed(tmp_path: Path) -> None:
    s = DynoStore(tmp_path / "db")
    for i in range(3):
        s.put_item(f"n{i}", {"i": i}, ts=F(i))
    it = s.query("a", "z")
    assert next(it)[0] == "n0"
    s.close()
    with pytest.raises(StoreClosedError):
        list(it)


def test_persistence_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with DynoStore(path) as s:
        hashes = _five(s, "x")
        seed(s)
        s.flatten("x", hashes[2])
        s.apply([], internal_rows={b"\x00meta\x00k": b"v"})
        items = {n: s.get_item(n) for n in ["x", "chilts"]}
        histories = {n: s.get_history(n) for n in ["x", "chilts"]}
        rows = dump(s)
    with DynoStore(path) as s:
        assert {n: s.get_item(n) for n in ["x", "chilts"]} == items
        assert {n: s.get_history(n) for n in ["x", "chilts"]} == histories
        assert dump(s) == rows
        assert s.get_meta(b"\x00meta\x00k") == b"v"
        with pytest.raises(LateOpError):  # the history row's lateness persists
            s.put_attrs("x", {"late": 1}, ts=F(1))
        s.append("x", "b", "z", ts=F(9))
    with DynoStore(path) as s:
        assert s.get_item("x").value == {"a": 3, "b": "xyz", "c": {"1": True}}
        assert s.get_item("x").changes == 6


def test_store_creates_missing_store_directory(tmp_path: Path) -> None:
    path = tmp_path / "db"
    assert not path.exists()
    with DynoStore(path) as s:
        s.put_item("x", {"a": 1}, ts=F(0))
        assert s.get_item("x").value == {"a": 1}
    assert path.is_dir()


def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "parent" / "db"
    with DynoStore(path) as s:
        s.put_item("x", {"a": 1}, ts=F(0))
    assert path.is_dir()
    with DynoStore(path) as s:  # a real store there, not a throwaway
        assert s.get_item("x").value == {"a": 1}


def test_open_failure_is_a_dyno_error_naming_the_path(tmp_path: Path) -> None:
    # every error a caller can provoke derives from DynoError, never a raw OSError or plyvel
    # error: here a file stands where a parent directory must be (a permission error would
    # not do, the tests may run as root)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    path = blocker / "db"
    with pytest.raises(DynoError, match="cannot open store at") as info:
        DynoStore(path)
    assert str(path) in str(info.value)
    assert blocker.read_text() == "not a directory"  # left as it was


def test_open_twice_is_a_dyno_error(tmp_path: Path) -> None:
    with DynoStore(tmp_path / "db") as s:
        s.put_item("x", {"a": 1}, ts=F(0))
        with pytest.raises(DynoError):
            DynoStore(tmp_path / "db")
        assert s.get_item("x").value == {"a": 1}


# -- a store level-dyno wrote ------------------------------------------------------------------


def test_reads_a_store_level_dyno_wrote(tmp_path: Path) -> None:
    path = tmp_path / "legacy"
    chilts_rows = [
        (f"chilts/{SEED}/putItem", '{"nick":"chilts","email":"me@example.com"}'),
        (f"chilts/{F(1)}/delAttrs", '["email"]'),
        (f"chilts/{F(2)}/putAttrs", '{"name":"Andy Chilton"}'),
    ]
    bob_hash = link("", "bob", F(0), "putItem", {"x": 1})
    bob_rows = [
        (f"bob/{F(3)}/history", f'{bob_hash}:4:{{"n":2,"tags":{{"a":true}}}}'),
        (f"bob/{F(4)}/incAttrBy", '{"field":"n","by":3}'),
    ]
    dead_rows = [
        (f"dead/{F(0)}/putItem", '{"a":1}'),
        (f"dead/{F(1)}/delItem", "{}"),
    ]
    db = plyvel.DB(str(path), create_if_missing=True)
    for key, value in chilts_rows + bob_rows + dead_rows:
        db.put(key.encode(), value.encode())
    db.close()

    with DynoStore(path) as s:
        item = s.get_item("chilts")
        assert item.value == {"nick": "chilts", "name": "Andy Chilton"}
        assert item.changes == 3
        assert item.count == 3
        assert item.timestamp == F(2)
        h = ""
        for key, value in chilts_rows:
            _, flake, op = key.split("/")
            h = md5(f"{h}\nchilts\n{flake}\n{op}\n{value}\n")
        assert item.hash == h
        bob = s.get_item("bob")
        assert bob.value == {"n": 5, "tags": {"a": True}}
        assert bob.changes == 5
        assert bob.count == 2
        assert bob.timestamp == F(4)
        assert bob.hash == md5(f'{bob_hash}\nbob\n{F(4)}\nincAttrBy\n{{"field":"n","by":3}}\n')
        assert s.get_item("dead").value is None
        assert s.get_item("dead").count == 2
        assert [n for n, _ in s.query("a", "z")] == ["bob", "chilts"]
        assert [(n, i.value) for n, i in s.query("c", "chilts")] == [
            ("chilts", {"nick": "chilts", "name": "Andy Chilton"})
        ]
        assert dump(s) == [f"{k} = {v}" for k, v in sorted(bob_rows + chilts_rows + dead_rows)]
        assert s.get_history("chilts")[1] == Changeset("chilts", F(1), "delAttrs", ["email"])
        assert isinstance(s.get_history("bob")[0], HistoryChangeset)
        # bob's history row still makes older ops late
        with pytest.raises(LateOpError):
            s.put_attrs("bob", {"z": 1}, ts=F(2))
        # and the store keeps working on the adopted items
        s.append("chilts", "nick", "!", ts=F(5))
        assert s.flatten("chilts", s.get_item("chilts").hash or "") is True
    with DynoStore(path) as s:
        assert s.get_item("chilts").value == {"nick": "chilts!", "name": "Andy Chilton"}
        assert s.get_item("chilts").changes == 4
        assert s.get_item("chilts").count == 1
        assert s.get_item("bob").value == {"n": 5, "tags": {"a": True}}


def test_refuses_a_leveldb_that_is_not_a_dyno_store(tmp_path: Path) -> None:
    path = tmp_path / "other"
    db = plyvel.DB(str(path), create_if_missing=True)
    db.put(b"some-random-key", b"value")
    db.close()
    with pytest.raises(DynoError):
        DynoStore(path)


# -- arithmetic that cannot be stored must not crash a batch -----------------------------------


def test_counter_beyond_64_bits_is_refused_and_skipped(store: DynoStore) -> None:
    big = 2**63
    store.put_item("n", {"x": big}, ts=F(0))
    errors: list[tuple[int, str]] = []
    done = store.apply(
        [
            make_op("incAttrBy", "n", {"field": "x", "by": big}, F(1)),
            make_op("incAttrBy", "n", {"field": "x", "by": 0.5}, F(2)),
            make_op("putAttrs", "ok", {"a": 1}, F(3)),
        ],
        on_error=lambda i, e, err: errors.append((i, type(err).__name__)),
    )
    assert errors == [(0, "InvalidChangeError")]
    assert done == ["n", "ok"]
    assert store.get_item("n").value == {"x": big + 0.5}


def test_huge_integer_plus_float_is_an_invalid_change(store: DynoStore) -> None:
    store.put_item("n", {"x": 10**400}, ts=F(0))
    with pytest.raises(InvalidChangeError) as info:
        store.inc_attr_by("n", "x", 0.5, ts=F(1))
    assert info.value.field.startswith("change")
    assert store.get_item("n").value == {"x": 10**400}


# -- states written behind the rows ------------------------------------------------------------


def _crash(store: DynoStore) -> None:
    """Close LevelDB under the store without its flush: what a killed process leaves."""
    store._db.close()
    store._db = None


def test_states_written_behind_survive_a_crash(tmp_path: Path) -> None:
    gen = FlakeGenerator(node=9, pid=9)
    store = DynoStore(tmp_path / "s", flush_interval_s=3600)
    store.put_item("a", {"n": 1}, ts=gen())
    store.inc_attr_by("a", "n", 5, ts=gen())
    store.put_item("b", {"x": "y"}, ts=gen())
    expected = {n: store.get_item(n) for n in ("a", "b")}
    db: Any = store._db
    # the states live in memory only, and the journal names the items they belong to
    assert db.get(b"\x00state\x00a") is None
    assert list(db.iterator(prefix=b"\x00meta\x00dirty\x00")) != []
    _crash(store)
    with DynoStore(tmp_path / "s") as again:
        assert {n: again.get_item(n) for n in ("a", "b")} == expected
        assert expected["a"].value == {"n": 6} and expected["a"].changes == 2
        db = again._db
        assert list(db.iterator(prefix=b"\x00meta\x00dirty\x00")) == []
        assert db.get(b"\x00state\x00a") is not None


def test_a_failed_batch_keeps_a_state_not_yet_written(tmp_path: Path) -> None:
    gen = FlakeGenerator(node=9, pid=9)
    with DynoStore(tmp_path / "s", flush_interval_s=3600) as store:
        t1 = gen()
        store.put_item("a", {"n": 1}, ts=t1)
        before = store.get_item("a")
        # the first op changes the cached state in place, then the conflict fails the batch
        bad = [make_op("putAttrs", "a", {"m": 2}, gen()), make_op("putItem", "a", {"z": 0}, t1)]
        with pytest.raises(ConflictError):
            store.apply(bad)
        assert store.get_item("a") == before
        store.put_attrs("a", {"k": 3}, ts=gen())
        assert store.get_item("a").value == {"n": 1, "k": 3}
        assert store.get_item("a").changes == 2


def test_evicted_states_are_written(tmp_path: Path) -> None:
    gen = FlakeGenerator(node=9, pid=9)
    one = estimate_state_bytes(len(ItemState({"i": 0}, gen(), 1, "0" * 32, 1).encode()))
    budget = MemoryBudget(64 * 1024 * 1024, state_bytes=3 * one)  # three states' worth
    store = DynoStore(tmp_path / "s", budget=budget, flush_interval_s=3600)
    for i in range(10):
        store.put_item(f"i{i}", {"i": i}, ts=gen())
    assert list(store._states.cache) == ["i7", "i8", "i9"]  # the most recently written
    assert store._db.get(b"\x00state\x00i0") is not None  # evicted, so written
    _crash(store)
    with DynoStore(tmp_path / "s") as again:
        assert [again.get_item(f"i{i}").value for i in range(10)] == [{"i": i} for i in range(10)]
        assert [n for n, _ in again.scan(lambda n, i: True)] == [f"i{i}" for i in range(10)]


def test_a_foreign_database_is_refused_and_left_unlocked(tmp_path: Path) -> None:
    path = tmp_path / "foreign"
    db = plyvel.DB(str(path), create_if_missing=True)
    db.put(b"not-an-item-row", b"x")
    db.close()
    with pytest.raises(DynoError, match="is not a dyno store") as first:
        DynoStore(path)
    # the refused store is still referenced (by the traceback), yet it released LevelDB's
    # lock: a second open gets the same answer, not "lock held"
    with pytest.raises(DynoError, match="is not a dyno store"):
        DynoStore(path)
    assert first.traceback is not None
    assert plyvel.DB(str(path)).get(b"not-an-item-row") == b"x"  # and nothing was written


def test_restore_writes_items_states_and_internal_rows_at_once_into_a_store_without_items(
    tmp_path: Path,
) -> None:
    """A restore lands whole (its items' rows and states with the worker's offset) and only
    into a store with no items: a half-used store would mix two histories."""
    source = DynoStore(tmp_path / "source")
    source.put_item("a", {"n": 1}, ts=F(0))
    source.put_attrs("a", {"m": 2}, ts=F(1))
    a = source.get_item("a")
    source.close()

    path = tmp_path / "restored"
    with DynoStore(path) as store:
        assert store.restore([("a", a)], {b"\x00meta\x00offset": b"7"}) == 1
    with DynoStore(path) as store:  # reopened: the state row was written, not only cached
        got = store.get_item("a")
        assert (got.value, got.hash, got.changes, got.count) == (a.value, a.hash, 2, 1)
        assert store.get_meta(b"\x00meta\x00offset") == b"7"
        store.put_attrs("a", {"o": 3}, ts=F(2))  # later ops chain on from the restored hash
        assert store.get_item("a").changes == 3

    other = tmp_path / "used"
    with DynoStore(other) as store:
        store.put_item("b", {"n": 1}, ts=F(0))
        with pytest.raises(StoreError, match="already has items"):
            store.restore([("a", a)], {b"\x00meta\x00offset": b"7"})
        assert store.get_meta(b"\x00meta\x00offset") is None


def test_a_redelivered_op_is_found_without_reading_the_items_history(
    store: DynoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At-least-once delivery brings ops again; finding one by its key keeps a redelivery as
    cheap as the op, where reading the item's rows made it cost the whole history."""
    _five(store)
    rows, item = dump(store), store.get_item("x")

    def whole_history(self: WriteBatch, name: str) -> Any:
        raise AssertionError(f"read {name!r}'s whole history to place a redelivery")

    monkeypatch.setattr(WriteBatch, "item_rows", whole_history)
    again = [make_op("incAttrBy", "x", {"field": "a", "by": 2}, F(1))]
    assert store.apply(again) == []
    assert store.apply([*again, *again]) == []  # twice in one batch too
    monkeypatch.undo()  # a refused batch's states are rebuilt from the rows
    with pytest.raises(ConflictError, match="already holds incAttrBy"):
        store.put_attrs("x", {"a": 2}, ts=F(1))
    assert dump(store) == rows
    assert store.get_item("x") == item
