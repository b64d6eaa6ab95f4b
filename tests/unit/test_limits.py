"""Limits on one event (``dyno_stream.core.limits``): pure checks, and the store's attribute limit.

The worker-level behaviour (dead letters with these reasons, on a real broker) is in
``test_poison_fuzz.py``; here each check is held to its boundary, and the fast paths are held
to the exact answer (a fast path that let a too-deep change through would be a hole).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dyno_stream.config import MAX_PARSE_DEPTH, WorkerSettings, load_settings
from dyno_stream.core.errors import (
    ConfigError,
    InvalidChangeError,
    InvalidNameError,
    LimitError,
    NameTooLongError,
    NotJsonError,
    OversizedEventError,
    TooDeepError,
    TooManyAttrsError,
    ValidationError,
)
from dyno_stream.core.events import Flatten, make_op, parse_event
from dyno_stream.core.flake import format_flake
from dyno_stream.core.limits import Limits, check_attrs, nesting_depth, raw_depth
from dyno_stream.store import DynoStore

SEED_MS = 0x013D58C7276E


def F(i: int) -> str:
    return format_flake(SEED_MS + i, 0, 0x188C, 0x786AE2E1F629)


def nest(depth: int, leaf: Any = 1, kind: str = "dict") -> Any:
    """A value ``depth`` objects (or arrays) deep around ``leaf``."""
    v = leaf
    for _ in range(depth):
        v = {"k": v} if kind == "dict" else [v]
    return v


def event_bytes(item: str = "x", op: str = "putAttrs", change: Any = None) -> bytes:
    change = {"a": 1} if change is None else change
    return json.dumps({"item": item, "op": op, "ts": F(0), "change": change}).encode()


def refused(limits: Limits, raw: bytes) -> ValidationError | None:
    """What the worker's validation step makes of ``raw``: the error, or None when valid."""
    try:
        event = parse_event(raw)
    except ValidationError as exc:
        return limits.explain(exc, raw)
    try:
        limits.check(event)
    except LimitError as exc:
        return exc
    return None


# -- the error classes -------------------------------------------------------------------------


def test_every_limit_error_is_a_validation_error_with_its_own_reason() -> None:
    reasons = {
        cls: cls("f", "m").reason
        for cls in (OversizedEventError, NameTooLongError, TooDeepError, TooManyAttrsError)
    }
    assert reasons == {
        OversizedEventError: "oversized",
        NameTooLongError: "name-too-long",
        TooDeepError: "too-deep",
        TooManyAttrsError: "too-many-attrs",
    }
    for cls in reasons:
        assert issubclass(cls, LimitError) and issubclass(cls, ValidationError)
    # callers that catch the older, broader classes still catch these
    assert issubclass(NameTooLongError, InvalidNameError)
    assert issubclass(TooDeepError, InvalidChangeError)
    assert issubclass(TooManyAttrsError, InvalidChangeError)


# -- name length -------------------------------------------------------------------------------


def test_name_at_the_limit_passes_one_byte_more_is_refused() -> None:
    limits = Limits(max_name_bytes=10)
    assert refused(limits, event_bytes("x" * 10)) is None
    assert refused(limits, event_bytes("é" * 5)) is None  # 10 bytes in 5 characters
    for name in ("x" * 11, "é" * 5 + "x", "日本語x"[:3] + "xx"):  # 11 bytes each
        err = refused(limits, event_bytes(name))
        assert isinstance(err, NameTooLongError), name
        assert err.field == "item" and "11 bytes" in str(err) and "10" in str(err)


def test_flatten_commands_have_their_names_checked_too() -> None:
    limits = Limits(max_name_bytes=4)
    raw = json.dumps({"item": "abcde", "op": "flatten", "hash": "0" * 32}).encode()
    assert isinstance(parse_event(raw), Flatten)
    assert isinstance(refused(limits, raw), NameTooLongError)


def test_names_past_the_stores_own_1024_bytes_say_name_too_long() -> None:
    """The wire contract refuses them first; the reason given is still the limit's."""
    limits = Limits()  # max_name_bytes = 1024, the store's maximum
    for name in ("x" * 1025, "€" * 342):
        with pytest.raises(InvalidNameError) as info:
            parse_event(event_bytes(name))
        err = limits.explain(info.value, event_bytes(name))
        assert isinstance(err, NameTooLongError) and err.reason == "name-too-long", name
    # other bad names keep their own reason
    for name in ("", "\ud800"):
        err = refused(limits, event_bytes(name))
        assert err is not None and err.reason in ("invalid", "not-json"), (name, err)
        assert not isinstance(err, LimitError)


# -- nesting depth -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dict", "list"])
def test_depth_at_the_limit_passes_one_more_is_refused(kind: str) -> None:
    limits = Limits(max_depth=5)
    # the change is level 1: {"a": <4 more levels>} is 5 deep
    assert refused(limits, event_bytes(change={"a": nest(4, kind=kind)})) is None
    err = refused(limits, event_bytes(change={"a": nest(5, kind=kind)}))
    assert isinstance(err, TooDeepError) and err.reason == "too-deep"
    assert err.field == "change" and "5" in str(err)
    # putItem nests like putAttrs
    err = refused(limits, event_bytes(op="putItem", change={"a": nest(5, kind=kind)}))
    assert isinstance(err, TooDeepError)


def test_brackets_inside_strings_do_not_count() -> None:
    limits = Limits(max_depth=2)
    change = {"text": "{[" * 50, "list": [1, 2]}
    assert refused(limits, event_bytes(change=change)) is None
    # nor do many shallow containers side by side
    wide = {f"k{i}": [i] for i in range(40)}
    assert refused(limits, event_bytes(change=wide)) is None


def test_ops_with_flat_changes_are_never_deep() -> None:
    limits = Limits(max_depth=1)
    for op, change in [
        ("incAttrBy", {"field": "{[{[{[", "by": 1}),
        ("append", {"field": "s", "str": "[[[[[[[[[[[["}),
        ("addToSet", {"field": "t", "value": "{{{{{{{"}),
        ("delAttrs", ["[[[[", "{{{{"]),
    ]:
        assert refused(limits, event_bytes(op=op, change=change)) is None, op


def test_deeper_than_the_parser_takes_is_too_deep_not_broken_json() -> None:
    limits = Limits()
    raw = b'{"item":"x","op":"putAttrs","ts":"%s","change":{"a":%s1%s}}' % (
        F(0).encode(),
        b"[" * 5000,
        b"]" * 5000,
    )
    with pytest.raises(NotJsonError):
        parse_event(raw)
    err = refused(limits, raw)
    assert isinstance(err, TooDeepError), err
    assert "32" in str(err)
    # broken JSON that is not deep keeps its reason, brackets in strings or not
    for broken in (b'{"item": "x", "op"', b'{"a": "' + b"[" * 500 + b'"', b"\xff\xfe"):
        err = refused(limits, broken)
        assert isinstance(err, NotJsonError) and err.reason == "not-json", broken


def test_max_depth_stays_below_the_parsers_own_limit() -> None:
    """Else the parser, not the limit, would answer, with reason not-json (explain fixes
    that, but only for what the parser refused as such)."""
    raw = event_bytes(change=nest(MAX_PARSE_DEPTH))
    assert parse_event(raw).op == "putAttrs"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab{}[]"\\', max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet="k{[", max_size=3), children, max_size=3)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(min_value=1, max_value=8))
def test_the_fast_path_agrees_with_the_exact_depth(value: Any, max_depth: int) -> None:
    change = {"v": value}
    depth = nesting_depth(change, 10_000)
    assert raw_depth(json.dumps(change).encode()) == depth
    err = refused(Limits(max_depth=max_depth), event_bytes(change=change))
    assert (err is not None) == (depth > max_depth), (depth, max_depth, err)
    assert err is None or isinstance(err, TooDeepError)


def test_nesting_depth_counts_containers_and_stops_early() -> None:
    assert nesting_depth(1, 5) == 0
    assert nesting_depth({}, 5) == 1
    assert nesting_depth({"a": [1, {"b": []}]}, 5) == 4
    assert nesting_depth(nest(100_000), 10) == 11  # stopped: no deeper walk, no recursion


# -- attributes per item -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "change", "value", "ok"),
    [
        ("putItem", {"a": 1, "b": 2, "c": 3}, {}, True),
        ("putItem", {"a": 1, "b": 2, "c": 3, "d": 4}, {}, False),
        ("putItem", {"a": 1, "b": 2, "c": 3, "d": 4}, {f"k{i}": i for i in range(9)}, True),
        ("putAttrs", {"c": 3}, {"a": 1, "b": 2}, True),
        ("putAttrs", {"c": 3, "d": 4}, {"a": 1, "b": 2}, False),
        ("putAttrs", {"a": 3, "b": 4}, {"a": 1, "b": 2, "c": 3}, True),  # updates only
        ("incAttrBy", {"field": "d", "by": 1}, {"a": 1, "b": 2, "c": 3}, False),
        ("incAttrBy", {"field": "a", "by": 1}, {"a": 1, "b": 2, "c": 3}, True),
        ("decAttrBy", {"field": "d", "by": 1}, {"a": 1, "b": 2, "c": 3}, False),
        ("append", {"field": "d", "str": "x"}, {"a": 1, "b": 2, "c": 3}, False),
        ("append", {"field": "c", "str": "x"}, {"a": 1, "b": 2, "c": 3}, True),
        ("addToSet", {"field": "d", "value": 1}, {"a": 1, "b": 2, "c": 3}, False),
        ("delAttrs", ["a", "z", "y"], {"a": 1, "b": 2, "c": 3}, True),
        ("delItem", {}, {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}, True),
        # over a lowered limit: may change and shrink, never grow
        ("putAttrs", {"a": 9}, {"a": 1, "b": 2, "c": 3, "d": 4}, True),
        ("putAttrs", {"z": 9}, {"a": 1, "b": 2, "c": 3, "d": 4}, False),
    ],
)
def test_check_attrs(op: str, change: Any, value: dict[str, Any], ok: bool) -> None:
    before = dict(value)
    if ok:
        check_attrs(value, op, change, 3)
    else:
        with pytest.raises(TooManyAttrsError) as info:
            check_attrs(value, op, change, 3)
        assert info.value.reason == "too-many-attrs" and "3" in str(info.value)
    assert value == before, "the check never changes the value"


def test_store_refuses_the_op_that_would_grow_an_item_past_max_attrs(tmp_path: Path) -> None:
    with DynoStore(tmp_path / "db", max_attrs=3) as store:
        store.put_attrs("x", {"a": 1, "b": 2}, ts=F(0))
        errors: list[tuple[int, str]] = []
        batch = [
            make_op("putAttrs", "x", {"c": 3, "d": 4}, F(1)),  # 4: refused
            make_op("incAttrBy", "x", {"field": "a", "by": 5}, F(2)),  # update: fine
            make_op("append", "x", {"field": "c", "str": "s"}, F(3)),  # 3: fine
            make_op("addToSet", "x", {"field": "d", "value": 1}, F(4)),  # 4: refused
            make_op("putItem", "y", {f"k{i}": i for i in range(4)}, F(5)),  # refused
            make_op("putItem", "y", {"k": 1}, F(6)),
        ]
        touched = store.apply(
            batch, on_error=lambda i, _e, err: errors.append((i, type(err).__name__))
        )
        assert errors == [
            (0, "TooManyAttrsError"),
            (3, "TooManyAttrsError"),
            (4, "TooManyAttrsError"),
        ]
        assert touched == ["x", "y"]
        x = store.get_item("x")
        assert x.value == {"a": 6, "b": 2, "c": "s"} and x.changes == 3 and x.count == 3
        assert store.get_item("y").value == {"k": 1}
        # the refused ops left no row, and the state is the replay of the rows that are there
        with DynoStore(tmp_path / "replay") as ref:
            ref.put_attrs("x", {"a": 1, "b": 2}, ts=F(0))
            ref.apply([batch[i] for i in (1, 2, 5)])
            assert (ref.get_item("x").value, ref.get_item("x").hash) == (x.value, x.hash)
        # an op arriving out of order is held to the same limit
        with pytest.raises(TooManyAttrsError):
            store.put_attrs("x", {"late": 1}, ts=F(1))
        assert store.get_item("x") == x
        store.put_attrs("x", {"a": 0}, ts=F(1))  # out of order, no new attribute: placed
        assert store.get_item("x").changes == 4


def test_a_store_without_a_limit_takes_any_number_of_attributes(tmp_path: Path) -> None:
    with DynoStore(tmp_path / "db") as store:
        store.put_item("x", {f"k{i}": i for i in range(20_000)}, ts=F(0))
        assert len(store.get_item("x").value or {}) == 20_000


# -- settings ----------------------------------------------------------------------------------


def test_limits_come_from_the_worker_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNO_WORKER__MAX_NAME_BYTES", "100")
    monkeypatch.setenv("DYNO_WORKER__MAX_DEPTH", "7")
    monkeypatch.setenv("DYNO_WORKER__MAX_ATTRS", "50")
    limits = Limits.from_settings(load_settings().worker)
    assert (limits.max_name_bytes, limits.max_depth, limits.max_attrs) == (100, 7, 50)
    assert limits.max_event_bytes == 1_048_576
    defaults = Limits.from_settings(WorkerSettings())
    assert (defaults.max_name_bytes, defaults.max_depth, defaults.max_attrs) == (1024, 32, 10_000)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_NAME_BYTES", "1025"),
        ("MAX_NAME_BYTES", "0"),
        ("MAX_DEPTH", "0"),
        ("MAX_DEPTH", str(MAX_PARSE_DEPTH + 1)),
        ("MAX_ATTRS", "0"),
    ],
)
def test_limits_out_of_range_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"DYNO_WORKER__{name}", value)
    with pytest.raises(ConfigError, match=name.lower()):
        load_settings()
