"""Compaction policy: which items a pass folds, and up to which flake.

Shared by every pass: the worker's own scheduled pass (``stream``), the online and offline
passes (``jobs``). It lives beside the store because ``summaries`` reads one, and the worker
may not reach up into the jobs layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dyno_stream.config import CompactionSettings
from dyno_stream.core.flake import flake_floor
from dyno_stream.store.dynostore import DynoStore


def fold_cutoff(consumed_through: float, now: float, lateness_s: float) -> str:
    """The flake before which a pass may fold a partition's rows.

    ``consumed_through`` is a time up to which every op that reached the partition has been
    consumed: ``now`` for a partition consumed to its end, otherwise the Kafka timestamp of
    the newest message consumed. An op still waiting in Kafka reached it later than that,
    so if it was on time its flake is no older than that time minus the lateness, and no
    row it must sort after is folded. (Message timestamps are CreateTime by default: this
    holds as long as producers' clocks are right; LogAppendTime makes it exact.)
    """
    return flake_floor(min(consumed_through, now) - lateness_s)


@dataclass(frozen=True)
class Candidate:
    """An item a pass would flatten, and why."""

    name: str
    hash: str
    count: int
    changes: int


def choose(
    snapshots: Iterable[dict[str, Any]], policy: CompactionSettings
) -> tuple[list[Candidate], int]:
    """Pick the items to flatten from their newest snapshots; also return how many were seen."""
    seen = 0
    chosen = []
    for snap in snapshots:
        seen += 1
        name, count, hash_ = snap["item"], snap["count"], snap["hash"]
        if hash_ is None or count < policy.min_rows or not name.startswith(policy.prefix):
            continue
        chosen.append(Candidate(name, hash_, count, snap["changes"]))
    chosen.sort(key=lambda c: (-c.count, c.name))  # the longest histories first
    if policy.max_items is not None:
        chosen = chosen[: policy.max_items]
    return chosen, seen


def summaries(store: DynoStore, min_rows: int = 0) -> Iterator[dict[str, Any]]:
    """A store's items in the shape ``choose`` reads (a snapshot's), deleted ones included."""
    for name, item in store.scan(lambda n, i: i.count >= min_rows, include_empty=True):
        yield {"item": name, "hash": item.hash, "count": item.count, "changes": item.changes}


def fold_before(
    store: DynoStore,
    names: Iterable[str],
    cutoff: str,
    advance: Callable[[int], None] = lambda n: None,
) -> list[str]:
    """Fold each named item's rows older than ``cutoff`` (one write batch an item, so a pass
    stopped halfway leaves whole items); returns the names of those that folded anything.
    The worker's scheduled pass and the offline pass both fold this way."""
    folded = []
    for name in names:
        if store.flatten_before(name, cutoff):
            folded.append(name)
        advance(1)
    return folded
