"""The materialized states: a cache of decoded item states, written behind their rows, and the
crash journal that makes writing them late safe.

Each item's state row makes ``get_item`` cost the same for one row or ten thousand. A batch
updates states in memory; they reach LevelDB every ``flush_interval_s``, on eviction, before a
scan and on close. A batch that first dirties a state names the item in a journal row of the
same write batch, and opening a store after a crash replays those items from their rows
(``recover_states``). Details: ``docs/design/states.md``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from dyno_stream.core import ops
from dyno_stream.core.errors import DynoError, StoreError, StoreFormatError, StoreWriteError
from dyno_stream.core.flake import is_flake
from dyno_stream.core.keys import META_PREFIX, check_name, split_key, state_key
from dyno_stream.core.ops import HISTORY, ItemState
from dyno_stream.store.budget import MemoryBudget, estimate_state_bytes
from dyno_stream.store.write_batch import Rows, WriteBatch, replay_rows, writing

#: The store format this release writes and the newest it reads. Every release's format is
#: in CHANGELOG.md; a change to what the rows mean raises it, with an upgrade step from the
#: one before in ``check_format``.
STORE_FORMAT = 1
FORMAT_VERSION = str(STORE_FORMAT).encode()
VERSION_KEY = META_PREFIX + b"format"
#: The release (package version) that last opened the store: named when a release refuses it
RELEASE_KEY = META_PREFIX + b"release"
_JOURNAL_PREFIX = META_PREFIX + b"dirty\x00"

log = logging.getLogger("dyno_stream.store")


def adopt_rows(db: Any, path: Path, release: str) -> None:
    """First open of this database by dyno-stream: build the materialized states.

    A store level-dyno wrote holds only item rows; replaying each item once here makes it
    read exactly as level-dyno would have read it.
    """
    states: dict[str, ItemState] = {}
    current: str | None = None
    rows: list[tuple[str, str, str]] = []

    def finish() -> None:
        if current is not None:
            states[current] = ops.replay(current, rows)

    for key, value in db.iterator(start=b"\x01"):
        try:
            name, flake, op = split_key(key)
            check_name(name)
            if not is_flake(flake) or (op not in ops.OP_NAMES and op != HISTORY):
                raise ValueError(op)
        except (ValueError, DynoError):
            raise StoreError(
                f"{path} is not a dyno store: row {key!r} is not <name>/<flake>/<op>"
            ) from None
        if name != current:
            finish()
            current, rows = name, []
        rows.append((flake, op, value.decode("utf-8")))
    finish()
    with db.write_batch(sync=True) as wb:
        for name, st in states.items():
            wb.put(state_key(name), st.encode())
        wb.put(VERSION_KEY, FORMAT_VERSION)
        wb.put(RELEASE_KEY, release.encode())


def check_format(db: Any, path: Path, raw: bytes, release: str) -> None:
    """Accept a store of this release's format or an older one (upgraded to this one), and
    refuse one of a newer format: its rows may mean what this release cannot know, and a
    store misread would answer wrongly rather than fail."""
    try:
        found = int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        found = 0
    if found < 1:
        raise StoreFormatError(
            f"{path}: its store format row ({raw!r}) is not a format version: this is not "
            f"a store dyno-stream wrote, or it is damaged; move it aside (the worker then "
            f"restores the partition from the snapshot topic)"
        )
    if found > STORE_FORMAT:
        writer = db.get(RELEASE_KEY)
        by = "a newer release" if writer is None else f"dyno-stream {writer.decode()}"
        raise StoreFormatError(
            f"{path} is a store of format {found}, written by {by}; this release "
            f"(dyno-stream {release}) reads store formats up to {STORE_FORMAT}. Run a release "
            f"that reads format {found} (CHANGELOG.md names each release's store format), or "
            f"move the store aside: the worker then restores the partition from the snapshot "
            f"topic"
        )
    # found < STORE_FORMAT: each format's upgrade step runs here, in order (format 1 is the
    # first: there is none yet); then the row says this release's format
    if found != STORE_FORMAT or db.get(RELEASE_KEY) != release.encode():
        with db.write_batch(sync=True) as wb:
            wb.put(VERSION_KEY, FORMAT_VERSION)
            wb.put(RELEASE_KEY, release.encode())


def recover_states(db: Any) -> None:
    """Rebuild the states a crash left behind their rows (those the journal names)."""
    names: set[str] = set()
    keys = []
    for key, value in db.iterator(prefix=_JOURNAL_PREFIX):
        keys.append(key)
        names.update(orjson.loads(value))
    if not keys:
        return
    batch = WriteBatch(db, {})
    with db.write_batch(sync=True) as wb:
        for name in names:
            rows = batch.item_rows(name)
            if rows:
                wb.put(state_key(name), replay_rows(name, rows).encode())
            else:
                wb.delete(state_key(name))
        for key in keys:
            wb.delete(key)


class StateCache:
    """The decoded states of recently written items, some of them ahead of their state rows.

    A write batch reads and changes ``cache`` in place (it then skips reading and decoding the
    state row); the store tells the cache what became of the batch: ``journal_rows`` before
    the commit, then ``committed`` or ``forget``. The caller holds the store's lock and passes
    its open LevelDB handle.

    The cache is sized in bytes: each state's estimate (``budget.estimate_state_bytes``, from
    its encoded length) is taken when it enters the cache and again whenever it is encoded
    for its row (every flush), so a state that grows in place is counted as it was at most
    ``flush_interval_s`` ago. Its limit is this store's share of the worker's budget, read
    at every batch: the budget changes it when the worker gains or loses partitions.
    """

    def __init__(
        self, path: Path, budget: MemoryBudget, flush_interval_s: float, sync: bool
    ) -> None:
        self.path = path  # named when LevelDB refuses a write of states
        #: item name -> its state, least recently written first
        self.cache: dict[str, ItemState] = {}
        #: item name -> its estimated bytes in memory (the same names as ``cache``)
        self.sizes: dict[str, int] = {}
        #: the sum of ``sizes``
        self.bytes = 0
        self.budget = budget
        #: items whose cached state is newer than their state row (all of them are cached and
        #: named in the dirty journal)
        self.dirty: set[str] = set()
        self._journal: list[bytes] = []  # journal keys written since the last flush
        self._journal_seq = 0
        self._flush_interval = flush_interval_s
        self._flushed_at = time.monotonic()
        self._sync = sync

    def journal_rows(self, names: Iterable[str]) -> dict[bytes, bytes | None]:
        """The journal row a batch touching ``names`` writes with its rows: the names whose
        state it makes dirty for the first time (none: no row)."""
        dirty = self.dirty
        fresh = [name for name in names if name not in dirty]
        if not fresh:
            return {}
        self._journal_seq += 1
        return {_JOURNAL_PREFIX + self._journal_seq.to_bytes(8, "big"): orjson.dumps(fresh)}

    def committed(self, db: Any, states: dict[str, ItemState], journal: Rows) -> None:
        """A batch's write landed with ``journal``: its ``states`` are now the newest (and
        dirty); keep the cache to its share of the budget and flush when due."""
        self._journal.extend(journal)
        self.dirty.update(states)
        cache, sizes = self.cache, self.sizes
        added = 0
        for name, st in states.items():
            if cache.pop(name, None) is None:  # new to the cache: one encode to size it
                size = sizes[name] = estimate_state_bytes(len(st.encode()))
                added += size
            cache[name] = st  # most recently used last
        self.bytes += added
        try:
            if self.bytes > self.budget.state_share:
                self.evict(db)
            if time.monotonic() - self._flushed_at > self._flush_interval:
                self.flush(db)
        except StoreWriteError as exc:
            # The batch itself is stored; the states stay dirty (and journaled), so the
            # next write or close() writes them. Failing here would tell a caller that a
            # stored op was not, and a retry would store it twice.
            log.warning("%s; states stay in memory and are written later", exc)

    def forget(self, db: Any, names: Iterable[str]) -> None:
        """A batch failed after changing cached states in place: put them right again.

        A clean state is dropped (LevelDB holds it); a dirty one exists only here, so it is
        rebuilt from the item's rows, which the failed batch did not touch.
        """
        for name in names:
            if name in self.dirty:
                st = self.cache[name] = replay_rows(name, WriteBatch(db, {}).item_rows(name))
                self._resize(name, len(st.encode()))
            elif self.cache.pop(name, None) is not None:
                self.bytes -= self.sizes.pop(name)

    def flush(self, db: Any) -> None:
        """Write every state that is ahead of its row, and clear the dirty journal."""
        if not self.dirty and not self._journal:
            return
        self._write_states(db, self.dirty, self._journal)
        self.dirty.clear()
        self._journal.clear()
        self._flushed_at = time.monotonic()

    def evict(self, db: Any) -> None:
        """Keep the cache within its share, writing the state of any dirty item it lets go
        (least recently written first)."""
        excess = self.bytes - self.budget.state_share
        if excess <= 0:
            return
        cache, dirty, sizes = self.cache, self.dirty, self.sizes
        victims = []
        for name in cache:  # least recently written first
            if excess <= 0:
                break
            victims.append(name)
            excess -= sizes[name]
        self._write_states(db, [name for name in victims if name in dirty])
        # only once written: a refused write must leave them dirty (and in the journal)
        for name in victims:
            del cache[name]
            self.bytes -= sizes.pop(name)
            dirty.discard(name)

    def _resize(self, name: str, encoded_length: int) -> None:
        size = estimate_state_bytes(encoded_length)
        self.bytes += size - self.sizes.get(name, 0)
        self.sizes[name] = size

    def _write_states(self, db: Any, names: Iterable[str], delete: Iterable[bytes] = ()) -> None:
        """Write the cached states of ``names`` (and delete ``delete``) in one write batch;
        each state's size is estimated again from the encoding written."""
        with writing(self.path), db.write_batch(sync=self._sync) as wb:
            for name in names:
                st = self.cache[name]
                if st.count:
                    encoded = st.encode()
                    self._resize(name, len(encoded))
                    wb.put(state_key(name), encoded)
            for key in delete:
                wb.delete(key)
