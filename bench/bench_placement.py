"""What a misplaced op costs: one worker's throughput on ops placed by the rule (murmur2,
as ``DynoClient`` places them) beside the same ops placed by librdkafka's default
partitioner (CRC32, as kcat and confluent-kafka place them), which the worker forwards to
their rule partition (about 3 in 4 of them on 4 partitions) before applying them.

Runs alternate (rule, crc32, rule, ...); each is timed from the first consumed event until
every op is applied and every snapshot acknowledged. Prints the medians and the spread.

Run: ``.venv/bin/python bench/bench_placement.py [--runs 3] [--ops 200000] [--json F]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
from pathlib import Path

from harness.broker import bench_broker, scratch
from harness.output import write_json
from harness.settings import bench_settings
from harness.workers import start_worker, stop, time_until_applied, wait_metrics
from harness.workload import make_payloads, produce_all
from rich.console import Console
from rich.table import Table

from dyno_stream.kafka.topics import ensure_topics

#: librdkafka's partitioner for each placement measured
PLACED_BY = {"murmur2 (the rule)": "murmur2_random", "crc32 (forwarded)": "consistent_random"}


def one_run(bootstrap: str, tmp: Path, placed_by: str, n: int, items: int) -> dict[str, float]:
    s = bench_settings(bootstrap, tmp / "data", 4)
    ensure_topics(s)
    produce_all(
        s,
        s.topics.ops,
        make_payloads(n, items),
        {"linger.ms": 20, "batch.size": 1_000_000, "partitioner": placed_by},
    )
    url = f"http://127.0.0.1:{s.worker.http_port}"
    proc = start_worker(s, tmp / "worker.log")
    try:
        wait_metrics(url, proc)
        t0, t1, m = time_until_applied([url], [proc], n)
    finally:
        stop(proc)
        shutil.rmtree(tmp / "data", ignore_errors=True)
    forwarded = sum(v for k, v in m.items() if k.startswith("dyno_events_forwarded_total"))
    return {"ops_per_s": n / (t1 - t0), "seconds": t1 - t0, "forwarded": forwarded}


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ops", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=1_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bootstrap", help="a running broker (default: the local one, started)")
    ap.add_argument("--json", type=Path)
    return ap.parse_args()


def run(args: argparse.Namespace) -> tuple[dict[str, list[dict[str, float]]], list[float]]:
    """Each placement's runs, alternated, and the load average after each run."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in PLACED_BY}
    loads: list[float] = []
    with bench_broker(args.bootstrap) as bootstrap, scratch("dyno-bench-placement-") as tmp:
        for _ in range(args.runs):
            for name, placed_by in PLACED_BY.items():
                runs[name].append(one_run(bootstrap, tmp, placed_by, args.ops, args.items))
                loads.append(os.getloadavg()[0])
    return runs, loads


def report(
    args: argparse.Namespace, runs: dict[str, list[dict[str, float]]], loads: list[float]
) -> None:
    table = Table(title=f"one worker, 4 partitions, {args.ops:,} ops over {args.items:,} items")
    for column in ("ops placed by", "ops/s, median", "min - max", "forwarded"):
        table.add_column(column, justify="right")
    summary = {}
    for name, results in runs.items():
        rates = [r["ops_per_s"] for r in results]
        summary[name] = {
            "median_ops_per_s": statistics.median(rates),
            "runs": results,
        }
        table.add_row(
            name,
            f"{statistics.median(rates):,.0f}",
            f"{min(rates):,.0f} - {max(rates):,.0f}",
            f"{statistics.median(r['forwarded'] for r in results):,.0f}",
        )
    Console().print(table)
    Console().print(f"load average (1 min) after each run: {', '.join(f'{x:.1f}' for x in loads)}")
    write_json(args.json, {"placements": summary, "load_1m": loads})


def main() -> None:
    args = parse()
    runs, loads = run(args)
    report(args, runs, loads)


if __name__ == "__main__":
    main()
