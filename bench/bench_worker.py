"""Worker benchmarks on the local broker (issue: the stream worker). Prints a table.

1. Throughput: N ops over 1,000 items (changes of about 100 bytes, snapshots on) are produced
   first; then one worker process (``dyno-stream worker``, a real subprocess) is started and
   timed from its first consumed event until every event is applied and every snapshot of the
   last batch is acknowledged (read from its /metrics).
2. Latency: ops produced at a steady 5,000 ops/s while the worker runs; for each op, the time
   from its send to the first snapshot of its item that includes it (``changes`` >= its rank).

Run: ``make bench`` (starts the broker if needed) or ``python bench/bench_worker.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harness.broker import bench_broker, scratch
from harness.latency import bench_latency
from harness.output import write_json
from harness.settings import bench_settings
from harness.workers import start_worker, stop, time_until_applied, wait_metrics
from harness.workload import make_payloads, produce_all
from rich.console import Console
from rich.table import Table

from dyno_stream.kafka.topics import ensure_topics


def bench_throughput(
    bootstrap: str, tmp: Path, n: int, items: int, partitions: int
) -> dict[str, float]:
    s = bench_settings(bootstrap, tmp / "tp-data", partitions)
    ensure_topics(s)
    produce_all(s, s.topics.ops, make_payloads(n, items))
    url = f"http://127.0.0.1:{s.worker.http_port}"
    proc = start_worker(s, tmp / "tp-worker.log")
    try:
        wait_metrics(url, proc)
        t0, t1, m = time_until_applied([url], [proc], n)
    finally:
        stop(proc)
    return {
        "ops": n,
        "seconds": t1 - t0,
        "ops_per_s": n / (t1 - t0),
        "snapshots": m.get("dyno_snapshots_published_total", 0),
        "batches": m.get("dyno_batch_seconds_count", 0),
    }


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ops", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=1_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rate", type=int, default=5_000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--bootstrap", help="a running broker (default: the local one, started)")
    ap.add_argument("--json", type=Path)
    return ap.parse_args()


def run(args: argparse.Namespace) -> dict[str, Any]:
    with bench_broker(args.bootstrap) as bootstrap, scratch("dyno-bench-") as tmp:
        tp = bench_throughput(bootstrap, tmp, args.ops, args.items, args.partitions)
        lat = bench_latency(bootstrap, tmp, args.rate, args.seconds, args.items, args.partitions)
    return {"throughput": tp, "latency": lat}


def report(args: argparse.Namespace, res: dict[str, Any]) -> None:
    tp, lat = res["throughput"], res["latency"]
    table = Table(
        title=f"dyno-stream worker (1 process, {args.partitions} partitions, "
        f"{args.items:,} items, snapshots on)"
    )
    table.add_column("benchmark")
    table.add_column("figure", justify="right")
    table.add_column("target", justify="right")
    table.add_row(
        f"throughput, {tp['ops']:,} ops", f"{tp['ops_per_s']:,.0f} ops/s", ">= 50,000 ops/s"
    )
    table.add_row("  batches / snapshots", f"{tp['batches']:,.0f} / {tp['snapshots']:,.0f}", "")
    table.add_row(f"latency at {lat['rate']:,.0f} ops/s, p50", f"{lat['p50_ms']:.1f} ms", "")
    table.add_row(
        f"latency at {lat['rate']:,.0f} ops/s, p99", f"{lat['p99_ms']:.1f} ms", "< 100 ms"
    )
    table.add_row("  ops measured / max", f"{lat['measured']:,.0f} / {lat['max_ms']:.0f} ms", "")
    Console().print(table)
    write_json(args.json, res)


def main() -> None:
    args = parse()
    report(args, run(args))


if __name__ == "__main__":
    main()
