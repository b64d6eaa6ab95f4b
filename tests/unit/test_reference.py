"""The reference model (bench/reference.py) held to vectors it did not compute itself.

level-dyno's seed README gives the rows of its example (key and stored change text) and the
item they replay to; the hashes below were computed from the README's formula with
coreutils' ``md5sum`` (``printf '%s\\n%s\\n%s\\n%s\\n%s\\n' "$prev" chilts $flake putItem
'{...}' | md5sum``), not with Python. The op vectors are the README's sentences written out.
The store is then held to the same vectors, so the model and the code agree on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import reference as ref

from dyno_stream.core import ops
from dyno_stream.core.events import parse_event
from dyno_stream.store import DynoStore

# the seed's example: its flakes, and each row's stored text exactly as the seed prints it
F0 = "013d58c7276e-0000-188c-786ae2e1f629"
F1 = "013d58c7276e-0001-188c-786ae2e1f629"
F2 = "013d58c7276e-0002-188c-786ae2e1f629"
SEED_OPS = [
    (F0, "putItem", {"nick": "chilts", "email": "me@example.com"}),
    (F1, "delAttrs", ["email"]),
    (F2, "putAttrs", {"name": "Andy Chilton"}),
]
SEED_ROWS = [
    f'chilts/{F0}/putItem = {{"nick":"chilts","email":"me@example.com"}}',
    f'chilts/{F1}/delAttrs = ["email"]',
    f'chilts/{F2}/putAttrs = {{"name":"Andy Chilton"}}',
]
SEED_VALUE = {"nick": "chilts", "name": "Andy Chilton"}
# md5sum of the README's layout, after each of the three ops
SEED_HASHES = [
    "224ff8509a0d1841f6c80b33665b8121",
    "da32c46572f18f35ee6992d82297d7b7",
    "0e550a441ae413bcfb064a6ab14ddf59",
]
# a name and text beyond ASCII, a float, and a field change sent with its keys reversed
WIDE = "ü/x"
WIDE_OPS = [
    (F0, "putItem", {"a": "é", "n": 1.5}, '{"a":"é","n":1.5}'),
    (F1, "incAttrBy", {"by": 2, "field": "n"}, '{"field":"n","by":2}'),
]
WIDE_HASHES = ["9ab9b7bab78e74230b3546fbac14f401", "f36d5557c961ad497d2daf97afc66335"]


def seed_item() -> ref.ItemHistory:
    item = ref.ItemHistory("chilts")
    for flake, op, change in SEED_OPS:
        assert item.offer(flake, op, change) == ref.STORED
    return item


def test_the_seed_rows_are_the_changes_as_compact_json() -> None:
    rows = [f"chilts/{f}/{op} = {text}" for f, op, text in seed_item().rows()]
    assert rows == SEED_ROWS


def test_the_seed_example_replays_to_its_value_and_md5sum_hashes() -> None:
    steps = seed_item().steps()
    assert [s.hash for s in steps] == SEED_HASHES
    assert steps[-1].value == SEED_VALUE
    assert list(steps[-1].value) == ["nick", "name"]  # attribute order kept
    assert seed_item().state() == ref.State(SEED_VALUE, F2, 3, SEED_HASHES[-1], 3, False)


def test_the_seed_flatten_folds_the_three_rows_into_one_history_row() -> None:
    item = seed_item()
    assert item.flatten(SEED_HASHES[-1]) == ref.FOLDED
    text = f'{SEED_HASHES[-1]}:3:{{"nick":"chilts","name":"Andy Chilton"}}'
    assert item.rows() == [(F2, "history", text)]
    assert item.state() == ref.State(SEED_VALUE, F2, 3, SEED_HASHES[-1], 1, False)
    assert item.flatten(SEED_HASHES[-1]) == ref.NOTHING
    assert item.flatten(SEED_HASHES[0]) == ref.UNKNOWN_HASH  # folded away
    assert item.offer(F1, "putAttrs", {"late": True}) == ref.LATE


def test_text_beyond_ascii_floats_and_field_order() -> None:
    item = ref.ItemHistory(WIDE)
    for flake, op, change, text in WIDE_OPS:
        assert ref.change_json(op, change) == text
        item.offer(flake, op, change)
    assert [s.hash for s in item.steps()] == WIDE_HASHES
    assert item.state().value == {"a": "é", "n": 3.5}


def test_the_replay_of_many_items_gives_the_same_hashes() -> None:
    replay = ref.Replay(keep_chain=True)
    for flake, op, change in SEED_OPS:
        replay.apply("chilts", flake, op, change)
    assert replay.chains == {"chilts": SEED_HASHES}
    assert (replay.value("chilts"), replay.changes["chilts"]) == (SEED_VALUE, 3)
    with pytest.raises(ValueError, match="not flake order"):
        replay.apply("chilts", F1, "putAttrs", {"x": 1})


# -- the README's sentences on each op, written out --------------------------------------------

OP_VECTORS: list[tuple[str, dict[str, Any], str, Any, dict[str, Any]]] = [
    # (why, value before, op, change, value after)
    ("putItem replaces the item", {"a": 1}, "putItem", {"b": 2}, {"b": 2}),
    ("delItem empties it", {"a": 1}, "delItem", {}, {}),
    (
        "putAttrs sets attributes",
        {"a": 1, "b": 1},
        "putAttrs",
        {"b": 2, "c": 3},
        {"a": 1, "b": 2, "c": 3},
    ),
    (
        "delAttrs removes names, missing ones too",
        {"a": 1, "b": 2},
        "delAttrs",
        ["a", "z"],
        {"b": 2},
    ),
    ("incAttrBy adds", {"n": 2}, "incAttrBy", {"field": "n", "by": 3}, {"n": 5}),
    ("incAttrBy on a missing attribute", {}, "incAttrBy", {"field": "n", "by": 3}, {"n": 3}),
    ("incAttrBy on text", {"n": "x"}, "incAttrBy", {"field": "n", "by": 3}, {"n": 3}),
    ("a boolean is not a number", {"n": True}, "incAttrBy", {"field": "n", "by": 3}, {"n": 3}),
    ("decAttrBy subtracts", {"n": 2}, "decAttrBy", {"field": "n", "by": 0.5}, {"n": 1.5}),
    ("decAttrBy on a missing attribute", {}, "decAttrBy", {"field": "n", "by": 3}, {"n": -3}),
    ("append appends", {"s": "ab"}, "append", {"field": "s", "str": "c"}, {"s": "abc"}),
    ("append to a missing attribute", {}, "append", {"field": "s", "str": "c"}, {"s": "c"}),
    ("append to a number", {"s": 1.5}, "append", {"field": "s", "str": "x"}, {"s": "1.5x"}),
    (
        "append to an object",
        {"s": {"é": [1, None]}},
        "append",
        {"field": "s", "str": "!"},
        {"s": '{"é":[1,null]}!'},
    ),
    ("addToSet makes a set", {}, "addToSet", {"field": "t", "value": "red"}, {"t": {"red": True}}),
    (
        "addToSet keeps members",
        {"t": {"a": True}},
        "addToSet",
        {"field": "t", "value": 1},
        {"t": {"a": True, "1": True}},
    ),
    (
        "addToSet on a scalar",
        {"t": "a"},
        "addToSet",
        {"field": "t", "value": None},
        {"t": {"a": True, "null": True}},
    ),
    (
        "addToSet on a list",
        {"t": [1, "a", [2], {}]},
        "addToSet",
        {"field": "t", "value": True},
        {"t": {"1": True, "a": True, "true": True}},
    ),
]


@pytest.mark.parametrize(("why", "before", "op", "change", "after"), OP_VECTORS)
def test_each_op_as_the_readme_says(
    why: str, before: dict[str, Any], op: str, change: Any, after: dict[str, Any]
) -> None:
    copy_before = json.loads(json.dumps(before))
    assert ref.apply_op(before, op, change) == after, why
    assert before == copy_before, "the value before was changed"
    assert ops.apply_op(copy_before, op, change) == after, f"the store: {why}"


def test_every_op_has_a_vector() -> None:
    assert {v[2] for v in OP_VECTORS} == set(ref.OPS)


@pytest.mark.parametrize(
    ("before", "op", "change"),
    [
        ({"n": 1}, "incAttrBy", {"field": "n", "by": 2**64}),  # beyond 64-bit integers
        ({"n": 1e308}, "incAttrBy", {"field": "n", "by": 1e308}),  # not finite
        ({"n": 1.0}, "decAttrBy", {"field": "n", "by": 10**400}),  # a float overflows
        ({}, "flatten", {}),
    ],
)
def test_what_the_semantics_refuse(before: dict[str, Any], op: str, change: Any) -> None:
    with pytest.raises(ref.Refused):
        ref.apply_op(before, op, change)


def test_the_history_row_of_a_deleted_item_holds_null() -> None:
    item = ref.ItemHistory("d")
    item.offer(F0, "putItem", {"a": 1})
    item.offer(F1, "delItem", {})
    item.offer(F2, "putAttrs", {"b": 2})
    assert item.flatten_before(F2) == ref.FOLDED
    h = item.steps()[1].hash
    assert item.rows() == [(F1, "history", f"{h}:2:null"), (F2, "putAttrs", '{"b":2}')]


# -- the store holds the same vectors ----------------------------------------------------------


def wire(name: str, flake: str, op: str, change: Any) -> bytes:
    return json.dumps({"item": name, "op": op, "ts": flake, "change": change}).encode()


def test_the_store_agrees_with_the_vectors(tmp_path: Path) -> None:
    with DynoStore(tmp_path / "db") as store:
        store.apply([parse_event(wire("chilts", *op)) for op in SEED_OPS])
        store.apply([parse_event(wire(WIDE, f, op, ch)) for f, op, ch, _ in WIDE_OPS])
        assert [f"{k} = {v}" for k, v in store.rows("chilts")] == SEED_ROWS
        item = store.get_item("chilts")
        assert (item.value, item.changes, item.hash) == (SEED_VALUE, 3, SEED_HASHES[-1])
        assert store.get_item(WIDE).hash == WIDE_HASHES[-1]
        assert [v for _, v in store.rows(WIDE)] == [text for *_, text in WIDE_OPS]
        store.flatten("chilts", SEED_HASHES[-1])
        text = f'{SEED_HASHES[-1]}:3:{{"nick":"chilts","name":"Andy Chilton"}}'
        assert list(store.rows("chilts")) == [(f"chilts/{F2}/history", text)]
