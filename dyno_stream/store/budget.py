"""One memory budget for every partition store of a worker (``[worker] memory_mb``).

``STATE_FRACTION`` of it goes to the item-state caches in equal shares of the stores held
(each evicts its least recently written states beyond its share); the rest to LevelDB, a
quarter each per store to the block cache and write buffer, a quarter to the table cache.
Shares are re-divided when partitions are assigned (``hold``), before their stores open.
Why equal shares and not one LRU list, and why open stores keep their LevelDB share:
``docs/design/memory-budget.md``.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

log = logging.getLogger("dyno_stream.store")

MIB = 1024 * 1024
#: The state caches' part of the budget; LevelDB has the rest.
STATE_FRACTION = 0.6
#: LevelDB's defaults (4 MiB write buffer, 8 MiB block cache) are what bench_worker measured
#: for years; larger ones gained nothing there, so a store with a large share stops here.
MAX_WRITE_BUFFER = 4 * MIB
MAX_BLOCK_CACHE = 32 * MIB
#: Below these LevelDB does more work than it saves (a memtable of a few KiB is a table file
#: per few batches); a budget too small for its stores gets them anyway, and says so.
MIN_WRITE_BUFFER = 256 * 1024
MIN_BLOCK_CACHE = 256 * 1024
#: LevelDB keeps each open table's index block in memory: about 25 KiB for a full 2 MiB table
#: of 4 KiB blocks (512 entries of a shortened key and a block handle), and its bloom filter,
#: 1.25 bytes per key.
TABLE_CACHE_ENTRY = 32 * 1024
#: Bloom filter bits per key (about 1% false positives). A batch looks up the state row of
#: every item not in its state cache, and a new item has none: without a filter each miss
#: probes every level and every small level-0 table that small write buffers leave. 150,000
#: new items in batches of 5,000 into one store with a 64-partition share of 256 MiB took
#: 13.8-16.2 us each without, 10.3-10.5 us with (LevelDB's default 8 MiB cache and 4 MiB
#: buffer: 9.3-10.8 us). Tables written before keep working without one.
BLOOM_FILTER_BITS = 10
#: LevelDB clamps max_open_files to at least 74 (64 tables and 10 files of its own).
MIN_OPEN_FILES = 74
MAX_OPEN_FILES = 1000  # LevelDB's default

#: A state's estimated bytes in memory: this, plus ``STATE_BYTES_PER_ENCODED`` per byte of its
#: encoded row. Measured with tracemalloc over 20,000 decoded states held in a dict by name
#: (the ItemState, its value's objects, its name, the dict slots), per encoded byte: flat
#: objects of short strings and numbers 5.3-5.9x (94-191 B encoded: 558-1,023 B), 20
#: attributes and a 10-member set 3.8x, one 2 KB string 1.3x, nested lists of small objects
#: 8.8x. The estimate is above the measured size for flat JSON and below it (by up to 40%)
#: only for deeply nested lists of small objects.
STATE_BYTES_FIXED = 300
STATE_BYTES_PER_ENCODED = 5


def estimate_state_bytes(encoded_length: int) -> int:
    """An item state's bytes in memory, from the length of its encoded row."""
    return STATE_BYTES_FIXED + STATE_BYTES_PER_ENCODED * encoded_length


class BudgetMember(Protocol):
    """A store drawing on the budget (``DynoStore``)."""

    def state_cache_bytes(self) -> int:
        """The estimated bytes of the states it caches now."""
        ...

    def trim_states(self) -> None:
        """Evict its least recently written states down to its share (under its own lock)."""
        ...


class MemoryBudget:
    """The bytes every store of one worker may keep in memory, and each store's share.

    Thread-safe: stores open on the restorer's threads and close on the loop's. The budget's
    own lock is never held while a store's lock is taken (``_redivide`` trims after letting
    it go), so no thread waits for a store while holding the budget.
    """

    def __init__(self, total_bytes: int, *, state_bytes: int | None = None) -> None:
        """``state_bytes``: the state caches' part (``STATE_FRACTION`` of the total unless
        given; tests give a few states' worth)."""
        if total_bytes <= 0:
            raise ValueError(f"memory budget must be positive, not {total_bytes} bytes")
        self.total_bytes = total_bytes
        self.state_bytes = int(total_bytes * STATE_FRACTION) if state_bytes is None else state_bytes
        self.leveldb_bytes = max(0, total_bytes - self.state_bytes)
        self._lock = threading.Lock()
        self._members: list[BudgetMember] = []
        self._held = 0  # partitions the worker holds (0: count the open stores)
        self._warned_for = 0  # the store count last warned about (once per count)
        #: each store's share of ``state_bytes``, read without the lock on every batch
        self.state_share = self.state_bytes

    @classmethod
    def megabytes(cls, mb: float) -> MemoryBudget:
        return cls(int(mb * MIB))

    @property
    def stores(self) -> int:
        """The number the budget is divided by: partitions held, or stores open if more."""
        return max(1, self._held, len(self._members))

    def hold(self, partitions: int) -> None:
        """The worker now holds ``partitions`` partitions (assigned, their stores open or
        not yet): divide by that from now on."""
        with self._lock:
            self._held = partitions
        self._redivide()

    def join(self, member: BudgetMember) -> None:
        with self._lock:
            self._members.append(member)
        self._redivide()

    def leave(self, member: BudgetMember) -> None:
        with self._lock:
            if member in self._members:
                self._members.remove(member)
        self._redivide()

    def used_state_bytes(self) -> int:
        """The estimated bytes of every store's cached states (read without their locks:
        a gauge, one batch old at most)."""
        with self._lock:
            members = list(self._members)
        return sum(m.state_cache_bytes() for m in members)

    def _redivide(self) -> None:
        with self._lock:
            share = self.state_bytes // self.stores
            shrunk = share < self.state_share
            self.state_share = share
            members = list(self._members)
        if shrunk:  # each store over its new share lets go of its oldest states now
            for member in members:
                member.trim_states()

    def leveldb_options(self) -> dict[str, int]:
        """plyvel options for a store opened now: its share of LevelDB's part."""
        share = self.leveldb_bytes // self.stores
        write_buffer = min(max(share // 4, MIN_WRITE_BUFFER), MAX_WRITE_BUFFER)
        block_cache = min(max(share // 4, MIN_BLOCK_CACHE), MAX_BLOCK_CACHE)
        open_files = min(max(share // 4 // TABLE_CACHE_ENTRY, MIN_OPEN_FILES), MAX_OPEN_FILES)
        if share // 4 < MIN_WRITE_BUFFER and self._warned_for != self.stores:
            self._warned_for = self.stores
            log.warning(
                "memory budget: %d stores leave LevelDB %.2f MiB each; each gets at least "
                "%.2f MiB of buffers and cache (raise worker.memory_mb)",
                self.stores,
                share / MIB,
                (2 * MIN_WRITE_BUFFER + MIN_BLOCK_CACHE) / MIB,
            )
        return {
            "write_buffer_size": write_buffer,
            "lru_cache_size": block_cache,
            "max_open_files": open_files,
            "bloom_filter_bits": BLOOM_FILTER_BITS,
        }
