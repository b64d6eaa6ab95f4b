"""Repartition benchmark: moving N items from 4 to 8 partitions, held to a reference.

For each size, ops are produced in three phases, as the issue asks:

1. **before**: one op per item (about 100 bytes of change), applied by a worker process on 4
   partitions, which then stops;
2. **backlog**: another tenth as many ops left unapplied in the old topic (the tool forwards
   them). Then ``repartition(..., 8)`` is timed, as ``dyno-stream repartition --partitions 8
   --drain-timeout 0`` runs it;
3. **after**: a worker on the new topics is started, and another tenth as many ops are
   produced to the new ops topic while it restores. It is timed from its start until it has
   restored every item from the new snapshot topic, applied the forwarded and the new ops,
   and had every snapshot acknowledged: the time the deployment is without a worker.

Every op sent is also applied to a plain-Python reference (``item_reference.py``: its own
op semantics and history hash, independent of the store). At the end each item's newest
snapshot in the new snapshot topic must equal it: value, ``changes`` and hash. The benchmark
exits 1 if any item differs.

Run: ``python bench/bench_repartition.py [--items 100000 1000000]``. It starts a broker of
its own (in a temporary directory, on free ports) and the workers' HTTP endpoint on a free
port, so it runs beside other benchmarks and tests on the same machine. The figures are
merged into ``bench/results/repartition.json`` (``--json``), one entry per size.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import TopicPartition
from harness.broker import bench_broker, free_port, scratch
from harness.settings import bench_settings
from harness.workers import metrics, start_worker, stop, wait_metrics
from harness.workload import op_event, produce_all
from item_reference import ItemReference, SnapshotCheck
from rich.console import Console
from rich.table import Table

from dyno_stream.config import Settings
from dyno_stream.core.flake import FlakeGenerator
from dyno_stream.jobs.progress import Reporter
from dyno_stream.jobs.repartition import new_topic_names, repartition
from dyno_stream.kafka.reading import partition_ends, topic_reader
from dyno_stream.kafka.topics import ensure_topics

RESULTS = Path(__file__).resolve().parent / "results" / "repartition.json"


def first_ops(items: int, gen: FlakeGenerator) -> Iterator[tuple[bytes, bytes]]:
    """One putAttrs per item, so every item has a snapshot."""
    for i in range(items):
        name = f"user-{i:05d}"
        ev = {
            "item": name,
            "op": "putAttrs",
            "ts": gen(),
            "change": {"email": f"{name}@example.com", "city": "Wellington", "n": i},
        }
        yield name.encode(), json.dumps(ev, separators=(",", ":")).encode()


def random_ops(n: int, items: int, gen: FlakeGenerator, seed: int) -> Iterator[tuple[bytes, bytes]]:
    """``n`` ops of the worker benchmark's mix (putAttrs, incAttrBy, append, addToSet)."""
    rnd = random.Random(seed)
    for _ in range(n):
        name, value = op_event(rnd, gen, items)
        yield name.encode(), value


def wait_for(url: str, want: dict[str, float], timeout: float, idle: bool = False) -> None:
    """Until the metrics reach ``want`` (and, with ``idle``, no batch is in flight: every
    snapshot acknowledged)."""
    t0 = time.monotonic()
    while True:
        got = metrics(url)
        if all(got.get(k, 0) >= v for k, v in want.items()) and (
            not idle or got.get("dyno_batches_in_flight") == 0
        ):
            return
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"not within {timeout:.0f}s: {want} (got {got})")
        time.sleep(0.2)


def moved(s: Settings, partitions: int) -> Settings:
    ops, snapshots = new_topic_names(s, partitions)
    topics = s.topics.model_copy(
        update={"ops": ops, "snapshots": snapshots, "partitions": partitions}
    )
    return s.model_copy(update={"topics": topics})


def check_snapshot_topic(s: Settings, topic: str, ref: ItemReference) -> SnapshotCheck:
    """Read ``topic`` to its present ends, holding each item's newest snapshot to ``ref``."""
    check = SnapshotCheck(ref)
    consumer = topic_reader(s, "bench-check")
    try:
        ends = {p: hi for p, hi in partition_ends(consumer, topic).items() if hi > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        deadline = time.monotonic() + 1800
        while ends:
            if time.monotonic() > deadline:
                raise SystemExit(f"reading {topic} to its end took too long: {ends} left")
            for msg in consumer.consume(10_000, 0.5):
                if msg.error():
                    continue
                check.add(orjson.loads(msg.value()))
                p, off = msg.partition() or 0, msg.offset() or 0
                if off + 1 >= ends.get(p, 0):
                    ends.pop(p, None)
    finally:
        consumer.close()
    return check


def bench_one(bootstrap: str, tmp: Path, items: int, partitions: int) -> dict[str, Any]:
    """Apply, repartition with a backlog, restore on the new topics, check the reference."""
    http = free_port()
    s = bench_settings(bootstrap, tmp / f"data-{items}", 4, http_port=http)
    url = f"http://127.0.0.1:{http}"
    ref = ItemReference()
    gen = FlakeGenerator(node=20, pid=20)  # one generator: every op in flake order
    ensure_topics(s)
    apply_s = apply_before(s, tmp, url, ref, gen, items)
    backlog = items // 10
    seconds, forwarded = repartition_backlog(s, ref, gen, items, backlog, partitions)
    after = items // 10
    new = moved(s, partitions)
    restore_s, restored_when_sent = restore_after(new, tmp, url, ref, gen, items, backlog, after)
    t0 = time.monotonic()
    check = check_snapshot_topic(new, new.topics.snapshots, ref)
    differ = check.differ()
    return {
        "items": items,
        "ops_before": items,
        "ops_backlog": backlog,
        "ops_after": after,
        "forwarded": forwarded,
        "repartition_s": seconds,
        "items_per_s": items / seconds,
        "restore_s": restore_s,
        "restored_when_after_ops_sent": int(restored_when_sent),
        "apply_before_s": apply_s,
        "reference_items": len(ref.items),
        "reference_ops": ref.ops,
        "reference_equal": check.equal(),
        "reference_differ": len(differ),
        "differ_examples": [repr(d) for d in differ[:3]],
        "snapshots_read": check.snapshots,
        "check_s": time.monotonic() - t0,
    }


def apply_before(
    s: Settings, tmp: Path, url: str, ref: ItemReference, gen: FlakeGenerator, items: int
) -> float:
    """Before: one op per item, applied by the old worker; the seconds it took."""
    produce_all(s, s.topics.ops, ref.fed(first_ops(items, gen)))
    proc = start_worker(s, tmp / f"old-{items}.log")
    try:
        wait_metrics(url, proc)
        t0 = time.monotonic()
        wait_for(url, {"dyno_ops_applied_total": items}, 1800, idle=True)
        return time.monotonic() - t0
    finally:
        stop(proc)


def repartition_backlog(
    s: Settings, ref: ItemReference, gen: FlakeGenerator, items: int, backlog: int, partitions: int
) -> tuple[float, int]:
    """A backlog left in the old topic, unapplied, which the tool forwards; the repartition's
    seconds and the ops it forwarded."""
    produce_all(s, s.topics.ops, ref.fed(random_ops(backlog, items, gen, seed=20)))
    quiet = Reporter(Console(file=io.StringIO()))
    t0 = time.monotonic()
    report = repartition(s, partitions, quiet, drain_timeout=0)
    seconds = time.monotonic() - t0
    assert report.items == items, report.summary()
    assert report.forwarded == backlog, report.summary()
    return seconds, report.forwarded


def restore_after(
    new: Settings,
    tmp: Path,
    url: str,
    ref: ItemReference,
    gen: FlakeGenerator,
    items: int,
    backlog: int,
    after: int,
) -> tuple[float, float]:
    """After: ops sent to the new topic while the new worker restores; the seconds until all
    are restored and applied, and the items restored when the ops were sent."""
    # made (and applied to the reference) now, so the benchmark's own work stays out of the
    # time measured below
    after_ops = list(ref.fed(random_ops(after, items, gen, seed=21)))
    t0 = time.monotonic()
    proc = start_worker(new, tmp / f"new-{items}.log")
    try:
        wait_metrics(url, proc)
        produce_all(new, new.topics.ops, after_ops)
        restored_when_sent = metrics(url).get("dyno_restored_items_total", 0)
        want = {"dyno_restored_items_total": items, "dyno_ops_applied_total": backlog + after}
        wait_for(url, want, 3600, idle=True)
        return time.monotonic() - t0, restored_when_sent
    finally:
        stop(proc)


def merge_results(path: Path, results: list[dict[str, Any]]) -> None:
    """Keep the entries of other sizes (one run per size is the usual way to run it)."""
    old = json.loads(path.read_text()) if path.is_file() else []
    sizes = {r["items"] for r in results}
    merged = [r for r in old if r.get("items") not in sizes] + results
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sorted(merged, key=lambda r: r["items"]), indent=2) + "\n")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--bootstrap", help="a running broker (default: one of its own)")
    ap.add_argument("--json", type=Path, default=RESULTS, help="merge the figures in here")
    return ap.parse_args()


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with (
        scratch("dyno-bench-repartition-") as tmp,
        bench_broker(args.bootstrap, own_in=tmp / "broker") as bootstrap,
    ):
        for n in args.items:
            load_before = os.getloadavg()
            result = bench_one(bootstrap, tmp, n, args.partitions)
            result["load_before"], result["load_after"] = load_before, os.getloadavg()
            # ru_maxrss is in KiB on Linux: this process's peak, the reference included
            result["bench_max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            results.append(result)
            print(json.dumps(result), flush=True)
    return results


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    table = Table(
        title=f"dyno-stream repartition, 4 -> {args.partitions} partitions",
        caption=f"{os.cpu_count()} CPUs; load average (1 min) before / after each size",
    )
    columns = (
        "items",
        "ops before / backlog / after",
        "repartition",
        "restored and caught up",
        "reference",
        "load",
    )
    for col in columns:
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            f"{r['items']:,}",
            f"{r['ops_before']:,} / {r['ops_backlog']:,} / {r['ops_after']:,}",
            f"{r['repartition_s']:.1f} s ({r['items_per_s']:,.0f} items/s)",
            f"{r['restore_s']:.1f} s",
            f"{r['reference_equal']:,} items equal, {r['reference_differ']:,} differ",
            f"{r['load_before'][0]:.2f} / {r['load_after'][0]:.2f}",
        )
    Console().print(table)
    for r in results:
        print(
            f"{r['items']:,} items, reference: {r['reference_equal']:,} items equal, "
            f"{r['reference_differ']:,} differ {r['differ_examples'] or ''}"
        )
    merge_results(args.json, results)


def main() -> None:
    args = parse()
    results = run(args)
    report(args, results)
    if any(r["reference_differ"] or r["reference_equal"] != r["items"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
