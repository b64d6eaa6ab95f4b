"""An item's history as its rows hold it, and the item as it stood at a time.

The rows are the item's ops in flake order (after a ``history`` row when older ones were
folded); replaying a prefix of them gives the item at any time since the fold. Before the
fold, the rows no longer hold it: that is said (``HistoryFoldedError``), never guessed.
``[compaction] keep_history_s`` keeps ops from folding for that long.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dyno_stream.core import ops
from dyno_stream.core.errors import HistoryFoldedError
from dyno_stream.core.flake import format_flake
from dyno_stream.core.ops import HISTORY, ItemState


@dataclass(frozen=True)
class HistoryEntry:
    """One row of an item's history: its op, its change, and the item's chain after it."""

    flake: str
    op: str
    change: Any
    changes: int
    hash: str

    @property
    def time_ms(self) -> int:
        return int(self.flake[:12], 16)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ts": self.flake,
            "time_ms": self.time_ms,
            "op": self.op,
            "change": self.change,
            "changes": self.changes,
            "hash": self.hash,
        }


def item_history(name: str, rows: Iterable[tuple[str, str, str]]) -> list[HistoryEntry]:
    """Each ``(flake, op, stored json)`` row with the chain hash and changes after it; a
    ``history`` row shows the folded state it holds (None: the deleted marker)."""
    state, out = ItemState(), []
    for flake, op, text in rows:
        if op == HISTORY:
            state.push_history(flake, text)
            change: Any = ops.decode_history(text)[2]
        else:
            change = ops.loads(text)
            state.push(name, flake, op, change, text)
        out.append(HistoryEntry(flake, op, change, state.changes, state.hash))
    return out


def state_as_of(name: str, rows: Iterable[tuple[str, str, str]], time_ms: int) -> ItemState:
    """The item as the ops up to ``time_ms`` (inclusive) left it; an empty state when it had
    none then. Raises ``HistoryFoldedError`` when a fold (or an erasure) took in ops after
    that time: the state then is no longer kept."""
    cutoff = format_flake(time_ms + 1, 0, 0, 0)  # every flake of time_ms sorts below it
    state = ItemState()
    for flake, op, text in rows:
        if op == HISTORY:
            if flake >= cutoff:
                raise HistoryFoldedError(
                    f"history of {name!r} folded (or erased) through {flake}: its state at "
                    f"{time_ms} ms is no longer kept ([compaction] keep_history_s keeps it)"
                )
            state.push_history(flake, text)
        elif flake < cutoff:
            state.push(name, flake, op, ops.loads(text), text)
        else:
            break
    return state
