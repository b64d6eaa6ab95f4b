"""``dyno-stream verify``: two copies of the items proven equal, item by item, by the hash chain.

Each side is summed up as ``name -> (changes, hash, deleted)``: a snapshot topic (this
cluster's, or a second cluster's with ``--against``; each item's newest snapshot or
tombstone), or the workers' stores (their listing). Two items are equal when their changes
counts and chain hashes are: the hash covers every op in order, so equal hashes mean equal
histories, and comparing hashes, not values, keeps it fast. A difference is named: missing
on one side, behind (fewer changes), or diverged (the same changes, another hash). An item
deleted on one side and missing on the other is not one (a tombstone past its retention).

``deep`` also replays every item's rows in the stores of this machine's data directory and
recomputes its chain, so a changed row is found even where both copies agree on the hash.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Message

from dyno_stream.config import Settings
from dyno_stream.core.errors import ConfigError
from dyno_stream.core.snapshots import H_ITEM_CHANGES, H_ITEM_HASH
from dyno_stream.kafka.reading import read_range, topic_reader, watermarks
from dyno_stream.store import DynoStore

#: (changes, chain hash, deleted)
Summary = tuple[int, str, bool]


@dataclass(frozen=True)
class Difference:
    name: str
    kind: str  # missing, behind, diverged
    detail: str


@dataclass
class Comparison:
    left: str
    right: str
    compared: int = 0
    differences: list[Difference] = field(default_factory=list)
    deleted_one_side: int = 0


def compare(
    left: dict[str, Summary], right: dict[str, Summary], names: tuple[str, str]
) -> Comparison:
    """Every item of either side, compared by changes and hash."""
    out = Comparison(*names)
    a, b = names
    for name in sorted(left.keys() | right.keys()):
        out.compared += 1
        x, y = left.get(name), right.get(name)
        if x is None or y is None:
            there, where, missing = (y, b, a) if x is None else (x, a, b)
            assert there is not None
            if there[2]:
                out.deleted_one_side += 1
                continue
            out.differences.append(
                Difference(name, "missing", f"in {where} ({there[0]} changes), not in {missing}")
            )
        elif x[0] != y[0]:
            behind = a if x[0] < y[0] else b
            out.differences.append(
                Difference(name, "behind", f"{behind} is behind: {a} {x[0]}, {b} {y[0]} changes")
            )
        elif x[1] != y[1]:
            out.differences.append(
                Difference(
                    name, "diverged", f"{x[0]} changes each, hash {x[1]} in {a}, {y[1]} in {b}"
                )
            )
    return out


def _summary(msg: Message) -> tuple[str, Summary] | None:
    key, value = msg.key(), msg.value()
    if key is None:
        return None
    name = key.decode("utf-8", "replace")
    if value is None:  # a tombstone: its summary rides in its headers
        headers = dict(msg.headers() or [])
        changes, hash_ = headers.get(H_ITEM_CHANGES), headers.get(H_ITEM_HASH)
        if changes is None or hash_ is None:
            return None
        return name, (int(changes), _text(hash_), True)
    # the last ``,"changes":<n>,"hash":"<md5>"``: a value's attribute may hold the same text
    at = value.rfind(b',"changes":')
    end = value.find(b',"hash":"', at)
    if at < 0 or end < 0 or not value[at + 11 : end].isdigit():
        return None
    return name, (int(value[at + 11 : end]), value[end + 9 : end + 41].decode(), False)


def _text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


def read_summaries(
    settings: Settings, topic: str, progress: Callable[[int], None] = lambda n: None
) -> dict[str, Summary]:
    """Each item's newest summary in ``topic`` (the most changes; the later on a tie)."""
    consumer = topic_reader(settings, "verify")
    out: dict[str, Summary] = {}
    # A million summaries are young objects that all live on: without the collector's
    # passes over them, 52,197 items/s instead of 47,417 (bench_verify.py, 1,000,000 items)
    gc.disable()
    try:
        ranges = watermarks(consumer, topic)
        for messages in read_range(consumer, topic, ranges, timeout=600):
            for msg in messages:
                found = _summary(msg)
                if found is not None:
                    name, summary = found
                    known = out.get(name)
                    if known is None or summary[0] >= known[0]:
                        out[name] = summary
            progress(len(messages))
    finally:
        gc.enable()
        consumer.close()
    return out


def store_summaries(items: Iterator[dict[str, Any]]) -> dict[str, Summary]:
    """Summaries of the workers' listing (``ItemReads.list``): live items only."""
    return {it["item"]: (int(it["changes"]), str(it["hash"]), False) for it in items}


def against(settings: Settings, spec: str) -> tuple[Settings, str]:
    """``--against BOOTSTRAP[/TOPIC]``: settings reaching the other cluster, and its topic
    (this deployment's snapshot topic name unless given)."""
    bootstrap, _, topic = spec.partition("/")
    if not bootstrap:
        raise ConfigError(f"--against {spec!r}: expected BOOTSTRAP[/TOPIC]")
    kafka = settings.kafka.model_copy(update={"bootstrap_servers": bootstrap})
    return settings.model_copy(update={"kafka": kafka}), topic or settings.topics.snapshots


@dataclass
class DeepCheck:
    items: int = 0
    changed: list[Difference] = field(default_factory=list)


def deep_check(data_dir: Path, topic: str) -> DeepCheck:
    """Replay every item's rows in the partition stores under ``data_dir`` and compare the
    chain they give with the hash the store holds for the item. The stores are opened
    directly: stop the workers of this machine first (LevelDB lets one process in)."""
    out = DeepCheck()
    root = data_dir / topic
    paths = sorted(p for p in root.iterdir() if p.is_dir() and ".stale-" not in p.name)
    for path in paths if root.is_dir() else []:
        with DynoStore(path) as store:
            for name, item in store.scan(lambda _n, _i: True, include_empty=True):
                out.items += 1
                rows = store.history(name)
                replayed = rows[-1].hash if rows else ""
                if replayed != item.hash:
                    out.changed.append(
                        Difference(
                            name,
                            "changed row",
                            f"{path.name}: its rows replay to {replayed or '(none)'}, the "
                            f"store holds {item.hash}",
                        )
                    )
    return out
