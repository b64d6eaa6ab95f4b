"""The expected state of every item after the ops a benchmark produced, for checking its end.

A benchmark feeds each op it sends through ``ItemReference.fed`` (which hands the payload on
to the producer), then holds each item's newest snapshot to it with ``SnapshotCheck``. The
op semantics and the history hash are ``reference.py``'s, the model the tests use too,
which is independent of the store's code.

It is compact so a million items fit beside the broker and the workers: per item a tuple of
``changes``, the hash's hex text and the value as JSON bytes with sorted keys (canonical, so
attribute order does not matter), rather than a dict per value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from reference import apply_op, chain_hash, change_json

_EMPTY = b"{}"


def canonical(value: dict[str, Any] | None) -> bytes:
    """A value as JSON bytes with sorted keys; an item without attributes as ``{}``.

    The stdlib, not orjson: orjson's bytes keep their 4 KiB allocation (tracemalloc: 4,089 B
    per item where the text is 90), which made a million items 4 GiB instead of 0.4.
    """
    return json.dumps(value or {}, sort_keys=True, separators=(",", ":")).encode()


class ItemReference:
    """name -> (changes, hash, canonical value) after every op fed, applied in flake order.

    The ops must come in strictly increasing flake order overall (one ``FlakeGenerator`` for
    every phase of a run gives that): then each item's ops are applied in its flake order,
    the order the store replays them in. An op out of order raises at once, as the reference
    would be wrong from there on.
    """

    def __init__(self) -> None:
        self.items: dict[str, tuple[int, str, bytes]] = {}
        self.ops = 0
        self._last_flake = ""

    def apply(self, name: str, flake: str, op: str, change: Any) -> None:
        if flake <= self._last_flake:
            raise ValueError(f"op {flake} of {name} after {self._last_flake}: not in flake order")
        self._last_flake = flake
        changes, prev, value_json = self.items.get(name, (0, "", _EMPTY))
        value = orjson.loads(value_json)
        if op == "append" and isinstance(value.get(change["field"]), dict):
            # the value is kept with sorted keys, so the object's text would not be the store's
            raise ValueError(f"{name}: append onto an object is beyond this compact reference")
        value = apply_op(value, op, change)
        link = chain_hash(prev, name, flake, op, change_json(op, change))
        self.items[name] = (changes + 1, link, canonical(value))
        self.ops += 1

    def fed(self, payloads: Iterable[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
        """Each (Kafka key, op event JSON) unchanged, applied here first: what is sent is
        what the reference holds, without keeping the payloads."""
        for key, value in payloads:
            ev = orjson.loads(value)
            self.apply(ev["item"], ev["ts"], ev["op"], ev["change"])
            yield key, value


class SnapshotCheck:
    """Each item's newest snapshot (the last in its partition's offset order, what log
    compaction keeps) held to the reference; only the verdict of the latest is kept."""

    def __init__(self, ref: ItemReference) -> None:
        self.ref = ref
        #: name -> None when its latest snapshot equals the reference, else what differed
        self.latest: dict[str, tuple[Any, ...] | None] = {}
        self.snapshots = 0

    def add(self, snap: dict[str, Any]) -> None:
        self.snapshots += 1
        name = snap["item"]
        want = self.ref.items.get(name)
        got = (snap["changes"], snap["hash"], canonical(snap["value"]))
        self.latest[name] = None if got == want else (got, want)

    def equal(self) -> int:
        return sum(1 for name in self.ref.items if self.latest.get(name, "missing") is None)

    def differ(self) -> list[tuple[str, Any]]:
        """(name, (got, want)) of every item whose newest snapshot is not the reference,
        ``missing`` for one with no snapshot, ``unexpected`` for a snapshot of no item."""
        out: list[tuple[str, Any]] = [
            (name, self.latest.get(name, "missing"))
            for name in self.ref.items
            if self.latest.get(name, "missing") is not None
        ]
        out += [(name, "unexpected") for name in self.latest if name not in self.ref.items]
        return out
