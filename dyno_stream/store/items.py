"""Items as a store reads them back: ``Item`` (value and history summary), ``Changeset``
(one op row) and ``HistoryChangeset`` (a history row, the folded prefix of an item's history).

Plain frozen values, built from the store's rows and states; nothing here touches LevelDB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dyno_stream.core.ops import HISTORY, ItemState


@dataclass(frozen=True, slots=True)
class Item:
    """An item as read back: its value (None when absent) and its history's summary.

    ``changes`` counts every op the item has had, including those folded into a history row;
    ``count`` is the rows stored now; ``hash`` is the chain hash after the last row.
    ``deleted``: its last op deleted it (``delItem`` or an erasure; its value is then None
    and its snapshot a tombstone); an item emptied otherwise reads as absent but is not.
    """

    name: str
    value: dict[str, Any] | None
    timestamp: str | None
    changes: int
    hash: str | None
    count: int
    deleted: bool = False

    def as_dict(self, **more: Any) -> dict[str, Any]:
        """The item as the wire shows it (a snapshot's fields, before its ``source``), with
        ``more`` fields after them: one shape for snapshots, HTTP reads and the CLI."""
        return {
            "item": self.name,
            "value": self.value,
            "timestamp": self.timestamp,
            "changes": self.changes,
            "hash": self.hash,
            "count": self.count,
            **more,
        }

    @classmethod
    def from_state(cls, name: str, state: ItemState | None) -> Item:
        if state is None or state.count == 0:
            return cls(name, None, None, 0, None, 0)
        return cls(
            name,
            state.value or None,
            state.timestamp,
            state.changes,
            state.hash,
            state.count,
            state.deleted,
        )


@dataclass(frozen=True, slots=True)
class Changeset:
    """One op row of an item's history."""

    name: str
    timestamp: str
    operation: str
    change: Any


@dataclass(frozen=True, slots=True)
class HistoryChangeset:
    """A history row: the folded prefix of an item's history."""

    name: str
    timestamp: str
    value: dict[str, Any]
    hash: str
    changes: int
    operation: str = HISTORY
