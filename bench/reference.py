"""The reference model: the op semantics, the history hash and flatten, in plain Python.

The oracle the tests and the benchmarks hold dyno-stream to. It imports nothing of
``dyno_stream`` (only the standard library), so a mistake in the store's code cannot hide in
its own oracle; ``tests/unit/test_reference.py`` holds it to level-dyno's seed example and
to hashes computed with coreutils' ``md5sum``.

What it models, from the README's account of the store (level-dyno's semantics):

- An item is the replay of its ops in flake order, starting from ``{}``; one without
  attributes reads as absent.
- ``putItem`` (object) replaces the item; ``delItem`` (``{}``) empties it and marks it
  deleted; ``putAttrs`` (object) sets attributes; ``delAttrs`` (list) removes them;
  ``incAttrBy`` / ``decAttrBy`` (``{"field", "by"}``) add or subtract, a missing or
  non-numeric attribute (a boolean is not a number) becoming ``by`` or ``-by``; ``append``
  (``{"field", "str"}``) appends to the attribute's text, a non-string value turned into its
  JSON text first; ``addToSet`` (``{"field", "value"}``) makes the attribute an object with
  the value's text as a member (``true``), keeping an object's members, making an existing
  scalar a member and keeping a list's scalar members.
- ``change_json``, the change as a row stores it and the hash reads it: compact JSON
  (separators ``,`` and ``:``), text as UTF-8 (not ``\\u`` escapes), Python's float notation,
  keys in the order given, except that the ``{"field", ...}`` changes come field first (they
  are validated to that shape before they are stored). NaN and infinities are refused.
- The hash: per op in flake order, ``md5(prev \\n name \\n flake \\n op \\n change_json \\n)``
  as lower-case hex, ``prev`` empty for the first op.
- Flatten: rows up to one (by its chain hash, or the last older than a flake) fold into one
  history row at that row's flake, whose text is ``<hash>:<changes>:<value json>`` (``null``
  for an item whose folded last op deleted it). An op at or before the history row can no
  longer be placed (late); the same op again is a duplicate; another op at a flake already
  taken is a conflict.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Json = Any
Value = dict[str, Json]

OPS = ("putItem", "delItem", "putAttrs", "delAttrs", "incAttrBy", "decAttrBy", "append", "addToSet")
#: the ops whose change is ``{"field": ..., <second>: ...}``, and that second key
FIELD_OPS = {"incAttrBy": "by", "decAttrBy": "by", "append": "str", "addToSet": "value"}
HISTORY = "history"
#: counters stay within 64-bit integers (what every JSON reader holds exactly)
MAX_INT_BITS = 64


class Refused(ValueError):
    """An op the semantics cannot apply (a counter beyond 64 bits or not finite, an unknown
    op, a change of the wrong shape): the store refuses it as an invalid change."""


# -- the pure functions --------------------------------------------------------------------


def compact(value: Json) -> str:
    """Compact JSON text: separators ``,`` and ``:``, UTF-8 text, key order kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def change_json(op: str, change: Json) -> str:
    """The text a row stores for ``change`` and the hash reads."""
    second = FIELD_OPS.get(op)
    if second is not None:
        if not isinstance(change, dict) or set(change) != {"field", second}:
            raise Refused(f"{op} takes {{'field', {second!r}}}, not {change!r}")
        change = {"field": change["field"], second: change[second]}
    return compact(change)


def text_of(value: Json) -> str:
    """A value as text: a string itself, anything else its compact JSON."""
    return value if isinstance(value, str) else compact(value)


def is_number(value: Json) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def apply_op(value: Value, op: str, change: Json) -> Value:
    """The item's value after one op: a new dict (neither ``value`` nor ``change`` is changed,
    and nothing nested in either is ever mutated, so they may share objects)."""
    if op == "putItem":
        return dict(change)
    if op == "delItem":
        return {}
    out = dict(value)
    if op == "putAttrs":
        out.update(change)
    elif op == "delAttrs":
        for name in change:
            out.pop(name, None)
    elif op in ("incAttrBy", "decAttrBy"):
        field, by = change["field"], change["by"]
        if op == "decAttrBy":
            by = -by
        old = out.get(field)
        try:
            new = old + by if is_number(old) else by
        except OverflowError:
            raise Refused(f"{op} overflows {field!r}") from None
        if isinstance(new, float) and not math.isfinite(new):
            raise Refused(f"{op} makes {field!r} non-finite")
        if isinstance(new, int) and new.bit_length() > MAX_INT_BITS:
            raise Refused(f"{op} takes {field!r} beyond {MAX_INT_BITS}-bit integers")
        out[field] = new
    elif op == "append":
        field = change["field"]
        out[field] = text_of(out[field]) + change["str"] if field in out else change["str"]
    elif op == "addToSet":
        field = change["field"]
        old = out.get(field)
        members: Value
        if field not in out:
            members = {}
        elif isinstance(old, dict):
            members = dict(old)
        elif isinstance(old, list):
            members = {text_of(v): True for v in old if not isinstance(v, dict | list)}
        else:
            members = {text_of(old): True}
        members[text_of(change["value"])] = True
        out[field] = members
    else:
        raise Refused(f"no such op {op!r}; the ops are {', '.join(OPS)}")
    return out


def chain_hash(prev: str, name: str, flake: str, op: str, change_text: str) -> str:
    """One link of the history hash."""
    link = f"{prev}\n{name}\n{flake}\n{op}\n{change_text}\n"
    return hashlib.md5(link.encode("utf-8")).hexdigest()


def history_text(hash_: str, changes: int, value: Value | None) -> str:
    """A history row's text; ``value`` None for a deleted item."""
    return f"{hash_}:{changes}:{'null' if value is None else compact(value)}"


# -- many items, ops fed in flake order ----------------------------------------------------


class Replay:
    """Every item's value, change count and hash after the ops fed so far.

    Ops must be fed in flake order per item (one flake generator for all of a test's ops gives
    that); an op out of order raises at once, as the model would be wrong from there on.
    With ``keep_chain`` it also keeps each item's flakes and the hash after each op.
    """

    def __init__(self, keep_chain: bool = False) -> None:
        self.values: dict[str, Value] = {}
        self.changes: Counter[str] = Counter()
        self.hashes: dict[str, str] = {}
        self.timestamps: dict[str, str] = {}
        self.deleted: dict[str, bool] = {}
        self.flakes: dict[str, list[str]] | None = {} if keep_chain else None
        self.chains: dict[str, list[str]] | None = {} if keep_chain else None

    def apply(self, name: str, flake: str, op: str, change: Json) -> None:
        last = self.timestamps.get(name)
        if last is not None and flake <= last:
            raise ValueError(f"{name}: op at {flake} fed after one at {last} (not flake order)")
        text = change_json(op, change)
        self.values[name] = apply_op(self.values.get(name, {}), op, change)
        self.hashes[name] = chain_hash(self.hashes.get(name, ""), name, flake, op, text)
        self.changes[name] += 1
        self.timestamps[name] = flake
        self.deleted[name] = op == "delItem"
        if self.flakes is not None and self.chains is not None:
            self.flakes.setdefault(name, []).append(flake)
            self.chains.setdefault(name, []).append(self.hashes[name])

    def value(self, name: str) -> Value | None:
        """The value as read: None for an item without attributes."""
        return self.values[name] or None

    def only(self, names: Iterable[str]) -> Replay:
        """The same model restricted to ``names`` (chains are not carried)."""
        out = Replay()
        for n in names:
            out.values[n] = self.values[n]
            out.changes[n] = self.changes[n]
            out.hashes[n] = self.hashes[n]
            out.timestamps[n] = self.timestamps[n]
            out.deleted[n] = self.deleted[n]
        return out


# -- one item, ops in any order, with flatten ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """An item after one of its ops (in flake order)."""

    flake: str
    op: str
    change_json: str
    hash: str
    changes: int
    value: Value
    deleted: bool


@dataclass(frozen=True, slots=True)
class State:
    """What a store reads back for an item: value (None when absent), the last op's flake,
    every op counted, the hash after the last, the rows stored now, deleted or not."""

    value: Value | None
    timestamp: str | None
    changes: int
    hash: str | None
    count: int
    deleted: bool


STORED, DUPLICATE, LATE, CONFLICT = "stored", "duplicate", "late", "conflict"
FOLDED, NOTHING, UNKNOWN_HASH = "folded", "nothing", "unknown-hash"


class ItemHistory:
    """One item as a store holds it: every op it accepted, whatever order they came in, and
    where its history row lies (``base``, the flake of the last op folded)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ops: dict[str, tuple[str, Json]] = {}  # flake -> (op, change), folded ones too
        self.base: str | None = None

    def offer(self, flake: str, op: str, change: Json) -> str:
        """An op arrives: ``stored``, ``duplicate`` (the same op again), ``late`` (at or
        before the history row) or ``conflict`` (another op at a flake already taken)."""
        if self.base is not None and flake <= self.base:
            return LATE
        if flake in self.ops:
            old_op, old_change = self.ops[flake]
            same = old_op == op and change_json(old_op, old_change) == change_json(op, change)
            return DUPLICATE if same else CONFLICT
        self.ops[flake] = (op, change)
        return STORED

    def steps(self) -> list[Step]:
        """The item after each op, in flake order (folded ops included)."""
        out: list[Step] = []
        h, value = "", {}
        for i, flake in enumerate(sorted(self.ops)):
            op, change = self.ops[flake]
            text = change_json(op, change)
            value = apply_op(value, op, change)
            h = chain_hash(h, self.name, flake, op, text)
            out.append(Step(flake, op, text, h, i + 1, value, op == "delItem"))
        return out

    def _stored(self) -> list[Step]:
        """The steps whose rows are stored: the history row's and the ops after it."""
        return [s for s in self.steps() if self.base is None or s.flake >= self.base]

    def _fold_to(self, step: Step | None) -> str:
        if step is None or step.flake == self.base:
            return NOTHING
        self.base = step.flake
        return FOLDED

    def flatten(self, hash_: str) -> str:
        """Fold every row up to the one whose chain hash is ``hash_``."""
        for s in self._stored():
            if s.hash == hash_:
                return self._fold_to(s)
        return UNKNOWN_HASH

    def flatten_before(self, flake: str, hash_: str | None = None) -> str:
        """Fold every row older than ``flake``; given ``hash_`` (compaction), not past the row
        with that hash. A hash no longer stored was folded by an earlier pass when the item
        has a history row (nothing to do), and is unknown otherwise."""
        stored = self._stored()
        older = [s for s in stored if s.flake < flake]
        if hash_ is not None:
            at = next((i for i, s in enumerate(stored) if s.hash == hash_), None)
            if at is None:
                return NOTHING if self.base is not None else UNKNOWN_HASH
            older = older[: at + 1]
        return self._fold_to(older[-1] if older else None)

    def state(self) -> State:
        steps = self.steps()
        if not steps:
            return State(None, None, 0, None, 0, False)
        last = steps[-1]
        count = sum(1 for s in steps if self.base is None or s.flake >= self.base)
        return State(last.value or None, last.flake, last.changes, last.hash, count, last.deleted)

    def rows(self) -> list[tuple[str, str, str]]:
        """``(flake, op, text)`` of each row stored, in key order; a history row's op is
        ``history`` and its text ``history_text``."""
        out = []
        for s in self._stored():
            if s.flake == self.base:
                value = None if s.deleted else s.value
                out.append((s.flake, HISTORY, history_text(s.hash, s.changes, value)))
            else:
                out.append((s.flake, s.op, s.change_json))
        return out
