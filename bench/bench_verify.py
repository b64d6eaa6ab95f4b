"""``dyno-stream verify``'s fast mode: items compared per second between two snapshot topics.

Writes the same N item snapshots (as a worker publishes them: ``Item.as_dict`` with a
source) into two snapshot topics of 4 partitions, then times what ``verify --against`` does:
read each topic's newest summary per item (``jobs.verify.read_summaries``) and compare them.
Items/s is N over the whole of that (both reads and the comparison), best and median of
``--runs``.

Run: ``.venv/bin/python bench/bench_verify.py [--items 1000000] [--runs 3] [--json F]``.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.broker import bench_broker, scratch
from harness.output import write_json
from harness.settings import bench_settings
from harness.workload import produce_all
from rich.console import Console

from dyno_stream.config import Settings
from dyno_stream.core.ops import dumps_internal
from dyno_stream.jobs.verify import compare, read_summaries
from dyno_stream.kafka.topics import ensure_topics


def snapshots(n: int, topic: str) -> Iterator[tuple[bytes, bytes]]:
    """N distinct items' snapshots, about 200 bytes each."""
    for i in range(n):
        name = f"item-{i:07d}"
        value = {"name": name, "n": i, "tags": ["a", "b"], "note": "x" * 40}
        chain = hashlib.md5(name.encode()).hexdigest()
        snap = {
            "item": name,
            "value": value,
            "timestamp": f"{i:012x}-0000-0001-000000000001",
            "changes": 3,
            "hash": chain,
            "count": 1,
            "source": {"topic": topic, "partition": 0, "offset": i},
        }
        yield name.encode(), dumps_internal(snap)


def fill(s: Settings, n: int) -> None:
    ensure_topics(s)
    produce_all(s, s.topics.snapshots, snapshots(n, s.topics.ops))


def one_run(a: Settings, b: Settings) -> dict[str, Any]:
    t0 = time.perf_counter()
    left = read_summaries(a, a.topics.snapshots)
    right = read_summaries(b, b.topics.snapshots)
    result = compare(left, right, ("a", "b"))
    seconds = time.perf_counter() - t0
    return {
        "items": result.compared,
        "differ": len(result.differences),
        "seconds": seconds,
        "items_per_s": result.compared / seconds,
    }


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bootstrap", help="a running broker (default: the local one, started)")
    ap.add_argument("--json", type=Path)
    return ap.parse_args()


def run(args: argparse.Namespace) -> dict[str, Any]:
    with bench_broker(args.bootstrap) as bootstrap, scratch("dyno-bench-verify-") as tmp:
        a = bench_settings(bootstrap, tmp / "a", 4)
        b = bench_settings(bootstrap, tmp / "b", 4)
        fill(a, args.items)
        fill(b, args.items)
        runs = [one_run(a, b) for _ in range(args.runs)]
    rates = [r["items_per_s"] for r in runs]
    return {
        "items": args.items,
        "runs": runs,
        "best_items_per_s": max(rates),
        "median_items_per_s": statistics.median(rates),
    }


def report(res: dict[str, Any]) -> None:
    out = Console()
    for r in res["runs"]:
        out.print(f"{r['items']:,} items in {r['seconds']:.1f} s: {r['items_per_s']:,.0f} items/s")
    out.print(
        f"verify, two snapshot topics of {res['items']:,} items: median "
        f"{res['median_items_per_s']:,.0f} items/s, best {res['best_items_per_s']:,.0f}"
    )


def main() -> None:
    args = parse()
    res = run(args)
    report(res)
    write_json(args.json, res)


if __name__ == "__main__":
    main()
