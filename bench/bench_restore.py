"""Restore reads on a broker of its own: how fast one ops partition's snapshots come back.

A 16-partition deployment: each snapshot partition holds ``--items`` items' snapshots made by
its own ops partition (co-partitioned), plus older duplicates of a tenth of them (half written
before the item's newest snapshot, half after it, as a republish after a crash can). Each run
restores partition 3 in three ways and checks each result holds every item of that partition
at its newest snapshot:

- the whole restore as a worker's restorer does it: partition 3's read, then its items and
  offset written to a new partition store in one LevelDB batch;
- ``read_partition_snapshots``: partition 3 of the snapshot topic alone;
- ``read_partition_snapshots_from_all``: the fallback for a topic that is not co-partitioned,
  every partition read and partition 3's snapshots kept;
- ``read_snapshots(keep=...)``: the worker's restore before co-partitioning, the same.

It prints items/s (items restored over seconds) for each, over ``--runs`` runs: median and
range. The reads run under the worker's garbage-collector threshold, as a restore in a worker
does (``--default-gc`` runs them under Python's). Results: ``bench/results/restore.json``.

Run: ``python bench/bench_restore.py`` (starts its own broker on free ports).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer
from harness.broker import bench_broker, scratch
from harness.output import write_json
from harness.settings import bench_settings

from dyno_stream.config import Settings, producer_config
from dyno_stream.core.events import Snapshot
from dyno_stream.kafka.reading import (
    read_partition_snapshots,
    read_partition_snapshots_from_all,
    read_snapshots,
)
from dyno_stream.kafka.topics import ensure_topics
from dyno_stream.store.partition import PartitionStore

RESULTS = Path(__file__).resolve().parent / "results" / "restore.json"
PARTITIONS = 16
RESTORED = 3
#: the worker's young-generation threshold (``dyno_stream/stream``): a restore runs under it
WORKER_GC_THRESHOLD = 200_000
FLAKE = "01a22ca30be5-0000-3dfd-02fc00000001"
HASH = "cdc523b696455d8a17248d6fce5b8cdc"

#: One way to restore a partition: its items' newest snapshots, by item
Read = Callable[[], dict[str, Any]]


def snapshot(s: Settings, name: str, partition: int, changes: int) -> bytes:
    """A snapshot of about 330 bytes, like the worker benchmark's items."""
    doc: dict[str, Any] = {
        "item": name,
        "value": {
            "email": f"{name}@example.com",
            "city": "Wellington",
            "plan": "pro",
            "n": changes,
            "note": "x" * 20,
            "visits": changes,
            "tags": {"tag-1": True},
        },
        "timestamp": FLAKE,
        "changes": changes,
        "hash": HASH,
        "count": changes,
        "source": {"topic": s.topics.ops, "partition": partition, "offset": changes * 1000},
    }
    return orjson.dumps(doc)


def fill(s: Settings, items: int) -> dict[str, int]:
    """Write every partition's snapshots; return partition 3's items and their newest
    ``changes``."""
    producer = Producer({**producer_config(s), "linger.ms": 50, "batch.size": 1_000_000})
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    def send(name: str, partition: int, changes: int) -> None:
        value = snapshot(s, name, partition, changes)
        while True:
            try:
                producer.produce(
                    s.topics.snapshots,
                    value,
                    name.encode(),
                    partition=partition,
                    on_delivery=delivered,
                )
                return
            except BufferError:
                producer.poll(0.1)

    expected: dict[str, int] = {}
    for p in range(PARTITIONS):
        for i in range(items):
            name = f"p{p:02d}-item-{i:06d}"
            duplicated = i % 10 == 0
            if duplicated and i % 20 == 0:
                send(name, p, 2)  # an older snapshot before the newest
            send(name, p, 5)
            if duplicated and i % 20 == 10:
                send(name, p, 3)  # a stale one after it: must not win
            if p == RESTORED:
                expected[name] = 5
        producer.poll(0)
    producer.flush(120)
    if errors:
        raise SystemExit(f"{len(errors)} snapshots not written: {errors[:3]}")
    return expected


def timed(read: Callable[[], dict[str, Any]], expected: dict[str, int]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process's, librdkafka's threads included) of one
    read. The CPU seconds say what the read costs when the two cores are shared with other
    work (the broker, other benchmarks), which stretches the wall clock."""
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    got = read()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    changes = {
        name: (snap.changes if isinstance(snap, Snapshot) else snap["changes"])
        for name, snap in got.items()
    }
    if changes != expected:
        wrong = sum(1 for n, c in expected.items() if changes.get(n) != c)
        raise SystemExit(f"{wrong} of {len(expected)} items not at their newest snapshot")
    return seconds, cpu


def reads(s: Settings, tmp: Path, expected: dict[str, int]) -> dict[str, Read]:
    """The ways to restore partition ``RESTORED`` that are timed, by name."""
    ops, p = s.topics.ops, RESTORED

    def keep(snap: dict[str, Any]) -> bool:
        src = snap.get("source") or {}
        return bool(src.get("topic") == ops and src.get("partition") == p)

    def whole_restore() -> dict[str, Any]:
        """What a worker's restorer does: the read, then the items and the offset written
        to a new partition store in one batch (``PartitionStore.restore_from``)."""
        ps = PartitionStore.open(Path(tempfile.mkdtemp(dir=tmp)), ops, p, sync=False)
        try:
            snaps = read_partition_snapshots(s, p) or {}
            written = ps.restore_from(list(snaps.values()))
        finally:
            ps.close()
        if written != len(expected):
            raise SystemExit(f"restored {written} items, want {len(expected)}")
        return snaps

    return {
        "whole restore: read 1 of 16 partitions + LevelDB write": whole_restore,
        "read_partition_snapshots (1 of 16 partitions)": lambda: (
            read_partition_snapshots(s, p) or {}
        ),
        "read_partition_snapshots_from_all (16 partitions)": lambda: (
            read_partition_snapshots_from_all(s, p) or {}
        ),
        "read_snapshots(keep=...), before (16 partitions)": lambda: read_snapshots(
            s, keep=keep, timeout=1800
        ),
    }


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000, help="items per partition")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--default-gc", action="store_true", help="Python's GC thresholds")
    ap.add_argument("--bootstrap", help="a running broker (default: one of its own)")
    ap.add_argument("--json", type=Path, default=RESULTS)
    return ap.parse_args()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The snapshots written on a broker of their own, then each way timed ``--runs`` times:
    the wall-clock and CPU seconds of each run."""
    with (
        scratch("dyno-bench-restore-") as tmp,
        bench_broker(args.bootstrap, own_in=tmp / "broker") as bootstrap,
    ):
        s = bench_settings(bootstrap, tmp / "data", PARTITIONS)
        ensure_topics(s)
        started = time.monotonic()
        expected = fill(s, args.items)
        print(
            f"wrote {PARTITIONS} x {args.items:,} items' snapshots (and a tenth more, older) "
            f"in {time.monotonic() - started:.1f}s",
            flush=True,
        )
        ways = reads(s, tmp, expected)
        seconds: dict[str, list[float]] = {way: [] for way in ways}
        cpu_seconds: dict[str, list[float]] = {way: [] for way in ways}
        load_before = os.getloadavg()
        for run in range(args.runs):
            for way, read in ways.items():
                took, cpu = timed(read, expected)
                seconds[way].append(took)
                cpu_seconds[way].append(cpu)
                print(
                    f"run {run + 1}: {way}: {len(expected) / took:,.0f} items/s "
                    f"({len(expected) / cpu:,.0f} per CPU second); load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    return {
        "items": len(expected),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "load_before": load_before,
    }


def report(args: argparse.Namespace, measured: dict[str, Any]) -> dict[str, Any]:
    """Print each way's median and range; the results for the JSON."""
    items, cpu_seconds = measured["items"], measured["cpu_seconds"]
    results: dict[str, Any] = {
        "items_restored": items,
        "partitions": PARTITIONS,
        "messages_per_partition": round(args.items * 1.1),
        "gc_threshold0": gc.get_threshold()[0],
        "load_before": measured["load_before"],
        "load_after": os.getloadavg(),
        "ways": {},
    }
    print(f"\nrestore of 1 partition of {items:,} items, {args.runs} runs:")
    for way, walls in measured["seconds"].items():
        rates = sorted(items / t for t in walls)
        per_cpu = sorted(items / t for t in cpu_seconds[way])
        results["ways"][way] = {
            "items_per_s_median": round(statistics.median(rates)),
            "items_per_s_range": [round(rates[0]), round(rates[-1])],
            "seconds": [round(t, 3) for t in walls],
            "items_per_cpu_s_median": round(statistics.median(per_cpu)),
            "cpu_seconds": [round(t, 3) for t in cpu_seconds[way]],
        }
        print(
            f"  {way}: {statistics.median(rates):,.0f} items/s median "
            f"({rates[0]:,.0f}-{rates[-1]:,.0f}); {statistics.median(per_cpu):,.0f} per CPU "
            f"second; seconds {', '.join(f'{t:.2f}' for t in walls)}"
        )
    return results


def main() -> None:
    args = parse()
    if not args.default_gc:
        gc.set_threshold(WORKER_GC_THRESHOLD, 10, 10)
    results = report(args, run(args))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
