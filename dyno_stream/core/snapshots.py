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
#: Message headers as confluent-kafka gives them (a list of pairs, or None).
MessageHeaders = list[tuple[str, str | bytes | None]] | dict[str, str | bytes | None] | None

#: Headers of a tombstone (``events.TombstoneHeaders``): where the deletion came from (the
#: same names as a dead letter's) and the deleted item's history summary.
H_SOURCE_TOPIC = "dyno.source.topic"
H_SOURCE_PARTITION = "dyno.source.partition"
H_SOURCE_OFFSET = "dyno.source.offset"
H_ITEM_TIMESTAMP = "dyno.item.timestamp"
H_ITEM_CHANGES = "dyno.item.changes"
H_ITEM_HASH = "dyno.item.hash"
H_ITEM_COUNT = "dyno.item.count"
#: Header of the worker's answer to an erase command (its tombstone, or the snapshot of an
#: item written again in the same batch): how many of the item's rows the store removed.
#: 0 says the store held nothing of the item (``WriteBatch.erase``).
H_ERASED_ROWS = "dyno.erased.rows"


def tombstone_headers(
    timestamp: str, changes: int, hash_: str, count: int, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """The headers of the tombstone of an item deleted by op ``topic/partition@offset``."""
    return [
        (H_SOURCE_TOPIC, topic.encode()),
        (H_SOURCE_PARTITION, str(partition).encode()),
        (H_SOURCE_OFFSET, str(offset).encode()),
        (H_ITEM_TIMESTAMP, timestamp.encode()),
        (H_ITEM_CHANGES, str(changes).encode()),
        (H_ITEM_HASH, hash_.encode()),
        (H_ITEM_COUNT, str(count).encode()),
    ]


def read_erased_rows(headers: MessageHeaders) -> int | None:
    """The rows an erasure removed, as its answer's ``H_ERASED_ROWS`` says; None when the
    message says nothing of an erasure."""
    pairs = (headers.items() if isinstance(headers, dict) else headers) or []
    for k, v in pairs:
        if k == H_ERASED_ROWS and v is not None:
            try:
                return int(v)
            except ValueError:
                return None
    return None


def tombstone_snapshot(key: bytes | None, headers: MessageHeaders) -> SnapshotDict | None:
    """A tombstone as the snapshot of a deleted item: ``value`` None, its timestamp, changes,
    hash, count and source from the headers. None for a tombstone without them (one not
    written by a dyno-stream worker, or no key): its deletion's offset is unknown."""
    if key is None or not headers:
        return None
    pairs = headers.items() if isinstance(headers, dict) else headers
    h = {k: v.decode() for k, v in pairs if isinstance(v, bytes)}
    try:
        snap: SnapshotDict = {
            "item": key.decode(),
            "value": None,
            "timestamp": h[H_ITEM_TIMESTAMP],
            "changes": int(h[H_ITEM_CHANGES]),
            "hash": h[H_ITEM_HASH],
            "count": int(h[H_ITEM_COUNT]),
            "source": {
                "topic": h[H_SOURCE_TOPIC],
                "partition": int(h[H_SOURCE_PARTITION]),
                "offset": int(h[H_SOURCE_OFFSET]),
            },
        }
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    return snap


def parse_message(
    key: bytes | None, value: bytes | None, headers: MessageHeaders
) -> SnapshotDict | None:
    """A message of the snapshot topic as a snapshot dict: a snapshot, or a tombstone as the
    snapshot of its deleted item (``value`` None; ``tombstone_snapshot``). None for anything
    else."""
    if value is None:
        return tombstone_snapshot(key, headers)
    return parse_snapshot(value)


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


class DeletedSnapshot(SnapshotModel):
    """A tombstone read as the snapshot of its deleted item (``tombstone_snapshot``): what
    ``NewestSnapshots.finish(deleted=True)`` returns for an item whose newest message is
    its tombstone, so that a restore keeps it deleted."""


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
    A tombstone (value None) with a worker's headers is held as its deleted item's
    snapshot (``tombstone_snapshot``), ranked like any other, and returned by ``finish``
    only when asked (``deleted=True``, a restore: the item is deleted at that offset); one
    without them deletes its key's snapshot. A message that is not a snapshot never
    displaces one that is, and is counted in ``unreadable``.
    """

    def __init__(self) -> None:
        self._held: dict[bytes, bytes] = {}
        #: ranks of held messages, computed the first time another message of the key came
        self._ranks: dict[bytes, tuple[int, int] | None] = {}
        #: where each held message was read, for the callers that say so
        self._partitions: dict[bytes, int] = {}
        #: keys whose held message is a tombstone (held as its deleted item's snapshot)
        self._deleted: set[bytes] = set()
        self.messages = 0
        self.unreadable = 0

    def __len__(self) -> int:
        return len(self._held)

    def add(
        self,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: MessageHeaders = None,
    ) -> None:
        """One message of the topic, in offset order within its ``partition`` (``headers``
        are read only for a tombstone)."""
        self.messages += 1
        if key is None:  # every dyno-stream producer keys its snapshots: a stray's own item
            key = _item_key(value)
            if key is None:
                self.unreadable += 1
                return
        deleted = value is None
        if value is None:
            tomb = tombstone_snapshot(key, headers)
            if tomb is None:  # a deletion of unknown offset: forget the key
                self._held.pop(key, None)
                self._ranks.pop(key, None)
                self._partitions.pop(key, None)
                self._deleted.discard(key)
                return
            value = orjson.dumps(tomb)
        held = self._held.get(key)
        if held is None:
            self._keep(key, value, partition, deleted)
            return
        new_rank = snapshot_rank(value)
        if new_rank is None:
            self.unreadable += 1
            return
        held_rank = self._ranks[key] if key in self._ranks else snapshot_rank(held)
        if held_rank is None or new_rank > held_rank:
            self._keep(key, value, partition, deleted)
            self._ranks[key] = new_rank
        else:
            self._ranks[key] = held_rank

    def _keep(self, key: bytes, value: bytes, partition: int | None, deleted: bool) -> None:
        self._held[key] = value
        if partition is not None:
            self._partitions[key] = partition
        if deleted:
            self._deleted.add(key)
        else:
            self._deleted.discard(key)

    def finish(
        self,
        keep: Callable[[SnapshotModel], bool] = lambda snap: True,
        cancelled: Callable[[], bool] = lambda: False,
        *,
        maybe: Callable[[bytes], bool] | None = None,
        check_every: int = 2_000,
        deleted: bool = False,
    ) -> dict[str, KeptSnapshot] | None:
        """Validate the held messages; return each item's newest one that ``keep`` accepts,
        or None when ``cancelled()`` turned true (asked every ``check_every`` messages:
        2,000 validations take about 20 ms here). Items whose newest message is a tombstone
        are left out, unless ``deleted``: then they come as snapshots with ``value`` None.

        ``maybe`` is a cheap test of the raw bytes that ``keep`` could accept, to skip the
        validation of those it surely would not (``source_partition_test``).
        """
        kept: dict[str, KeptSnapshot] = {}
        for i, (key, raw) in enumerate(self._held.items()):
            if i % check_every == 0 and cancelled():
                return None
            if maybe is not None and not maybe(raw):
                continue
            if not deleted and key in self._deleted:
                continue
            try:
                model = DeletedSnapshot if key in self._deleted else SnapshotModel
                snap = model.model_validate_json(raw)
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
