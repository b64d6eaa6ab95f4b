"""The wire models (dyno_stream.core.events): building, parsing and refusing op events."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from dyno_stream.core.errors import (
    DynoError,
    InvalidChangeError,
    InvalidFlakeError,
    InvalidNameError,
    ValidationError,
)
from dyno_stream.core.events import (
    AddToSet,
    Append,
    DecAttrBy,
    DelAttrs,
    DelItem,
    Flatten,
    IncAttrBy,
    PutAttrs,
    PutItem,
    make_op,
    parse_event,
)

SEED = "013d58c7276e-0000-188c-786ae2e1f629"
HASH = "2b847185c137c7f8ff54bf5ebf72bb6e"

GOOD: list[tuple[str, type[Any], Any, str]] = [
    ("putItem", PutItem, {"nick": "chilts", "email": "me@example.com"},
     '{"nick":"chilts","email":"me@example.com"}'),
    ("delItem", DelItem, {}, "{}"),
    ("putAttrs", PutAttrs, {"z": [1, 2.5, None], "a": {"é": True}},
     '{"z":[1,2.5,null],"a":{"é":true}}'),
    ("delAttrs", DelAttrs, ["email", "x"], '["email","x"]'),
    ("incAttrBy", IncAttrBy, {"field": "n", "by": 2}, '{"field":"n","by":2}'),
    ("decAttrBy", DecAttrBy, {"field": "n", "by": 0.5}, '{"field":"n","by":0.5}'),
    ("append", Append, {"field": "log", "str": "ü"}, '{"field":"log","str":"ü"}'),
    ("addToSet", AddToSet, {"field": "tags", "value": "red"}, '{"field":"tags","value":"red"}'),
    ("addToSet", AddToSet, {"field": "tags", "value": 5}, '{"field":"tags","value":5}'),
    ("addToSet", AddToSet, {"field": "tags", "value": None}, '{"field":"tags","value":null}'),
]  # fmt: skip


@pytest.mark.parametrize(("op", "model", "change", "text"), GOOD)
def test_make_op(op: str, model: type[Any], change: Any, text: str) -> None:
    event = make_op(op, "chilts", change, SEED)
    assert isinstance(event, model)
    assert event.op == op
    assert event.item == "chilts"
    assert event.ts == SEED
    assert event.change_json == text
    assert event.change_value == json.loads(text)


@pytest.mark.parametrize(("op", "model", "change", "text"), GOOD)
def test_parse_event(op: str, model: type[Any], change: Any, text: str) -> None:
    raw = json.dumps({"op": op, "item": "a/b", "ts": SEED, "change": change}).encode()
    event = parse_event(raw)
    assert isinstance(event, model)
    assert event.item == "a/b"
    assert event.change_json == text


def test_parse_flatten() -> None:
    event = parse_event(json.dumps({"op": "flatten", "item": "chilts", "hash": HASH}))
    assert isinstance(event, Flatten)
    assert (event.item, event.hash) == ("chilts", HASH)
    with pytest.raises(ValidationError) as info:
        parse_event(json.dumps({"op": "flatten", "item": "chilts", "hash": HASH.upper()}))
    assert info.value.field == "hash"


def test_float_stays_float_and_int_stays_int() -> None:
    assert make_op("incAttrBy", "a", {"field": "n", "by": 1.0}, SEED).change_json == (
        '{"field":"n","by":1.0}'
    )
    assert make_op("putItem", "a", {"i": 1, "f": 1.0}, SEED).change_json == '{"i":1,"f":1.0}'


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "x" * 1025, "\ud800"])
def test_bad_item_names(name: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        make_op("putItem", name, {"a": 1}, SEED)
    assert info.value.field == "item"


def test_non_string_item_name() -> None:
    with pytest.raises(InvalidNameError) as info:
        make_op("putItem", 5, {"a": 1}, SEED)  # type: ignore[arg-type]
    assert info.value.field == "item"


def test_1024_byte_name_accepted() -> None:
    assert make_op("putItem", "x" * 1024, {"a": 1}, SEED).item == "x" * 1024


@pytest.mark.parametrize(
    "ts",
    [
        "013D58C7276E-0000-188C-786AE2E1F629",
        "013d58c7276e-0000-188c",
        "",
        "now",
        SEED + "\n",
        " " + SEED,
    ],
)
def test_bad_flakes(ts: str) -> None:
    with pytest.raises(InvalidFlakeError) as info:
        make_op("putItem", "a", {"a": 1}, ts)
    assert info.value.field == "ts"
    raw = json.dumps({"op": "putItem", "item": "a", "ts": ts, "change": {}})
    with pytest.raises(InvalidFlakeError) as info2:
        parse_event(raw)
    assert info2.value.field == "ts"


BAD_SHAPES: list[tuple[str, Any, str]] = [
    ("putItem", [1, 2], "change"),
    ("putItem", "text", "change"),
    ("putItem", None, "change"),
    ("putAttrs", ["a"], "change"),
    ("delItem", {"a": 1}, "change"),
    ("delAttrs", "email", "change"),
    ("delAttrs", {"email": 1}, "change"),
    ("delAttrs", ["ok", 1], "change.1"),
    ("incAttrBy", {"by": 1}, "change.field"),
    ("incAttrBy", {"field": "n", "by": "x"}, "change.by"),
    ("incAttrBy", {"field": "n", "by": [1]}, "change.by"),
    ("decAttrBy", {"field": "n", "by": None}, "change.by"),
    ("incAttrBy", {"field": "n", "by": 1, "extra": 2}, "change.extra"),
    ("incAttrBy", "n", "change"),
    ("append", {"field": "s"}, "change.str"),
    ("append", {"str": "x"}, "change.field"),
    ("append", {"field": 5, "str": "x"}, "change.field"),
    ("addToSet", {"field": "t", "value": [1]}, "change.value"),
    ("addToSet", {"field": "t", "value": {"a": 1}}, "change.value"),
    ("addToSet", {"field": "t"}, "change.value"),
]


@pytest.mark.parametrize(("op", "change", "field"), BAD_SHAPES)
def test_wrong_shape_changes_refused_naming_the_field(op: str, change: Any, field: str) -> None:
    with pytest.raises(InvalidChangeError) as info:
        make_op(op, "a", change, SEED)
    assert info.value.field == field
    assert isinstance(info.value, DynoError)
    raw = json.dumps({"op": op, "item": "a", "ts": SEED, "change": change})
    with pytest.raises(InvalidChangeError) as info2:
        parse_event(raw)
    assert info2.value.field == field


def test_append_non_string_str_names_the_str_field() -> None:
    # the `str` field of append must be named as such, not collapsed into "change"
    with pytest.raises(InvalidChangeError) as info:
        make_op("append", "a", {"field": "s", "str": 5}, SEED)
    assert info.value.field == "change.str"


@pytest.mark.parametrize("by", ["5", True, "1e3"])
def test_inc_by_must_be_a_number_not_coerced(by: Any) -> None:
    # {"field","by"}: a string or a boolean `by` is a change of the wrong shape; it must not
    # be silently coerced into a number (the stored change would differ from the event's)
    with pytest.raises(InvalidChangeError) as info:
        make_op("incAttrBy", "a", {"field": "n", "by": by}, SEED)
    assert info.value.field == "change.by"
    raw = json.dumps(
        {"op": "incAttrBy", "item": "a", "ts": SEED, "change": {"field": "n", "by": by}}
    )
    with pytest.raises(InvalidChangeError):
        parse_event(raw)


@pytest.mark.parametrize(
    ("op", "change", "field"),
    [
        ("putItem", {"x": math.nan}, "change.x"),
        ("putItem", {"x": {"y": [1, math.inf]}}, "change.x.y.1"),
        ("putAttrs", {"x": -math.inf}, "change.x"),
        ("incAttrBy", {"field": "n", "by": math.inf}, "change.by"),
        ("decAttrBy", {"field": "n", "by": math.nan}, "change.by"),
        ("addToSet", {"field": "t", "value": math.nan}, "change.value"),
    ],
)
def test_non_finite_numbers_refused(op: str, change: Any, field: str) -> None:
    with pytest.raises(InvalidChangeError) as info:
        make_op(op, "a", change, SEED)
    assert info.value.field == field


@pytest.mark.parametrize(
    "raw_change",
    [
        '{"x":NaN}',
        '{"x":Infinity}',
        '{"x":[1,-Infinity]}',
        '{"x":1e400}',
    ],
)
def test_non_finite_numbers_refused_on_the_wire(raw_change: str) -> None:
    raw = f'{{"op":"putItem","item":"a","ts":"{SEED}","change":{raw_change}}}'
    with pytest.raises(InvalidChangeError) as info:
        parse_event(raw.encode())
    assert info.value.field.startswith("change")


@pytest.mark.parametrize("bad", [{1, 2}, (1, 2), b"bytes", object(), {1: "a"}, 1 + 2j])
def test_values_that_are_not_json_refused(bad: Any) -> None:
    with pytest.raises(InvalidChangeError) as info:
        make_op("putItem", "a", {"x": bad}, SEED)
    assert info.value.field.startswith("change.x")


def test_unknown_op() -> None:
    with pytest.raises(InvalidChangeError) as info:
        make_op("frobnicate", "a", {}, SEED)
    assert info.value.field == "op"
    with pytest.raises(ValidationError) as info2:
        parse_event(json.dumps({"op": "frobnicate", "item": "a", "ts": SEED, "change": {}}))
    assert info2.value.field == "op"
    with pytest.raises(ValidationError) as info3:
        parse_event(json.dumps({"item": "a", "ts": SEED, "change": {}}))
    assert info3.value.field == "op"


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1,2]", b'{"op":"putItem"', b"\xff\xfe"])
def test_garbage_on_the_wire_is_a_validation_error(raw: bytes) -> None:
    with pytest.raises(ValidationError):
        parse_event(raw)


def test_unknown_top_level_field_refused() -> None:
    raw = json.dumps({"op": "delItem", "item": "a", "ts": SEED, "change": {}, "x": 1})
    with pytest.raises(ValidationError) as info:
        parse_event(raw)
    assert info.value.field == "x"


@pytest.mark.parametrize(
    ("op", "change"),
    [
        ("putItem", {"a": "x\ud800"}),
        ("putAttrs", {"\udc00": 1}),
        ("append", {"field": "f", "str": "\ud800"}),
        ("delAttrs", ["\ud800"]),
    ],
)
def test_lone_surrogate_in_change_refused(op: str, change: Any) -> None:
    # not encodable as UTF-8, so not JSON that can be stored or hashed
    with pytest.raises(InvalidChangeError) as info:
        make_op(op, "a", change, SEED)
    assert info.value.field.startswith("change")
