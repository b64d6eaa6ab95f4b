"""Which snapshot of each item a restore or a migration keeps: ``NewestSnapshots``.

It holds raw bytes and ranks two messages of a key only when they meet, so these tests hold
it to ``is_newer`` (the views' rule) over every order a topic can deliver them in.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson

from dyno_stream.core.snapshots import (
    NewestSnapshots,
    is_newer,
    snapshot_rank,
    source_partition_test,
)

FLAKE = "013d58c7276e-0000-188c-786ae2e1f629"
HASH = "cdc523b696455d8a17248d6fce5b8cdc"


def snap(item: str, changes: int, count: int, partition: int = 0, offset: int = 0) -> bytes:
    doc: dict[str, Any] = {
        "item": item,
        "value": {"changes": changes, "count": count},  # decoys for a careless text search
        "timestamp": FLAKE,
        "changes": changes,
        "hash": HASH,
        "count": count,
        "source": {"topic": "dyno.ops", "partition": partition, "offset": offset},
    }
    return orjson.dumps(doc)


def newest(messages: list[tuple[bytes | None, bytes | None]]) -> dict[str, tuple[int, int]]:
    kept = NewestSnapshots()
    for key, value in messages:
        kept.add(key, value)
    out = kept.finish()
    assert out is not None
    return {name: (k.snapshot.changes, k.snapshot.count) for name, k in out.items()}


def test_a_stale_duplicate_never_wins_in_any_order() -> None:
    versions = [(3, 3), (5, 5), (5, 1), (4, 4)]  # (5, 1): a flatten of the same 5 changes
    for order in itertools.permutations(versions):
        got = newest([(b"a", snap("a", c, n)) for c, n in order])
        assert got == {"a": (5, 1)}, order


def test_matches_is_newer_on_random_streams() -> None:
    rnd = random.Random(7)
    for _ in range(200):
        messages: list[tuple[bytes | None, bytes | None]] = []
        expected: dict[str, dict[str, int]] = {}
        for _ in range(rnd.randrange(1, 30)):
            item = f"i{rnd.randrange(4)}"
            doc = {"changes": rnd.randrange(5), "count": rnd.randrange(1, 4)}
            messages.append((item.encode(), snap(item, doc["changes"], doc["count"])))
            if is_newer(doc, expected.get(item)):
                expected[item] = doc
        assert newest(messages) == {k: (d["changes"], d["count"]) for k, d in expected.items()}


def test_a_tombstone_deletes_and_a_later_snapshot_comes_back() -> None:
    assert newest([(b"a", snap("a", 2, 2)), (b"a", None)]) == {}
    assert newest([(b"a", snap("a", 9, 9)), (b"a", None), (b"a", snap("a", 1, 1))]) == {"a": (1, 1)}


def test_strays_never_displace_a_snapshot_and_are_counted() -> None:
    kept = NewestSnapshots()
    kept.add(b"a", snap("a", 2, 2))
    kept.add(b"a", b"not json")
    kept.add(b"a", b'{"changes": true, "count": 1}')
    kept.add(b"b", b"[1, 2]")  # held alone: refused when validated
    kept.add(None, None)
    out = kept.finish()
    assert out is not None
    assert {n: k.snapshot.changes for n, k in out.items()} == {"a": 2}
    assert kept.unreadable == 4
    assert kept.messages == 5


def test_a_stray_held_first_gives_way_to_a_snapshot() -> None:
    assert newest([(b"a", b"junk"), (b"a", snap("a", 1, 1))]) == {"a": (1, 1)}


def test_unkeyed_snapshots_are_grouped_by_their_item() -> None:
    assert newest([(None, snap("a", 4, 4)), (None, snap("a", 2, 2))]) == {"a": (4, 4)}


def test_keep_filters_and_the_raw_bytes_are_the_ones_read() -> None:
    kept = NewestSnapshots()
    raws = {p: snap(f"i{p}", 1, 1, partition=p) for p in range(3)}
    for p, raw in raws.items():
        kept.add(f"i{p}".encode(), raw)
    out = kept.finish(keep=lambda s: s.source is not None and s.source.partition == 1)
    assert out is not None
    assert list(out) == ["i1"]
    assert out["i1"].raw == raws[1] and out["i1"].key == b"i1"


def test_finish_stops_when_cancelled() -> None:
    kept = NewestSnapshots()
    for i in range(10):
        kept.add(f"i{i}".encode(), snap(f"i{i}", 1, 1))
    asked = []

    def cancelled() -> bool:
        asked.append(1)
        return len(asked) > 1

    assert kept.finish(cancelled=cancelled, check_every=3) is None
    assert len(asked) == 2  # asked at 0, cancelled at 3


def test_rank_reads_the_top_level_fields_only() -> None:
    assert snapshot_rank(snap("a", 3, 2)) == (3, -2)
    raw = b'{"value": {"changes": 99, "count": 0}, "changes": 1, "count": 1}'
    assert snapshot_rank(raw) == (1, -1)
    assert snapshot_rank(b'"text"') is None


def test_the_source_partition_test_never_skips_a_snapshot_of_the_partition() -> None:
    maybe = source_partition_test(3)
    assert maybe(snap("a", 1, 1, partition=3))
    assert maybe(b'{"source": {"topic": "t", "partition" : 3.0, "offset": 1}}')
    assert not maybe(snap("a", 1, 1, partition=13))
    assert not maybe(snap("a", 1, 1, partition=31))
    assert not maybe(snap("a", 1, 1, partition=4))
    kept = NewestSnapshots()
    for p in (2, 3, 4, 13, 30):
        kept.add(f"i{p}".encode(), snap(f"i{p}", 1, 1, partition=p))
    out = kept.finish(lambda s: s.source is not None and s.source.partition == 3, maybe=maybe)
    assert out is not None and list(out) == ["i3"]
