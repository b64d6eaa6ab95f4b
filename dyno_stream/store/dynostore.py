"""DynoStore: level-dyno's timestamped item histories in LevelDB.

Layout (see ``keys``)::

    <name>/<flake>/<op>        one row per op, value = the change as compact JSON
    <name>/<flake>/history     a flattened prefix: ``<hash>:<changes>:<value json>``
    \\x00state\\x00<name>      the item's materialized current state (value, hash, counts)
    \\x00meta\\x00dirty\\x00<n>  journal: names whose state row may be behind their rows
    \\x00meta\\x00...          format version and the worker's bookkeeping

Each item is the replay of its rows. Every write is one LevelDB write batch (``write_batch``);
the materialized states are cached and written behind the rows, with a crash journal
(``states``); the items read back are plain values (``items``).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import plyvel

from dyno_stream import __version__
from dyno_stream.core import ops
from dyno_stream.core.errors import (
    DynoError,
    StoreClosedError,
    StoreError,
    StoreLockedError,
    StoreWriteError,
)
from dyno_stream.core.events import Erase, EventModel, Flatten, make_op
from dyno_stream.core.expectations import Expectation
from dyno_stream.core.flake import new_flake
from dyno_stream.core.keys import (
    INTERNAL,
    check_name,
    item_prefix,
    row_key,
    state_key,
)
from dyno_stream.core.ops import HISTORY, ItemState
from dyno_stream.store.budget import MemoryBudget
from dyno_stream.store.items import Item
from dyno_stream.store.queries import StoreQueries
from dyno_stream.store.states import (
    VERSION_KEY,
    StateCache,
    adopt_rows,
    check_format,
    recover_states,
)
from dyno_stream.store.write_batch import Rows, WriteBatch, writing

#: the first key that can be an item's row (internal keys start with \\x00)
_ITEMS_START = b"\x01"

#: The budget of a store opened on its own (a worker's stores share the worker's): about what
#: one store kept before budgets, 100,000 small states and LevelDB's default caches.
STORE_MEMORY_MB = 256

log = logging.getLogger("dyno_stream.store")

_T = TypeVar("_T")
ErrorHandler = Callable[[int, EventModel, DynoError], None]


def _internal(rows: Rows) -> Rows:
    """``rows``, once every key is checked to be internal (starting ``\\x00``)."""
    for key in rows:
        if not key.startswith(INTERNAL):
            raise StoreError(f"internal row {key!r} is not internal (must start \\x00)")
    return rows


class StoreTransaction:
    """The writes of one :meth:`DynoStore.transaction`: ops and internal rows, committed
    together when the ``with`` block ends."""

    def __init__(self, batch: WriteBatch) -> None:
        self.batch = batch
        self.internal: dict[bytes, bytes | None] = {}
        #: per erase command applied: its index among every event given to ``apply`` (in
        #: order, over all calls), and the item rows it removed (``WriteBatch.erase``)
        self.erased: dict[int, int] = {}
        self._given = 0

    def apply(
        self,
        events: Iterable[EventModel],
        on_error: ErrorHandler | None = None,
        expectations: Mapping[int, Expectation] | None = None,
    ) -> list[str]:
        """Apply ops and flatten commands in order; the names of the items that changed, in
        first-touched order. See :meth:`DynoStore.apply` for ``on_error``. ``expectations``
        holds, by index in ``events``, what a conditional op expects of its item, checked
        against the item as the ops before it in this batch left it."""
        batch = self.batch
        touched: dict[str, None] = {}
        first, i = self._given, -1
        for i, event in enumerate(events):
            try:
                if expectations and i in expectations and not isinstance(event, Flatten):
                    expectations[i].check(event.item, event.ts, batch.state(event.item))
                if isinstance(event, Flatten):
                    changed = (
                        batch.flatten(event.item, event.hash)
                        if event.before is None
                        else batch.flatten_before(event.item, event.before, event.hash)
                    )
                elif isinstance(event, Erase):
                    self.erased[first + i] = batch.erase(event.item, event.ts)
                    changed = True
                else:
                    changed = batch.apply_op(event)
            except DynoError as exc:
                if on_error is None:
                    raise
                on_error(i, event, exc)
                continue
            if changed:
                touched[event.item] = None
        self._given = first + i + 1
        return list(touched)

    def iter_meta(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Internal rows under ``prefix`` as stored before this transaction."""
        return self.batch.stored(prefix)

    def put_internal(self, rows: Rows) -> None:
        """Internal rows (keys starting ``\\x00``; value None deletes) for the same write."""
        self.internal.update(_internal(rows))


class DynoStore(StoreQueries):
    """An item store in LevelDB where each item is the replay of its timestamped ops.

    Open it with a path (created when missing); use it as a context manager or call
    ``close()``. Writes are serialized by a lock; LevelDB allows one process per store.
    ``sync=True`` makes every write batch wait for the disk (survives power loss, slower).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        sync: bool = False,
        flakes: Callable[[], str] = new_flake,
        budget: MemoryBudget | None = None,
        flush_interval_s: float = 2.0,
        max_attrs: int | None = None,
    ) -> None:
        self.path = Path(path)
        #: ops that would leave an item with more attributes raise ``TooManyAttrsError``
        self.max_attrs = sys.maxsize if max_attrs is None else max_attrs
        #: what this store may keep in memory: its share of a worker's budget, shared with
        #: the worker's other stores, or a budget of its own
        self.budget = MemoryBudget.megabytes(STORE_MEMORY_MB) if budget is None else budget
        # decoded states of recently written items: a batch then skips the read and decode
        self._states = StateCache(self.path, self.budget, flush_interval_s, sync)
        self.sync = sync
        self._flakes = flakes
        self._lock = threading.RLock()
        kwargs: dict[str, Any] = {"create_if_missing": True, **self.budget.leveldb_options()}
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._db: Any = plyvel.DB(str(self.path), **kwargs)
        except (OSError, plyvel.Error) as exc:
            # plyvel has no error type of its own for a held lock; LevelDB's message is
            # "IO error: lock <path>/LOCK: already held by process" (or "Resource temporarily
            # unavailable" from another process): its one stable word is "lock".
            if isinstance(exc, plyvel.IOError) and "lock" in str(exc).lower():
                raise StoreLockedError(
                    f"cannot open store at {self.path}: another process holds its lock "
                    f"(a worker running on it?): {exc}"
                ) from exc
            raise StoreError(f"cannot open store at {self.path}: {exc}") from exc
        try:
            with writing(self.path):  # a full disk at open says so, naming the store
                found = self._db.get(VERSION_KEY)
                if found is None:  # a new store, or one level-dyno wrote
                    adopt_rows(self._db, self.path, __version__)
                else:
                    check_format(self._db, self.path, found, __version__)
                recover_states(self._db)
        except BaseException:
            self._db.close()  # release LevelDB's lock, so the open can be tried again
            self._db = None
            raise
        self.budget.join(self)  # after the open: a failed one holds no share

    # -- the memory budget (``budget.BudgetMember``) --------------------------------------------

    def state_cache_bytes(self) -> int:
        return self._states.bytes

    def trim_states(self) -> None:
        """Evict the oldest cached states down to this store's share (the budget was divided
        among more stores); a dirty one is written first, under this store's lock."""
        with self._lock:
            if self._db is None:
                return
            try:
                self._states.evict(self._db)
            except StoreWriteError as exc:  # they stay dirty: the next write or close() writes
                log.warning("%s; states stay in memory and are written later", exc)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._db is None:
                return
            try:
                self.flush()
            finally:
                self._db.close()
                self._db = None
        self.budget.leave(self)  # not under this store's lock: the budget trims no one then

    @property
    def closed(self) -> bool:
        return self._db is None

    def __enter__(self) -> DynoStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open_db(self) -> Any:
        if self._db is None:
            raise StoreClosedError(f"store at {self.path} is closed")
        return self._db

    def flush(self) -> None:
        """Write every state that is ahead of its row, and clear the dirty journal."""
        with self._lock:
            self._states.flush(self._open_db())

    # -- writing -----------------------------------------------------------------------------

    def apply(
        self,
        events: Iterable[EventModel],
        internal_rows: Rows | None = None,
        on_error: ErrorHandler | None = None,
    ) -> list[str]:
        """Apply validated op models (and flatten commands), in order, in one write batch.

        Returns the names of the items that changed, in first-touched order. ``internal_rows``
        holds internal rows (keys starting ``\\x00``; value None deletes) written in the same
        batch. Rows that depend on the outcome (the worker's pending snapshots) are written
        with :meth:`transaction` instead.

        Without ``on_error`` the first bad op (late, conflicting, unknown flatten hash) raises
        and nothing is written. With it, each bad op is reported as ``on_error(index, event,
        error)``, skipped, and the rest is written.
        """
        with self.transaction() as tx:
            touched = tx.apply(events, on_error)
            if internal_rows:
                tx.put_internal(internal_rows)
        return touched

    @contextmanager
    def transaction(self) -> Iterator[StoreTransaction]:
        """One atomic write: ops applied and internal rows put inside the ``with`` block land
        together when it ends, or not at all when it raises.

        The batch changes cached states in place (that is what makes a batch cheap), so when
        anything fails before the write lands, those states are put right again
        (``StateCache.forget``).
        """
        with self._lock:
            db = self._open_db()
            states = self._states
            tx = StoreTransaction(WriteBatch(db, states.cache, self.max_attrs))
            try:
                yield tx
                journal = states.journal_rows(tx.batch.states)
                if tx.batch.erased:  # their rows' values out of the memtable first
                    self._compact_erased(db, tx.batch.erased)
                with writing(self.path):
                    tx.batch.commit(db, tx.internal, self.sync, journal)
            except BaseException:
                states.forget(db, tx.batch.states)
                raise
            states.committed(db, tx.batch.states, journal)
            if tx.batch.erased:
                self._compact_erased(db, tx.batch.erased)

    def erase(self, name: str, ts: str | None = None) -> tuple[str, int]:
        """Remove every row of the item at once, leaving its deleted marker
        (``WriteBatch.erase``); returns the erasure's flake and the rows removed (0: the
        store held nothing of the item)."""
        flake = self._flakes() if ts is None else ts
        with self.transaction() as tx:
            tx.apply([Erase(item=name, ts=flake)])
        return flake, tx.erased[0]

    def _compact_erased(self, db: Any, names: list[str]) -> None:
        """Let LevelDB rewrite the erased items' key ranges, so their old values leave its
        files too: a deleted row's bytes otherwise stay in the write-ahead log and the table
        files until LevelDB compacts them, whenever that is.

        Called twice: before the erasure's write and after it. LevelDB's CompactRange first
        writes out the memtable (retiring the log that held the values), then merges the
        range's files down level by level, dropping the rows that newer deletes hide. A
        memtable holding both the values and their deletes is written out whole, and to a
        deeper level than the merges reach when nothing else overlaps it (measured: the
        values stayed on disk with one call); written out before the deletes, the values
        lie deeper than the deletes' file, and the merges bring the two together."""
        with writing(self.path):
            for name in names:
                prefix = item_prefix(name)
                db.compact_range(start=prefix, stop=prefix + b"\xff")
                db.compact_range(start=state_key(name), stop=state_key(name) + b"\x00")

    def _write(self, run: Callable[[WriteBatch], _T], internal_rows: Rows | None = None) -> _T:
        """Run ``run`` on a new batch and commit it with ``internal_rows`` (one transaction)."""
        with self.transaction() as tx:
            result = run(tx.batch)
            if internal_rows:
                tx.put_internal(internal_rows)
        return result

    def _one(self, op: str, name: str, change: Any, ts: str | None) -> str:
        flake = self._flakes() if ts is None else ts
        self.apply([make_op(op, name, change, flake)])
        return flake

    def put_item(self, name: str, value: dict[str, Any], ts: str | None = None) -> str:
        return self._one(ops.PUT_ITEM, name, value, ts)

    def del_item(self, name: str, ts: str | None = None) -> str:
        return self._one(ops.DEL_ITEM, name, {}, ts)

    def put_attrs(self, name: str, attrs: dict[str, Any], ts: str | None = None) -> str:
        return self._one(ops.PUT_ATTRS, name, attrs, ts)

    def del_attrs(self, name: str, attrs: list[str], ts: str | None = None) -> str:
        return self._one(ops.DEL_ATTRS, name, attrs, ts)

    def inc_attr_by(self, name: str, field: str, by: float = 1, ts: str | None = None) -> str:
        return self._one(ops.INC_ATTR_BY, name, {"field": field, "by": by}, ts)

    def dec_attr_by(self, name: str, field: str, by: float = 1, ts: str | None = None) -> str:
        return self._one(ops.DEC_ATTR_BY, name, {"field": field, "by": by}, ts)

    def append(self, name: str, field: str, text: str, ts: str | None = None) -> str:
        return self._one(ops.APPEND, name, {"field": field, "str": text}, ts)

    def add_to_set(self, name: str, field: str, value: Any, ts: str | None = None) -> str:
        return self._one(ops.ADD_TO_SET, name, {"field": field, "value": value}, ts)

    def flatten(self, name: str, hash: str) -> bool:
        """Fold every row up to the one whose chain hash is ``hash`` into one history row.

        The caller vouches for that hash (it has seen the item with it). Returns False when
        there was nothing to fold; raises ``UnknownHashError`` (writing nothing) when no row
        has that hash.
        """
        check_name(name)
        return self._write(lambda batch: batch.flatten(name, hash))

    def flatten_before(self, name: str, flake: str) -> bool:
        """Fold every row older than ``flake`` (time-based compaction)."""
        check_name(name)
        return self._write(lambda batch: batch.flatten_before(name, flake))

    def restore(self, items: Iterable[tuple[str, Item]], internal_rows: Rows | None = None) -> int:
        """Load items as history rows (a restore from snapshots) into a store with no items.

        Each item becomes one ``history`` row at its timestamp with its value, hash and
        changes, exactly as a flatten would leave it, so later ops chain on from that hash.
        Its state row is written with it, in the same LevelDB batch as ``internal_rows``
        (the worker's offset): a restore lands whole or not at all. Written directly rather
        than through the state cache and its journal: 100,000 items took 1.1 s that way,
        this way 0.6 s (``bench/bench_restore.py`` measures the whole restore).
        """
        rows: dict[bytes, bytes | None] = {}
        n = 0
        for name, item in items:
            if item.timestamp is None or item.hash is None:
                continue
            check_name(name)
            value = item.value or {}
            # a deleted item (its tombstone) becomes its deleted marker: no value at all
            held = None if item.deleted else value
            history = ops.encode_history(item.hash, item.changes, held).encode()
            rows[row_key(name, item.timestamp, HISTORY)] = history
            state = ItemState(
                value, item.timestamp, item.changes, item.hash, 1, item.timestamp, item.deleted
            )
            rows[state_key(name)] = state.encode()
            n += 1
        internal = _internal(internal_rows or {})
        with self._lock:
            db = self._open_db()
            if next(db.iterator(start=_ITEMS_START, include_value=False), None) is not None:
                raise StoreError(f"restore into {self.path}: the store already has items")
            with writing(self.path), db.write_batch(sync=self.sync, transaction=True) as wb:
                for key, raw in (*rows.items(), *internal.items()):
                    if raw is None:
                        wb.delete(key)
                    else:
                        wb.put(key, raw)
        return n

    # -- internal rows (worker bookkeeping) ---------------------------------------------------

    def get_meta(self, key: bytes) -> bytes | None:
        if not key.startswith(INTERNAL):
            raise StoreError(f"{key!r} is not an internal key")
        value: bytes | None = self._open_db().get(key)
        return value

    def iter_meta(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        if not prefix.startswith(INTERNAL):
            raise StoreError(f"{prefix!r} is not an internal prefix")
        yield from self._open_db().iterator(prefix=prefix)

    def compact_range(self) -> None:
        """Let LevelDB drop deleted rows from disk now (after flattening many items)."""
        # An explicit range: plyvel's compact_range() without one compacted nothing here.
        # Every key is below 0xff (UTF-8 never holds that byte; internal keys start 0x00).
        self.flush()  # states first, so their rows land before, not after, the compaction
        self._open_db().compact_range(start=b"\x00", stop=b"\xff")
