"""Materialized views for subscribers: the snapshot topic, read into a local table.

A :class:`MaterializedView` reads the snapshot topic from the beginning on a background
thread and keeps a table of each item's newest snapshot: in memory by default, or in LevelDB
when given a path (for millions of items; it then resumes from the offsets it stored, in the
same write as the rows). The snapshot topic is compacted, so reading it from the beginning
yields at least the last snapshot of every item.

Snapshots can arrive twice or out of order (at-least-once publication, a restored worker
publishing again). A snapshot replaces the one held only when it is newer: more ``changes``,
or as many changes and fewer rows (a flatten). So a stale snapshot never replaces a newer one,
and ``on_change`` fires once per new snapshot. A tombstone (a null value under the item's key)
removes the item from the table and fires ``on_change(old, None)``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import plyvel
from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from dyno_stream.config import Settings
from dyno_stream.core.errors import DynoError, KafkaAdminError, StoreError
from dyno_stream.core.snapshots import SnapshotDict, is_newer, parse_snapshot
from dyno_stream.kafka.reading import partition_ends, topic_reader

log = logging.getLogger(__name__)

#: ``(old, new)``: ``old`` None for a new item, ``new`` None for a deleted one (a tombstone)
ChangeCallback = Callable[[SnapshotDict | None, SnapshotDict | None], None]

_OFFSET_PREFIX = b"\x00offset\x00"
_ITEM_PREFIX = b"\x01"  # item rows: names may start with any character, even \x00


class _MemoryTable:
    def __init__(self) -> None:
        self.rows: dict[str, SnapshotDict] = {}
        self.offsets: dict[int, int] = {}

    def get(self, name: str) -> SnapshotDict | None:
        return self.rows.get(name)

    def write(self, rows: dict[str, SnapshotDict | None], offsets: dict[int, int]) -> None:
        for name, snap in rows.items():
            if snap is None:
                self.rows.pop(name, None)
            else:
                self.rows[name] = snap
        self.offsets.update(offsets)

    def items(self) -> Iterator[tuple[str, SnapshotDict]]:
        yield from sorted(self.rows.items())

    def __len__(self) -> int:
        return len(self.rows)

    def close(self) -> None:
        pass


class _LevelDBTable:
    """Snapshots by item name, and the next offset of each partition, in one database."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        try:
            self.db: Any = plyvel.DB(str(path), create_if_missing=True)
        except plyvel.Error as exc:
            raise StoreError(f"cannot open view table at {path}: {exc}") from exc
        self.offsets = {
            int(k[len(_OFFSET_PREFIX) :]): int(v)
            for k, v in self.db.iterator(prefix=_OFFSET_PREFIX)
        }
        self._count = sum(1 for _ in self.db.iterator(prefix=_ITEM_PREFIX, include_value=False))

    def get(self, name: str) -> SnapshotDict | None:
        raw = self.db.get(_ITEM_PREFIX + name.encode())
        return None if raw is None else dict(json.loads(raw))

    def write(self, rows: dict[str, SnapshotDict | None], offsets: dict[int, int]) -> None:
        with self.db.write_batch(transaction=True) as wb:
            for name, snap in rows.items():
                key = _ITEM_PREFIX + name.encode()
                held = self.db.get(key) is not None
                if snap is None:
                    if held:
                        self._count -= 1
                        wb.delete(key)
                    continue
                if not held:
                    self._count += 1
                wb.put(key, json.dumps(snap, ensure_ascii=False).encode())
            for p, off in offsets.items():
                wb.put(_OFFSET_PREFIX + str(p).encode(), str(off).encode())
        self.offsets.update(offsets)

    def items(self) -> Iterator[tuple[str, SnapshotDict]]:
        for k, v in self.db.iterator(prefix=_ITEM_PREFIX):
            yield k[len(_ITEM_PREFIX) :].decode(), json.loads(v)

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        self.db.close()


class MaterializedView:
    """A local, continuously updated table of the items' newest snapshots.

    Use as a context manager, or ``start()`` and ``close()``. ``prefix`` keeps only items
    whose name starts with it.
    """

    def __init__(
        self, settings: Settings, path: str | Path | None = None, prefix: str = ""
    ) -> None:
        self.settings = settings
        self.topic = settings.topics.snapshots
        self.prefix = prefix
        self._table: _MemoryTable | _LevelDBTable = (
            _MemoryTable() if path is None else _LevelDBTable(Path(path))
        )
        self._callbacks: list[ChangeCallback] = []
        #: The next offset of each partition whose messages are in the table and were told
        #: to ``on_change``: what ``wait_until_caught_up`` waits for.
        self._done: dict[int, int] = dict(self._table.offsets)
        self._partitions: list[int] = []
        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dyno-view", daemon=True)
        self._consumer = topic_reader(settings, "view")

    # -- reading -----------------------------------------------------------------------------

    def get(self, name: str) -> SnapshotDict | None:
        """The item's newest snapshot (``value`` is None when the item is absent)."""
        with self._lock:
            return self._table.get(name)

    def __iter__(self) -> Iterator[tuple[str, SnapshotDict]]:
        with self._lock:
            rows = list(self._table.items())
        return iter(rows)

    def __len__(self) -> int:
        with self._lock:
            return len(self._table)

    def on_change(self, callback: ChangeCallback) -> None:
        """Call ``callback(old, new)`` for every new snapshot, and ``callback(old, None)``
        when a held item is deleted (its tombstone), on the view's thread."""
        self._callbacks.append(callback)

    def wait_until_caught_up(self, timeout: float = 30.0) -> bool:
        """Wait until the table holds everything published before this call, and
        ``on_change`` has been called for all of it (so a caller can check that a snapshot
        caused no call, once the view read past it)."""
        targets = self._high_watermarks()
        deadline = time.monotonic() + timeout
        with self._progress:
            while True:
                if self._error is not None:
                    raise DynoError(f"the view stopped: {self._error}") from self._error
                done = all(self._done.get(p, 0) >= hi for p, hi in targets.items())
                left = deadline - time.monotonic()
                if done or left <= 0:
                    return done
                self._progress.wait(min(left, 0.5))

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> MaterializedView:
        meta = self._consumer.list_topics(self.topic, timeout=30).topics.get(self.topic)
        if meta is None or meta.error is not None:
            raise KafkaAdminError(f"snapshot topic {self.topic!r} does not exist")
        self._partitions = sorted(meta.partitions)
        self._consumer.assign(
            [
                TopicPartition(self.topic, p, self._table.offsets.get(p, OFFSET_BEGINNING))
                for p in self._partitions
            ]
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._consumer.close()
        self._table.close()

    def __enter__(self) -> MaterializedView:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the reading thread ------------------------------------------------------------------

    def _high_watermarks(self) -> dict[int, int]:
        # a consumer of its own: the view's consumer is busy in consume() on its thread,
        # and confluent-kafka calls on one consumer from two threads can block each other
        probe = topic_reader(self.settings, "view-probe")
        try:
            ends = partition_ends(probe, self.topic, timeout=10)
            return {p: ends[p] for p in self._partitions if p in ends}
        except KafkaException as exc:
            raise KafkaAdminError(f"cannot read the end of {self.topic}: {exc}") from exc
        finally:
            probe.close()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                messages = self._consumer.consume(1000, 0.2)
                if messages:
                    self._apply(messages)
        except BaseException as exc:  # reported by wait_until_caught_up
            log.exception("view stopped")
            with self._progress:
                self._error = exc
                self._progress.notify_all()

    def _apply(self, messages: list[Any]) -> None:
        changed: dict[str, SnapshotDict | None] = {}  # None: deleted
        fired: list[tuple[SnapshotDict | None, SnapshotDict | None]] = []
        offsets: dict[int, int] = {}
        for msg in messages:
            if msg.error():
                continue
            offsets[msg.partition()] = msg.offset() + 1
            value, key = msg.value(), msg.key()
            if value is None:  # a tombstone: the item is deleted
                if key is None:
                    continue
                name = key.decode("utf-8", "replace")
                if not name.startswith(self.prefix):
                    continue
                gone = changed[name] if name in changed else self._table.get(name)
                if gone is not None:
                    changed[name] = None
                    fired.append((gone, None))
                continue
            snap = parse_snapshot(value)
            if snap is None:
                log.warning(
                    "skipping a message that is not a snapshot at %s/%s@%s",
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                )
                continue
            name = snap["item"]
            if not name.startswith(self.prefix):
                continue
            held = changed[name] if name in changed else self._table.get(name)
            if is_newer(snap, held):
                changed[name] = snap
                fired.append((held, snap))
        with self._progress:
            self._table.write(changed, offsets)
        for old, new in fired:
            for cb in self._callbacks:
                try:
                    cb(old, new)
                except Exception:
                    log.exception("on_change callback failed")
        with self._progress:
            self._done.update(offsets)
            self._progress.notify_all()
