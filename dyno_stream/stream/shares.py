"""One partition's share of a batch, and what is decided from it alone: the items whose
snapshots the batch publishes, the expiries it drops, the erasures it logs."""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import Message

from dyno_stream.core.deadletter import DeadLetter
from dyno_stream.core.events import EventModel
from dyno_stream.core.expectations import Expectation
from dyno_stream.store.partition import PartitionStore

#: the batch processor's logger: its erasure lines stay where operators look for them
log = logging.getLogger("dyno_stream.stream.processing")

_item_of = operator.attrgetter("item")


@dataclass
class PartitionShare:
    """The events of one batch that belong to one partition, in offset order."""

    ps: PartitionStore
    events: list[EventModel] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    last_offset: int = -1
    #: Kafka timestamp (ms) of the partition's last message in the batch, if it has one
    consumed_ms: int | None = None
    #: items named by flatten commands: each gets a snapshot, folded or not, which is how an
    #: online compaction pass learns that its command was processed
    flattened: list[str] = field(default_factory=list)
    #: indexes in ``events`` of its erase commands (each is logged once applied)
    erased: list[int] = field(default_factory=list)
    #: per item erased: the rows its erasures removed, which its answer says (0: none held)
    erased_rows: dict[str, int] = field(default_factory=dict)
    #: expiry delItems dropped (the item changed since the pass saw it): item -> offset,
    #: each answered with the item's snapshot as of that offset
    unexpired: dict[str, int] = field(default_factory=dict)
    #: the keys of its rows pending publication, written in its transaction
    pending: list[bytes] = field(default_factory=list)
    #: conditional ops: what each expects of its item, by index in ``events``
    expectations: dict[int, Expectation] = field(default_factory=dict)
    #: the offset of the partition's first message in the batch
    first_offset: int = -1


def touched_items(
    share: PartitionShare, changed: Iterable[str], failed: set[int]
) -> dict[str, int]:
    """The items whose snapshot the batch publishes, each with the offset of its last op:
    those its ops changed, those its commands named, and the expiries it answered unchanged.
    An event that failed (a dead letter) touches nothing."""
    events, offsets = share.events, share.offsets
    if failed:
        events = [e for i, e in enumerate(events) if i not in failed]
        offsets = [o for i, o in enumerate(offsets) if i not in failed]
    last = dict(zip(map(_item_of, events), offsets, strict=True))  # last op wins
    touched = {name: last[name] for name in changed}
    for name in share.flattened:
        if name in last:  # not when its command failed (a dead letter then)
            touched.setdefault(name, last[name])
    for name, offset in share.unexpired.items():  # answered, unchanged
        touched[name] = max(offset, touched.get(name, offset))
    return touched


def say_erased(share: PartitionShare, removed: Mapping[int, int]) -> None:
    """A log line per erase command applied, without the item's values."""
    for i in share.erased:
        if i in removed:
            log.info(
                "erased %r (%s@%d): %d rows removed",
                share.events[i].item,
                share.ps.label,
                share.offsets[i],
                removed[i],
            )


def drop_changed_expiries(share: PartitionShare, expiring: list[tuple[int, str]]) -> None:
    """Drop the expiry delItems whose item changed since the pass saw it idle: an earlier op
    of it in this batch, or a hash in the store other than the one the pass saw. Decided
    from the ops before it alone, so a replay of the partition decides the same."""
    events = share.events
    current = {
        item.name: item.hash
        for item in share.ps.store.current({events[i].item for i, _ in expiring})
    }
    first: dict[str, int] = {}  # each item's first event in the batch
    for i, event in enumerate(events):
        first.setdefault(event.item, i)
    drop: set[int] = set()
    for i, if_hash in expiring:
        name = events[i].item
        if current.get(name) != if_hash or first[name] < i:
            drop.add(i)
            share.unexpired[name] = share.offsets[i]
    if not drop:
        return
    keep = [i for i in range(len(events)) if i not in drop]
    moved = {old: new for new, old in enumerate(keep)}
    share.events = [events[i] for i in keep]
    share.offsets = [share.offsets[i] for i in keep]
    share.messages = [share.messages[i] for i in keep]
    share.erased = [moved[i] for i in share.erased]
    share.expectations = {moved[i]: e for i, e in share.expectations.items()}
