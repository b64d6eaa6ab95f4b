"""The reading side of ``DynoStore``: one item (now, or as of a time), its history, and
items in name order. Reads take the cached states where they are ahead of their rows."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from dyno_stream.core import ops
from dyno_stream.core.errors import StoreClosedError
from dyno_stream.core.keys import STATE_PREFIX, check_name, item_prefix, split_key, state_key
from dyno_stream.core.ops import HISTORY, ItemState
from dyno_stream.store.history import HistoryEntry, item_history, state_as_of
from dyno_stream.store.items import Changeset, HistoryChangeset, Item
from dyno_stream.store.states import StateCache

_STATE_END = STATE_PREFIX[:-1] + b"\x01"


class StoreQueries:
    """What ``DynoStore`` answers from its rows and states; the store provides the rest."""

    path: Path
    _db: Any
    _lock: Any
    _states: StateCache

    def _open_db(self) -> Any:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def _state(self, name: str) -> ItemState | None:
        with self._lock:
            states = self._states
            if name in states.dirty:  # an independent copy of the state ahead of its row
                return ItemState.decode(states.cache[name].encode())
            raw = self._open_db().get(state_key(name))
        return None if raw is None else ItemState.decode(raw)

    def get_item(self, name: str) -> Item:
        check_name(name)
        return Item.from_state(name, self._state(name))

    def _item_rows(self, name: str) -> list[tuple[str, str, str]]:
        """The item's rows as ``(flake, op, stored json)``, in key order."""
        check_name(name)
        out = []
        for key, value in self._open_db().iterator(prefix=item_prefix(name)):
            _, flake, op = split_key(key)
            out.append((flake, op, value.decode("utf-8")))
        return out

    def history(self, name: str) -> list[HistoryEntry]:
        """The item's rows, each with the chain hash and changes after it (``store.history``)."""
        return item_history(name, self._item_rows(name))

    def as_of(self, name: str, time_ms: int) -> Item:
        """The item as it stood at ``time_ms`` (its ops up to then); raises
        ``HistoryFoldedError`` when its rows no longer hold that time."""
        return Item.from_state(name, state_as_of(name, self._item_rows(name), time_ms))

    def current(self, names: Iterable[str]) -> list[Item]:
        """Items as of the last write, served from the state cache where possible.

        For serializing at once (the worker's snapshots): an item's value may be the store's
        own object, so it must not be changed or kept across writes. ``get_item`` returns
        independent copies.
        """
        with self._lock:
            db = self._open_db()
            out = []
            for name in names:
                st = self._states.cache.get(name)
                if st is None:
                    raw = db.get(state_key(name))
                    st = None if raw is None else ItemState.decode(raw)
                out.append(Item.from_state(name, st))
            return out

    def get_history(self, name: str) -> list[Changeset | HistoryChangeset]:
        check_name(name)
        prefix = item_prefix(name)
        out: list[Changeset | HistoryChangeset] = []
        for key, value in self._open_db().iterator(prefix=prefix):
            flake, op = key[len(prefix) :].decode().split("/")
            text = value.decode("utf-8")
            if op == HISTORY:
                hash_, changes, folded = ops.decode_history(text)
                out.append(HistoryChangeset(name, flake, folded or {}, hash_, changes))
            else:
                out.append(Changeset(name, flake, op, ops.loads(text)))
        return out

    def _items(
        self,
        start: bytes,
        stop: bytes,
        include_stop: bool,
        predicate: Callable[[str, Item], bool] | None = None,
        include_empty: bool = False,
    ) -> Iterator[tuple[str, Item]]:
        # a snapshot keeps a long iteration consistent while the worker goes on writing
        self.flush()
        try:
            with self._open_db().snapshot() as snap:
                rows = snap.iterator(start=start, stop=stop, include_stop=include_stop)
                for key, raw in rows:
                    name = key[len(STATE_PREFIX) :].decode("utf-8")
                    item = Item.from_state(name, ItemState.decode(raw))
                    present = item.value is not None or (include_empty and item.count > 0)
                    if present and (predicate is None or predicate(name, item)):
                        yield name, item
        except RuntimeError as exc:  # plyvel: "Database or iterator is closed"
            if self._db is None:
                raise StoreClosedError(f"store at {self.path} was closed during iteration") from exc
            raise

    def query(self, start: str, end: str) -> Iterator[tuple[str, Item]]:
        """Items with ``start <= name <= end``, in name order (absent items are skipped)."""
        return self._items(state_key(start), state_key(end), True)

    def scan(
        self, predicate: Callable[[str, Item], bool], include_empty: bool = False
    ) -> Iterator[tuple[str, Item]]:
        """Every present item for which ``predicate(name, item)`` is true, in name order.

        ``include_empty`` also yields items that have rows but read as absent (deleted or
        emptied): compaction must fold those too."""
        return self._items(STATE_PREFIX, _STATE_END, False, predicate, include_empty)

    def rows(self, name: str | None = None) -> Iterator[tuple[str, str]]:
        """Item rows as ``(key, value)`` text in key order (all, or one item's): the seed
        README's view of the store."""
        db = self._open_db()
        it = db.iterator(start=b"\x01") if name is None else db.iterator(prefix=item_prefix(name))
        for key, value in it:
            yield key.decode("utf-8"), value.decode("utf-8")
