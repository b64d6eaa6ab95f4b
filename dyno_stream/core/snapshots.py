"""Snapshots as subscribers see them: parsing one from the snapshot topic, and the rule that
decides which of two snapshots of an item is newer (at-least-once delivery and restores can
deliver one twice or out of order), and the collector that keeps each item's newest snapshot
from a topic read, for restores and migrations."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson
import pydantic

from dyno_stream.core.events import Snapshot as SnapshotModel

#: A snapshot event as a dict (the wire contract's fields).
SnapshotDict = dict[str, Any]


def parse_snapshot(raw: bytes | None) -> SnapshotDict | None:
    """A snapshot event as a dict, or None for anything else (a topic can hold strays)."""
    if raw is None:
        return None
    try:
        return SnapshotModel.model_validate_json(raw).model_dump()
    except pydantic.ValidationError:
        return None


def is_newer(new: SnapshotDict, held: SnapshotDict | None) -> bool:
    """Whether ``new`` should replace ``held``: more changes, or a flatten of the same ones."""
    if held is None:
        return True
    if new["changes"] != held["changes"]:
        return bool(new["changes"] > held["changes"])
    return bool(new["count"] < held["count"])


class KeptSnapshot(NamedTuple):
    """An item's newest snapshot as it was read: its Kafka key, its raw bytes (copied as they
    are by a migration), the parsed model (loaded by a restore) and the partition it was read
    from (-1 when not told)."""

    key: bytes
    raw: bytes
    snapshot: SnapshotModel
    partition: int = -1


def snapshot_rank(raw: bytes) -> tuple[int, int] | None:
    """``(changes, -count)`` of a raw snapshot: the larger rank is the newer snapshot, exactly
    as ``is_newer`` decides. None for a message that is not a snapshot."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    changes, count = doc.get("changes"), doc.get("count")
    if type(changes) is not int or type(count) is not int:  # bool is an int: not here
        return None
    return changes, -count


class NewestSnapshots:
    """Each key's newest snapshot from raw messages fed in offset order, parsing as little as
    it can.

    A restore reads tens of thousands of snapshots a second; validating each with pydantic
    costs several times what consuming it does, and a compacted topic holds mostly one
    message per key. So a message is only held as bytes; two messages of one key are ranked
    (``snapshot_rank``, orjson, about a tenth of a validation) only when they meet, so a stale
    duplicate never wins, and only the kept ones are validated, at the end (``finish``).
    A tombstone (value None) deletes its key's snapshot; a message that is not a snapshot
    never displaces one that is, and is counted in ``unreadable``.
    """

    def __init__(self) -> None:
        self._held: dict[bytes, bytes] = {}
        #: ranks of held messages, computed the first time another message of the key came
        self._ranks: dict[bytes, tuple[int, int] | None] = {}
        #: where each held message was read, for the callers that say so
        self._partitions: dict[bytes, int] = {}
        self.messages = 0
        self.unreadable = 0

    def __len__(self) -> int:
        return len(self._held)

    def add(self, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        """One message of the topic, in offset order within its ``partition``."""
        self.messages += 1
        if key is None:  # every dyno-stream producer keys its snapshots: a stray's own item
            key = _item_key(value)
            if key is None:
                self.unreadable += 1
                return
        if value is None:
            self._held.pop(key, None)
            self._ranks.pop(key, None)
            self._partitions.pop(key, None)
            return
        held = self._held.get(key)
        if held is None:
            self._held[key] = value
            if partition is not None:
                self._partitions[key] = partition
            return
        new_rank = snapshot_rank(value)
        if new_rank is None:
            self.unreadable += 1
            return
        held_rank = self._ranks[key] if key in self._ranks else snapshot_rank(held)
        if held_rank is None or new_rank > held_rank:
            self._held[key] = value
            self._ranks[key] = new_rank
            if partition is not None:
                self._partitions[key] = partition
        else:
            self._ranks[key] = held_rank

    def finish(
        self,
        keep: Callable[[SnapshotModel], bool] = lambda snap: True,
        cancelled: Callable[[], bool] = lambda: False,
        *,
        maybe: Callable[[bytes], bool] | None = None,
        check_every: int = 2_000,
    ) -> dict[str, KeptSnapshot] | None:
        """Validate the held messages; return each item's newest one that ``keep`` accepts,
        or None when ``cancelled()`` turned true (asked every ``check_every`` messages:
        2,000 validations take about 20 ms here).

        ``maybe`` is a cheap test of the raw bytes that ``keep`` could accept, to skip the
        validation of those it surely would not (``source_partition_test``).
        """
        kept: dict[str, KeptSnapshot] = {}
        for i, (key, raw) in enumerate(self._held.items()):
            if i % check_every == 0 and cancelled():
                return None
            if maybe is not None and not maybe(raw):
                continue
            try:
                snap = SnapshotModel.model_validate_json(raw)
            except pydantic.ValidationError:
                self.unreadable += 1
                continue
            if not keep(snap):
                continue
            other = kept.get(snap.item)
            # two keys holding one item: only strays keyed otherwise than by the item's name
            if other is None or _model_rank(snap) > _model_rank(other.snapshot):
                kept[snap.item] = KeptSnapshot(key, raw, snap, self._partitions.get(key, -1))
        return kept


def source_partition_test(partition: int) -> Callable[[bytes], bool]:
    """A test of a raw snapshot that is false only when its ``source.partition`` cannot be
    ``partition``: the document has no ``"partition": <partition>`` member anywhere (``3``,
    ``3.0`` and ``3e0`` all match 3). Reading a topic that is not co-partitioned, it spares
    the validation of the other partitions' snapshots (a regex search costs a tenth of a
    validation)."""
    search = re.compile(rb'"partition"\s*:\s*%d(?![0-9])' % partition).search
    return lambda raw: search(raw) is not None


def _model_rank(snap: SnapshotModel) -> tuple[int, int]:
    return snap.changes, -snap.count


def _item_key(value: bytes | None) -> bytes | None:
    """The item name of an unkeyed snapshot, as its key would be; None if it is not one."""
    if value is None:
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    item = doc.get("item") if isinstance(doc, dict) else None
    return item.encode() if isinstance(item, str) else None
