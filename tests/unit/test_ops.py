"""Op semantics, JSON encoding and the history hash (core.ops), checked against the spec."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import pytest

from dyno_stream.core import ops
from dyno_stream.core.errors import DynoError, InvalidChangeError

SEED = "013d58c7276e-0000-188c-786ae2e1f629"
F2 = "013d58c7276f-0000-188c-786ae2e1f629"
F3 = "013d58c72770-0000-188c-786ae2e1f629"


def md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


# -- JSON --------------------------------------------------------------------------------------


def test_dumps_is_compact_keeps_order_and_unicode() -> None:
    assert ops.dumps({"nick": "chilts", "email": "me@example.com"}) == (
        '{"nick":"chilts","email":"me@example.com"}'
    )
    assert ops.dumps({"z": 1, "a": [1, 2.5, None, True]}) == '{"z":1,"a":[1,2.5,null,true]}'
    assert ops.dumps({"name": "Zoë 日本"}) == '{"name":"Zoë 日本"}'
    assert ops.loads(b'{"b":1,"a":2}') == {"b": 1, "a": 2}
    assert list(ops.loads('{"b":1,"a":2}')) == ["b", "a"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_dumps_refuses_non_finite(bad: float) -> None:
    with pytest.raises(ValueError):
        ops.dumps({"x": [bad]})


# -- hash --------------------------------------------------------------------------------------


def test_chain_hash_seed_example() -> None:
    h = ops.chain_hash("", "chilts", SEED, "putItem", '{"nick":"chilts"}')
    assert h == "2b847185c137c7f8ff54bf5ebf72bb6e"


def test_chain_hash_is_md5_of_the_spec_layout() -> None:
    h1 = ops.chain_hash("", "ü/x", SEED, "putItem", '{"a":"é"}')
    assert h1 == md5(f"\nü/x\n{SEED}\nputItem\n" + '{"a":"é"}' + "\n")
    h2 = ops.chain_hash(h1, "ü/x", F2, "delAttrs", '["a"]')
    assert h2 == md5(f"{h1}\nü/x\n{F2}\ndelAttrs\n" + '["a"]' + "\n")


# -- op semantics ------------------------------------------------------------------------------


def run(value: dict[str, Any], op: str, change: Any) -> dict[str, Any]:
    return ops.apply_op(dict(value), op, change)


def test_put_item_replaces() -> None:
    assert run({"a": 1, "b": 2}, "putItem", {"c": 3}) == {"c": 3}


def test_del_item_empties() -> None:
    assert run({"a": 1}, "delItem", {}) == {}


def test_put_attrs_sets() -> None:
    out = run({"a": 1, "b": 2}, "putAttrs", {"b": {"x": [1]}, "c": None})
    assert out == {"a": 1, "b": {"x": [1]}, "c": None}


def test_del_attrs_removes_listed_missing_ok() -> None:
    assert run({"a": 1, "b": 2, "c": 3}, "delAttrs", ["a", "c", "zz"]) == {"b": 2}


@pytest.mark.parametrize(
    ("old", "op", "by", "new"),
    [
        (None, "incAttrBy", 5, 5),  # missing (None = do not set)
        (None, "decAttrBy", 5, -5),
        (10, "incAttrBy", 5, 15),
        (10, "decAttrBy", 5, 5),
        (1.5, "incAttrBy", 1, 2.5),
        (1, "decAttrBy", 0.25, 0.75),
        ("text", "incAttrBy", 3, 3),  # non-numeric becomes by
        ("text", "decAttrBy", 3, -3),
        (True, "incAttrBy", 2, 2),  # a bool is not a number
        ([1], "decAttrBy", 2, -2),
        ({"a": 1}, "incAttrBy", 2.5, 2.5),
    ],
)
def test_inc_dec(old: Any, op: str, by: float, new: float) -> None:
    value: dict[str, Any] = {"other": 1}
    if old is not None:
        value["n"] = old
    out = run(value, op, {"field": "n", "by": by})
    assert out == {"other": 1, "n": new}
    assert type(out["n"]) is type(new)


def test_inc_on_null_attr_becomes_by() -> None:
    assert run({"n": None}, "incAttrBy", {"field": "n", "by": 4}) == {"n": 4}


def test_inc_overflow_to_infinity_refused() -> None:
    with pytest.raises(InvalidChangeError) as info:
        run({"n": 1.7e308}, "incAttrBy", {"field": "n", "by": 1.7e308})
    assert info.value.field == "change.by"
    assert isinstance(info.value, DynoError)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("missing", "xyz"),
        ("abc", "abcxyz"),
        (5, "5xyz"),
        (2.5, "2.5xyz"),
        (True, "truexyz"),
        (None, "nullxyz"),
        ([1, "a"], '[1,"a"]xyz'),
        ({"k": "é"}, '{"k":"é"}xyz'),
    ],
)
def test_append(old: Any, new: str) -> None:
    value: dict[str, Any] = {} if old == "missing" else {"s": old}
    assert run(value, "append", {"field": "s", "str": "xyz"}) == {"s": new}


@pytest.mark.parametrize(
    ("old", "value", "new"),
    [
        ("missing", "red", {"red": True}),
        ("missing", 5, {"5": True}),
        ("missing", 1.5, {"1.5": True}),
        ("missing", True, {"true": True}),
        ("missing", None, {"null": True}),
        ({"red": True}, "blue", {"red": True, "blue": True}),
        ({"red": True}, "red", {"red": True}),
        ("red", "blue", {"red": True, "blue": True}),  # an existing scalar becomes a member
        (7, "7", {"7": True}),
        (7, 8, {"7": True, "8": True}),
        (False, "x", {"false": True, "x": True}),
        (None, "x", {"null": True, "x": True}),
    ],
)
def test_add_to_set(old: Any, value: Any, new: dict[str, bool]) -> None:
    start: dict[str, Any] = {} if old == "missing" else {"tags": old}
    assert run(start, "addToSet", {"field": "tags", "value": value}) == {"tags": new}


def test_add_to_set_does_not_mutate_a_shared_object() -> None:
    shared = {"red": True}
    change = {"tags": shared}
    value = ops.apply_op({}, "putItem", change)
    value = ops.apply_op(value, "addToSet", {"field": "tags", "value": "blue"})
    assert value == {"tags": {"red": True, "blue": True}}
    assert shared == {"red": True}
    assert change == {"tags": {"red": True}}


def test_unknown_op_refused() -> None:
    with pytest.raises(InvalidChangeError) as info:
        ops.apply_op({}, "frobnicate", {})
    assert info.value.field == "op"


# -- history rows and replay -------------------------------------------------------------------


def test_history_value_format_round_trips() -> None:
    text = ops.encode_history("2b847185c137c7f8ff54bf5ebf72bb6e", 3, {"a": "x:y", "b": 1})
    assert text == '2b847185c137c7f8ff54bf5ebf72bb6e:3:{"a":"x:y","b":1}'
    assert ops.decode_history(text) == ("2b847185c137c7f8ff54bf5ebf72bb6e", 3, {"a": "x:y", "b": 1})


def test_replay_seed_example() -> None:
    rows = [
        (SEED, "putItem", '{"nick":"chilts","email":"me@example.com"}'),
        (F2, "delAttrs", '["email"]'),
        (F3, "putAttrs", '{"name":"Andy Chilton"}'),
    ]
    state = ops.replay("chilts", rows)
    assert state.value == {"nick": "chilts", "name": "Andy Chilton"}
    assert list(state.value) == ["nick", "name"]
    assert state.changes == 3
    assert state.count == 3
    assert state.timestamp == F3
    assert state.base is None
    h = ""
    for flake, op, text in rows:
        h = md5(f"{h}\nchilts\n{flake}\n{op}\n{text}\n")
    assert state.hash == h


def test_replay_from_history_row() -> None:
    history = ops.encode_history("0" * 32, 7, {"n": 1})
    state = ops.replay("x", [(SEED, "history", history), (F2, "incAttrBy", '{"field":"n","by":2}')])
    assert state.value == {"n": 3}
    assert state.changes == 8
    assert state.count == 2
    assert state.base == SEED
    assert state.timestamp == F2
    assert state.hash == md5(f"{'0' * 32}\nx\n{F2}\nincAttrBy\n" + '{"field":"n","by":2}' + "\n")


def test_item_state_encode_round_trips() -> None:
    state = ops.replay("x", [(SEED, "putItem", '{"a":[1,2.5,"é"]}')])
    back = ops.ItemState.decode(state.encode())
    assert back == state
    assert back.copy() == state
