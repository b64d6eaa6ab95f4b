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
from dyno_stream.store.items import Item


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


def removable(snap: dict[str, Any], cutoff: str | None) -> bool:
    """Whether a pass folding rows older than ``cutoff`` leaves nothing of this item but its
    deleted marker: it reads as absent (deleted, or emptied), has more than that one row,
    and its last op (the deletion) is older than the cut-off. None: any cut-off will do."""
    ts = snap.get("timestamp")
    return (
        snap["value"] is None
        and snap["count"] > 1
        and ts is not None
        and (cutoff is None or ts < cutoff)
    )


def items_to_flatten(
    snapshots: Iterable[dict[str, Any]], policy: CompactionSettings, cutoff: str | None = None
) -> tuple[list[Candidate], int]:
    """Pick the items to flatten from their newest snapshots (a deleted item's is its
    tombstone's); also return how many were seen.

    Long histories (``min_rows``), and every deleted item whose deletion is older than the
    cut-off (``removable``): its rows all go, whatever their number, leaving its marker."""
    seen = 0
    chosen = []
    for snap in snapshots:
        seen += 1
        name, count, hash_ = snap["item"], snap["count"], snap["hash"]
        if hash_ is None or not name.startswith(policy.prefix):
            continue
        if count < policy.min_rows and not removable(snap, cutoff):
            continue
        chosen.append(Candidate(name, hash_, count, snap["changes"]))
    chosen.sort(key=lambda c: (-c.count, c.name))  # the longest histories first
    if policy.max_items is not None:
        chosen = chosen[: policy.max_items]
    return chosen, seen


def items_to_expire(
    snapshots: Iterable[dict[str, Any]], policy: CompactionSettings, now: float
) -> list[Candidate]:
    """The items an expiring pass deletes: present (not deleted, not empty), with a name
    of the policy's prefix, and whose last op is older than ``expire_after_s`` before
    ``now``; oldest first. Empty when expiry is off (``expire_after_s`` 0)."""
    if not policy.expire_after_s:
        return []
    limit = flake_floor(now - policy.expire_after_s)
    out = [
        Candidate(snap["item"], snap["hash"], snap["count"], snap["changes"])
        for snap in snapshots
        if snap["value"] is not None
        and snap["hash"] is not None
        and snap["timestamp"] is not None
        and snap["timestamp"] < limit
        and snap["item"].startswith(policy.prefix)
    ]
    return out


def summaries(store: DynoStore, min_rows: int = 0) -> Iterator[dict[str, Any]]:
    """A store's items in the shape ``items_to_flatten`` reads (a snapshot's, with ``value`` only
    told as None or not), deleted ones included: those of fewer rows too, when absent."""

    def wanted(_name: str, item: Item) -> bool:
        return item.count >= min_rows or (item.value is None and item.count > 1)

    for name, item in store.scan(wanted, include_empty=True):
        yield {
            "item": name,
            "hash": item.hash,
            "count": item.count,
            "changes": item.changes,
            "timestamp": item.timestamp,
            "value": None if item.value is None else {},
        }


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
