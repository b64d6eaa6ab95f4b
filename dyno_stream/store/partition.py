"""Per-partition state and the commit order that makes the worker exactly-once in effect.

Each assigned partition has its own :class:`DynoStore`; beside the items it keeps, in the same
LevelDB write batches, the next offset, the newest consumed Kafka timestamp, the pending
snapshots and dead letters of each batch until Kafka acknowledges them, and the ops topic's
partition count it was built for. A batch is validated, applied in one transaction with its
offset and pending rows, published without waiting, and cleared once acknowledged; a crash
at any step leads to a replay or a republish, never a loss or a double apply. The rows and
the order, step by step: ``docs/design/commit-order.md``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyno_stream.core import ops
from dyno_stream.core.deadletter import DeadLetter
from dyno_stream.core.errors import PartitionCountError, StoreError
from dyno_stream.core.events import EventModel, Snapshot
from dyno_stream.core.expectations import Expectation
from dyno_stream.core.keys import META_PREFIX
from dyno_stream.core.snapshots import DeletedSnapshot
from dyno_stream.store.budget import MemoryBudget
from dyno_stream.store.dynostore import DynoStore, ErrorHandler, StoreTransaction
from dyno_stream.store.items import Item

log = logging.getLogger("dyno_stream.store.partition")

OFFSET_KEY = META_PREFIX + b"offset"
CONSUMED_TIME_KEY = META_PREFIX + b"consumed-time"
PARTITION_KEY = META_PREFIX + b"partition"
OPS_PARTITIONS_KEY = META_PREFIX + b"ops-partitions"
#: Pending snapshot rows: this prefix, then ``\x00`` and the batch's next offset (20 digits).
PENDING_SNAPSHOTS_PREFIX = META_PREFIX + b"pending\x00snapshots"
PENDING_DEAD_PREFIX = META_PREFIX + b"pending\x00dead\x00"
#: After a restore from snapshots: per item, the ops offset its snapshot already includes.
RESTORED_PREFIX = META_PREFIX + b"restored\x00"
#: Refused messages by offset (20 digits), and the offset the store's record of them starts at.
REFUSED_PREFIX = META_PREFIX + b"refused\x00"
OUTCOMES_FROM_KEY = META_PREFIX + b"outcomes-from"
#: The offset the store's record of refusals reaches, written with every batch's offset: a
#: store whose offset moved on without it (an older release ran on it) knows nothing since.
OUTCOMES_THROUGH_KEY = META_PREFIX + b"outcomes-through"
#: How many offsets back refusals are kept (a dead letter's row is a few hundred bytes).
REFUSALS_KEPT = 1_000_000


#: What a store set aside for a restore has after its name: ``0003.stale-1765000000``.
STALE_MARK = ".stale-"


def store_path(data_dir: Path, topic: str, partition: int) -> Path:
    """Where the store of an ops partition lives: ``<data_dir>/<topic>/<partition:04d>``."""
    return data_dir / topic / f"{partition:04d}"


def partition_stores(data_dir: Path, topic: str) -> list[Path]:
    """The partition stores of ``topic`` under ``data_dir``, in partition order. A copy set
    aside for a restore is never one of them: it is behind, and may hold erased values."""
    root = data_dir / topic
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.isdigit() and p.is_dir())


def set_aside(path: Path) -> Path:
    """Rename a store that is behind (``<store>.stale-<time>``) so that its partition can be
    restored into a new one; the copy is deleted once that one is ready
    (``remove_stale_copies``)."""
    stale = path.with_name(f"{path.name}{STALE_MARK}{int(time.time())}")
    path.rename(stale)
    return stale


def remove_stale_copies(root: Path, store: str = "") -> list[Path]:
    """Delete the stores set aside under ``root`` (a topic's directory): the copies of
    ``store`` (a partition's directory name), or every one. Returns those deleted.

    A copy left by a restore that did not finish (a crash, the partition moved) goes at the
    next of these. One that cannot be deleted is logged as an error each time, never read.
    """
    if not root.is_dir():
        return []
    removed = []
    for path in sorted(root.glob(f"{store or '*'}{STALE_MARK}*")):
        shutil.rmtree(path, ignore_errors=True)  # another process may be deleting it too
        if path.exists():
            log.error(
                "could not delete %s, a store set aside for a restore: it may hold values "
                "erased since; delete it by hand",
                path,
            )
            continue
        log.info("deleted %s, a store set aside for a restore", path)
        removed.append(path)
    return removed


def read_consumed_ms(store: DynoStore) -> int | None:
    """The Kafka timestamp (ms) of the newest message a partition store has consumed."""
    raw = store.get_meta(CONSUMED_TIME_KEY)
    return None if raw is None else int(raw)


def snapshot_bytes(item: Item, topic: str, partition: int, offset: int) -> bytes:
    """The snapshot event's JSON (built directly: this runs once per item per batch)."""
    return ops.dumps_internal(
        item.as_dict(source={"topic": topic, "partition": partition, "offset": offset})
    )


@dataclass
class PartitionStore:
    """One partition's store and bookkeeping."""

    topic: str
    partition: int
    store: DynoStore
    next_offset: int | None = None
    #: Kafka timestamp (ms) of the newest message consumed; None before the first batch
    consumed_ms: int | None = None
    #: after a restore: ops at or below these offsets are already in the item's snapshot
    restored: dict[str, int] = field(default_factory=dict)
    #: ops below this offset were applied and published by the partition's last owner: a
    #: replay of them publishes nothing (``stream.restorer``); None once passed
    published_through: int | None = None
    #: the first offset whose outcome (applied or refused) this store knows; None: none yet
    outcomes_from: int | None = None

    @classmethod
    def open(
        cls,
        data_dir: Path,
        topic: str,
        partition: int,
        sync: bool,
        max_attrs: int | None = None,
        budget: MemoryBudget | None = None,
    ) -> PartitionStore:
        """Open (or create) the partition's store; ``budget`` is the worker's, shared with
        its other partitions (None: a budget of the store's own)."""
        path = store_path(data_dir, topic, partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        store = DynoStore(path, sync=sync, max_attrs=max_attrs, budget=budget)
        ident = f"{topic}/{partition}".encode()
        held = store.get_meta(PARTITION_KEY)
        if held is not None and held != ident:
            store.close()
            raise StoreError(f"{path} holds partition {held.decode()}, not {ident.decode()}")
        if held is None:
            store.apply([], internal_rows={PARTITION_KEY: ident})
        raw = store.get_meta(OFFSET_KEY)
        restored = {
            k[len(RESTORED_PREFIX) :].decode(): int(v) for k, v in store.iter_meta(RESTORED_PREFIX)
        }
        outcomes_from = store.get_meta(OUTCOMES_FROM_KEY)
        if outcomes_from is not None and store.get_meta(OUTCOMES_THROUGH_KEY) != raw:
            outcomes_from = None  # refusals since were not recorded: none is known
        return cls(
            topic,
            partition,
            store,
            None if raw is None else int(raw),
            consumed_ms=read_consumed_ms(store),
            restored=restored,
            outcomes_from=None if outcomes_from is None else int(outcomes_from),
        )

    def check_partitions(self, now: int) -> None:
        """Record the ops topic's partition count in a store that has none yet; refuse a
        store built when the topic had another count (its items would split)."""
        raw = self.store.get_meta(OPS_PARTITIONS_KEY)
        if raw is None:
            self.store.apply([], internal_rows={OPS_PARTITIONS_KEY: str(now).encode()})
        elif int(raw) != now:
            raise PartitionCountError(self.topic, now, int(raw))

    def restore_from(self, snapshots: list[Snapshot], low: int = 0) -> int:
        """Load snapshots (of this partition's items) as history rows; resume the ops topic
        just after the oldest of them, skipping what each item's snapshot already holds.

        A deleted item's tombstone (``DeletedSnapshot``) becomes its deleted marker, and the
        ops up to the tombstone's offset are skipped like any snapshot's: a replay of the
        ops before the deletion never brings the item back."""
        items = [
            (
                s.item,
                Item(
                    s.item,
                    s.value,
                    s.timestamp,
                    s.changes,
                    s.hash,
                    s.count,
                    deleted=isinstance(s, DeletedSnapshot),  # its tombstone: deleted there
                ),
            )
            for s in snapshots
        ]
        assert all(s.source is not None for s in snapshots)
        through = {s.item: s.source.offset for s in snapshots if s.source is not None}
        start = max(low, min(through.values()) + 1)  # nothing below the topic's start
        # the refusals before ``start`` are the last owner's: not known here
        internal_rows: dict[bytes, bytes | None] = {
            OFFSET_KEY: str(start).encode(),
            OUTCOMES_FROM_KEY: str(start).encode(),
            OUTCOMES_THROUGH_KEY: str(start).encode(),
        }
        for name, off in through.items():
            internal_rows[RESTORED_PREFIX + name.encode()] = str(off).encode()
        n = self.store.restore(items, internal_rows)
        self.next_offset = self.outcomes_from = start
        self.restored = through
        return n

    def restore_done(self) -> None:
        """Every restored item's snapshot offset is behind us: drop the skip list."""
        if self.restored:
            self.store.apply(
                [], internal_rows={RESTORED_PREFIX + name.encode(): None for name in self.restored}
            )
            self.restored = {}

    @property
    def label(self) -> str:
        return f"{self.topic}/{self.partition}"

    def pending_snapshots(self) -> tuple[dict[str, int], list[bytes]]:
        """Every item a crashed run left unpublished (with its newest offset), and the rows."""
        items: dict[str, int] = {}
        keys = []
        for key, raw in self.store.iter_meta(PENDING_SNAPSHOTS_PREFIX):  # in batch order
            keys.append(key)
            items.update((entry[0], entry[1]) for entry in json.loads(raw))
        return items, keys

    def pending_erasures(self) -> dict[str, int]:
        """Of the items left unpublished, those a batch erased: the rows it removed (summed
        over the pending batches), for their tombstones' ``dyno.erased.rows``."""
        erased: dict[str, int] = {}
        for _, raw in self.store.iter_meta(PENDING_SNAPSHOTS_PREFIX):
            for entry in json.loads(raw):
                if len(entry) > 2:
                    erased[entry[0]] = erased.get(entry[0], 0) + entry[2]
        return erased

    def refusal(self, offset: int) -> dict[str, Any] | None:
        """The refusal of the message at ``offset``: its item, reason, message and headers
        (None: not refused, or not known: see ``outcomes_from``)."""
        raw = self.store.get_meta(REFUSED_PREFIX + f"{offset:020d}".encode())
        return None if raw is None else dict(json.loads(raw))

    def pending_dead_letters(self) -> list[tuple[bytes, DeadLetter]]:
        return [(k, DeadLetter.decode(v)) for k, v in self.store.iter_meta(PENDING_DEAD_PREFIX)]

    @contextmanager
    def transaction(self) -> Iterator[PartitionTransaction]:
        """One batch's write (step 2 of the commit order): its ops, the offset and what is
        pending publication, atomically. The store's offset moves only once it has landed."""
        with self.store.transaction() as stx:
            tx = PartitionTransaction(stx, self.outcomes_from)
            yield tx
        self.outcomes_from = tx.outcomes_from
        if tx.next_offset is not None:
            self.next_offset = tx.next_offset
            if self.published_through is not None and tx.next_offset >= self.published_through:
                self.published_through = None
        if tx.consumed_ms is not None:
            self.consumed_ms = tx.consumed_ms
        if self.restored and (self.next_offset or 0) > max(self.restored.values()):
            self.restore_done()

    def clear_pending(self, keys: list[bytes]) -> None:
        """Delete acknowledged pending rows on a write of their own (step 4a of the commit
        order above), when no batch of the partition is coming to carry them."""
        if keys:
            self.store.apply([], internal_rows=dict.fromkeys(keys))

    def close(self) -> None:
        self.store.close()


class PartitionTransaction:
    """The writes of one batch of one partition (``PartitionStore.transaction``)."""

    def __init__(self, tx: StoreTransaction, outcomes_from: int | None = None) -> None:
        self._tx = tx
        self.next_offset: int | None = None
        self.consumed_ms: int | None = None
        self.outcomes_from = outcomes_from

    def apply(
        self,
        events: Iterable[EventModel],
        on_error: ErrorHandler | None = None,
        expectations: Mapping[int, Expectation] | None = None,
    ) -> list[str]:
        """Apply the batch's ops; the names of the items that changed (``DynoStore.apply``)."""
        return self._tx.apply(events, on_error, expectations)

    @property
    def erased(self) -> dict[int, int]:
        """Per erase command applied: its index among the events applied, and the item rows
        it removed (``StoreTransaction.erased``)."""
        return self._tx.erased

    def track(
        self,
        next_offset: int,
        *,
        snapshots: dict[str, int],
        dead: list[DeadLetter],
        refused: list[DeadLetter] | None = None,
        acknowledged: Iterable[bytes] = (),
        consumed_ms: int | None = None,
        erased: dict[str, int] | None = None,
        first_offset: int | None = None,
    ) -> list[bytes]:
        """Record the batch's bookkeeping in the same write; the keys of its pending rows.

        ``next_offset`` is the next offset to consume; ``snapshots`` the items to publish,
        each with the offset of its last op; ``dead`` the batch's dead letters; and
        ``acknowledged`` the pending rows of earlier batches that Kafka has taken since
        (deleted now: step 4a). ``consumed_ms`` is the newest message's Kafka timestamp.
        ``erased``: of those items, the ones the batch erased, with the rows removed (kept
        in the pending row, so a tombstone published again after a crash still says it).
        ``first_offset``: the batch's first (where a new store's record of refusals starts).
        ``refused``: the batch's refusals to record, if more than ``dead`` (the letters a
        replay below the last owner's published offset does not publish again).
        """
        rows: dict[bytes, bytes | None] = dict.fromkeys(acknowledged)
        rows[OFFSET_KEY] = str(next_offset).encode()
        if consumed_ms is not None:
            rows[CONSUMED_TIME_KEY] = str(consumed_ms).encode()
        pending = []
        if snapshots:
            key = PENDING_SNAPSHOTS_PREFIX + f"\x00{next_offset:020d}".encode()
            gone = erased or {}
            rows[key] = ops.dumps_internal(
                [[n, o, gone[n]] if n in gone else [n, o] for n, o in snapshots.items()]
            )
            pending.append(key)
        for d in dead:
            key = PENDING_DEAD_PREFIX + f"{d.offset:020d}".encode()
            rows[key] = d.encode()
            pending.append(key)
        for d in dead if refused is None else refused:
            if d.forward_to is None:  # a forward is no outcome: its op is its rule partition's
                rows[REFUSED_PREFIX + f"{d.offset:020d}".encode()] = d.refusal()
        if self.outcomes_from is None and first_offset is not None:
            self.outcomes_from = first_offset
            rows[OUTCOMES_FROM_KEY] = str(first_offset).encode()
        elif self.outcomes_from is not None and next_offset - self.outcomes_from > (
            2 * REFUSALS_KEPT
        ):  # rare: once per million offsets
            self.outcomes_from = next_offset - REFUSALS_KEPT
            rows[OUTCOMES_FROM_KEY] = str(self.outcomes_from).encode()
            end = REFUSED_PREFIX + f"{self.outcomes_from:020d}".encode()
            for key, _ in self._tx.iter_meta(REFUSED_PREFIX):
                if key >= end:
                    break
                rows[key] = None
        rows[OUTCOMES_THROUGH_KEY] = rows[OFFSET_KEY]
        self._tx.put_internal(rows)
        self.next_offset, self.consumed_ms = next_offset, consumed_ms
        return pending
