"""Op semantics, the history hash and the item state: pure logic, no I/O.

The item is the replay of its rows in key (flake) order, starting from ``{}``. Everything here
is deterministic, so two replicas holding the same rows hold the same value and hash whatever
order the rows arrived in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from dyno_stream.core.errors import InvalidChangeError

PUT_ITEM = "putItem"
DEL_ITEM = "delItem"
PUT_ATTRS = "putAttrs"
DEL_ATTRS = "delAttrs"
INC_ATTR_BY = "incAttrBy"
DEC_ATTR_BY = "decAttrBy"
APPEND = "append"
ADD_TO_SET = "addToSet"
HISTORY = "history"

OP_NAMES = (PUT_ITEM, DEL_ITEM, PUT_ATTRS, DEL_ATTRS, INC_ATTR_BY, DEC_ATTR_BY, APPEND, ADD_TO_SET)

JsonDict = dict[str, Any]

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_decode = json.JSONDecoder().decode


def dumps_floatless(value: Any) -> str:
    """``dumps`` for a value that is known to hold no float (the shape says so)."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, or a lone surrogate
        text = _encode(value)
        text.encode()
        return text


def dumps(value: Any) -> str:
    """The canonical JSON text of a value, as changes are stored and hashed.

    Exactly ``json.dumps(value, separators=(",", ":"), ensure_ascii=False)`` (the contract),
    refusing NaN and infinities with ``ValueError``. orjson writes the same text ten times
    faster for values without floats (its float notation differs from Python's), so it
    does those; the stdlib does the rest.
    """
    kind = _float_kind(value) if type(value) is not str else _NO_FLOAT
    if kind == _NON_FINITE:
        raise ValueError("a number is not finite (NaN or Infinity)")
    if kind == _NO_FLOAT:
        try:
            return orjson.dumps(value).decode()
        except orjson.JSONEncodeError:  # an integer beyond 64 bits, or a lone surrogate
            pass
    text = _encode(value)
    text.encode()  # UnicodeEncodeError for a lone surrogate, as orjson would say
    return text


def dumps_internal(value: Any) -> bytes:
    """``dumps`` as bytes, for internal rows (materialized states)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return _encode(value).encode()


_NO_FLOAT, _FINITE, _NON_FINITE = 0, 1, 2
_CONTAINERS = {float, dict, list}


def _float_kind(value: Any) -> int:
    """Whether ``value`` holds floats, and whether all of them are finite."""
    t = type(value)
    if t is float:
        return _FINITE if value - value == 0.0 else _NON_FINITE
    if t is dict or t is list:
        kind = _NO_FLOAT
        for v in value.values() if t is dict else value:
            if type(v) in _CONTAINERS:
                k = _float_kind(v)
                if k == _NON_FINITE:
                    return k
                kind = max(kind, k)
        return kind
    return _NO_FLOAT


def loads(text: str | bytes) -> Any:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return _decode(text)


try:  # CPython's own MD5 skips OpenSSL's per-call set-up: twice as fast on short inputs
    from _md5 import md5 as md5  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - CPython built without it
    md5 = hashlib.md5


def chain_hash(prev: str, name: str, flake: str, op: str, change_json: str) -> str:
    """One link of the history hash: ``md5(prev\\nname\\nflake\\nop\\nchange\\n)``."""
    digest: str = md5(f"{prev}\n{name}\n{flake}\n{op}\n{change_json}\n".encode()).hexdigest()
    return digest


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _text_of(v: Any) -> str:
    return v if isinstance(v, str) else dumps(v)


_MISSING = object()

#: Counters stay within what JSON readers (and every replica's encoder) handle exactly.
MAX_INT_BITS = 64


def apply_op(value: JsonDict, op: str, change: Any) -> JsonDict:
    """Apply one op to an item value and return the new value.

    ``value`` may be changed in place (the caller owns it); nested objects that came from a
    change are never mutated, so a change can be shared with the value safely.
    """
    if op == PUT_ATTRS:
        value.update(change)
        return value
    if op == PUT_ITEM:
        return dict(change)
    if op == DEL_ITEM:
        return {}
    if op == DEL_ATTRS:
        for attr in change:
            value.pop(attr, None)
        return value
    if op in (INC_ATTR_BY, DEC_ATTR_BY):
        by = change["by"] if op == INC_ATTR_BY else -change["by"]
        name = change["field"]
        old = value.get(name)
        try:
            new = old + by if _is_number(old) else by
        except OverflowError:  # a huge integer plus a float
            raise InvalidChangeError("change.by", f"{op} would overflow {name!r}") from None
        if isinstance(new, float) and (new != new or new in (float("inf"), float("-inf"))):
            raise InvalidChangeError("change.by", f"{op} would make {name!r} non-finite")
        if isinstance(new, int) and new.bit_length() > MAX_INT_BITS:
            raise InvalidChangeError(
                "change.by", f"{op} would take {name!r} beyond {MAX_INT_BITS}-bit integers"
            )
        value[name] = new
        return value
    if op == APPEND:
        name = change["field"]
        old = value.get(name, _MISSING)
        value[name] = change["str"] if old is _MISSING else _text_of(old) + change["str"]
        return value
    if op == ADD_TO_SET:
        name = change["field"]
        old = value.get(name, _MISSING)
        if isinstance(old, dict):
            members = dict(old)
        elif old is _MISSING:
            members = {}
        elif isinstance(old, list):
            members = {_text_of(v): True for v in old if not isinstance(v, dict | list)}
        else:
            members = {_text_of(old): True}
        members[_text_of(change["value"])] = True
        value[name] = members
        return value
    raise InvalidChangeError("op", f"unknown op {op!r}")


def encode_history(hash_: str, changes: int, value: JsonDict | None) -> str:
    """A history row's value: ``<hash>:<changes>:<value json>`` (level-dyno's format).

    ``value`` None (``null``) is a deleted item's marker: the history of an item whose last
    op deleted it, holding no attribute value (``{}`` is an item that was emptied)."""
    return f"{hash_}:{changes}:{'null' if value is None else dumps(value)}"


def decode_history(text: str) -> tuple[str, int, JsonDict | None]:
    """``(hash, changes, value)`` of a history row; value None for a deleted marker."""
    hash_, changes, value = text.split(":", 2)
    return hash_, int(changes), loads(value)


@dataclass(slots=True)
class ItemState:
    """The materialized current state of one item, kept beside its rows.

    ``base`` is the flake of the item's history row (None when it has none): an op at or
    before it can no longer be placed. ``deleted``: the item's last op deleted it
    (``delItem``, or an erasure); its snapshot is then a tombstone.
    """

    value: JsonDict = field(default_factory=dict)
    timestamp: str | None = None
    changes: int = 0
    hash: str = ""
    count: int = 0
    base: str | None = None
    deleted: bool = False

    def push(self, name: str, flake: str, op: str, change: Any, change_json: str) -> None:
        """Apply an op that sorts after every row the state holds."""
        self.value = apply_op(self.value, op, change)
        self.hash = chain_hash(self.hash, name, flake, op, change_json)
        self.timestamp = flake
        self.changes += 1
        self.count += 1
        self.deleted = op == DEL_ITEM

    def push_history(self, flake: str, text: str) -> None:
        """Start from a history row (it is always an item's first row)."""
        self.hash, self.changes, value = decode_history(text)
        self.deleted = value is None  # a deleted item's marker
        self.value = {} if value is None else value
        self.timestamp = self.base = flake
        self.count += 1

    def encode(self) -> bytes:
        fields = [self.timestamp, self.changes, self.hash, self.count, self.base, self.value]
        if self.deleted:  # states written before deletions were tracked have 6 fields
            fields.append(True)
        return dumps_internal(fields)

    @classmethod
    def decode(cls, text: str | bytes) -> ItemState:
        ts, changes, hash_, count, base, value, *deleted = loads(text)
        return cls(value, ts, changes, hash_, count, base, bool(deleted))

    def copy(self) -> ItemState:
        return ItemState(
            dict(self.value),
            self.timestamp,
            self.changes,
            self.hash,
            self.count,
            self.base,
            self.deleted,
        )

    def history_value(self) -> JsonDict | None:
        """The value a history row folding this state holds: None (the deleted marker)
        when the item is deleted."""
        return None if self.deleted else self.value


def replay(name: str, rows: Iterable[tuple[str, str, str]]) -> ItemState:
    """Replay ``(flake, op, stored json)`` rows in key order into a state."""
    state = ItemState()
    for flake, op, text in rows:
        if op == HISTORY:
            state.push_history(flake, text)
        else:
            state.push(name, flake, op, loads(text), text)
    return state
