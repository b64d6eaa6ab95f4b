"""Compaction benchmarks (issue: compaction). Prints a table.

1. Offline: a store of 1,000,000 rows (10,000 items x 100 ops, every op two hours old, so all
   of it falls before the lateness window) is flattened with ``compact_offline``, which ends
   with LevelDB's compaction; rows/s over the whole pass, and bytes on disk before and after.
2. Online: 10,000 items (x 20 old ops by default) are applied by one worker process
   (``dyno-stream worker``, a real subprocess, as bench_worker.py runs it) on the local broker;
   then one ``compact_online`` pass is timed: reading the snapshot topic, sending one flatten
   command per item, waiting for the group to commit past them, reading the new snapshots.

Run: ``python bench/bench_compaction.py`` (starts the local broker if it is not running, and
stops it again afterwards).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from harness.broker import bench_broker, scratch
from harness.output import write_json
from harness.settings import bench_settings
from harness.workers import metrics, start_worker, stop, wait_metrics
from rich.console import Console
from rich.table import Table

from dyno_stream.config import CompactionSettings
from dyno_stream.core.events import make_op
from dyno_stream.core.flake import FlakeGenerator
from dyno_stream.jobs.compaction import Summary, compact_offline, compact_online
from dyno_stream.kafka.topics import ensure_topics
from dyno_stream.store import DynoStore
from dyno_stream.stream.worker import producer_config

HOUR_MS = 3_600_000


def old_flakes(node: int) -> FlakeGenerator:
    at = time.time_ns() // 1_000_000 - 2 * HOUR_MS
    return FlakeGenerator(node=node, pid=1, clock=lambda: at)


def nth_op(name: str, k: int) -> tuple[str, Any]:
    """The k-th op of an item: small changes of the four common kinds."""
    kind = k % 4
    if k == 0:
        return "putItem", {"name": name, "email": f"{name}@example.com", "n": 0}
    if kind == 1:
        return "incAttrBy", {"field": "n", "by": k}
    if kind == 2:
        return "append", {"field": "log", "str": f"{k};"}
    if kind == 3:
        return "addToSet", {"field": "tags", "value": f"tag-{k % 7}"}
    return "putAttrs", {"plan": "pro", "k": k, "note": f"note {k} " + "x" * 40}


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def policy(**kw: Any) -> CompactionSettings:
    return CompactionSettings(**{"min_rows": 2, "lateness_s": 3600.0, "wait_s": 600.0, **kw})


def quiet() -> Console:
    return Console(file=io.StringIO(), force_terminal=False)


class Phases(logging.Handler):
    """Times the phases of a pass from the progress lines compaction logs off a terminal."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.marks: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.marks.append((time.monotonic(), record.getMessage()))

    def __enter__(self) -> Phases:
        log = logging.getLogger("dyno_stream.jobs")  # the progress lines of every job
        log.setLevel(logging.INFO)
        log.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("dyno_stream.jobs").removeHandler(self)

    def at(self, prefix: str) -> float:
        return next(t for t, m in self.marks if m.startswith(prefix))

    def split(self) -> dict[str, float]:
        read0 = self.at("reading snapshots (")
        send0 = self.at("sending commands (")
        send1 = self.at("sending commands:")
        answers0 = self.at("waiting for the workers' answers (")
        answers1 = self.at("waiting for the workers' answers:")
        return {
            "read_s": send0 - read0,
            "send_s": send1 - send0,
            "answers_s": answers1 - answers0,
        }


def bench_offline(tmp: Path, items: int, per_item: int) -> dict[str, float]:
    path = tmp / "offline"
    gen = old_flakes(node=301)
    names = [f"user-{i:05d}" for i in range(items)]
    t0 = time.perf_counter()
    with DynoStore(path) as store:
        batch = []
        for k in range(per_item):
            for name in names:
                op, change = nth_op(name, k)
                batch.append(make_op(op, name, change, gen()))
                if len(batch) >= 20_000:
                    store.apply(batch)
                    batch = []
        if batch:
            store.apply(batch)
    build_s = time.perf_counter() - t0
    summary = compact_offline(path, policy(), quiet())
    with DynoStore(path) as store:  # a spot check: one history row each
        for name in (names[0], names[-1]):
            item = store.get_item(name)
            assert item.count == 1 and item.changes == per_item, item
    rows = items * per_item
    return {
        "rows": rows,
        "build_s": build_s,
        "seconds": summary.seconds,
        "rows_per_s": rows / summary.seconds,
        "bytes_before": float(summary.bytes_before or 0),
        "bytes_after": float(summary.bytes_after or 0),
        "flattened": summary.flattened,
        "rows_after": summary.rows_after,
    }


def bench_online(
    bootstrap: str, tmp: Path, items: int, per_item: int, partitions: int
) -> dict[str, float]:
    s = bench_settings(bootstrap, tmp / "online-data", partitions)
    ensure_topics(s)
    gen = old_flakes(node=302)
    names = [f"user-{i:05d}" for i in range(items)]
    producer = Producer({**producer_config(s), "linger.ms": 20, "batch.size": 1_000_000})
    n = 0
    for k in range(per_item):
        for name in names:
            op, change = nth_op(name, k)
            value = json.dumps(
                {"item": name, "op": op, "ts": gen(), "change": change}, separators=(",", ":")
            ).encode()
            while True:
                try:
                    producer.produce(s.topics.ops, value, name.encode())
                    break
                except BufferError:
                    producer.poll(0.05)
            n += 1
    assert producer.flush(120) == 0
    url = f"http://127.0.0.1:{s.worker.http_port}"
    proc = start_worker(s, tmp / "online-worker.log")
    try:
        wait_metrics(url, proc)
        t0 = time.monotonic()
        while metrics(url).get("dyno_ops_applied_total", 0) < n:
            if time.monotonic() - t0 > 600:
                raise SystemExit("the worker did not apply the ops within 600s")
            time.sleep(0.1)
        apply_s = time.monotonic() - t0
        with Phases() as phases:
            summary: Summary = compact_online(s, policy(), quiet())
        applied = metrics(url).get("dyno_ops_applied_total", 0)
    finally:
        stop(proc)
    assert applied == n + items, f"{applied} events applied, expected {n} ops + {items} flattens"
    return {
        "items": items,
        "ops": n,
        "apply_s": apply_s,
        "seconds": summary.seconds,
        "chosen": summary.chosen,
        "flattened": summary.flattened,
        "unconfirmed": summary.unconfirmed,
        "rows_before": summary.rows_before,
        "rows_after": summary.rows_after,
        **phases.split(),
    }


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000, help="offline: items")
    ap.add_argument("--ops-per-item", type=int, default=100, help="offline: ops per item")
    ap.add_argument("--online-items", type=int, default=10_000)
    ap.add_argument("--online-ops-per-item", type=int, default=20)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--skip-online", action="store_true")
    ap.add_argument("--bootstrap", help="a running broker (default: the local one, started)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    return ap.parse_args()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Offline, then (unless skipped) online on the local broker, and the load around them."""
    load_before = os.getloadavg()
    with scratch("dyno-bench-compact-") as tmp:
        off = bench_offline(tmp, args.items, args.ops_per_item)
        on: dict[str, float] | None = None
        if not args.skip_online:
            with bench_broker(args.bootstrap) as bootstrap:
                on = bench_online(
                    bootstrap, tmp, args.online_items, args.online_ops_per_item, args.partitions
                )
    return {"offline": off, "online": on, "load": [load_before, os.getloadavg()]}


def report(args: argparse.Namespace, res: dict[str, Any]) -> None:
    off, on, (load_before, load_after) = res["offline"], res["online"], res["load"]
    table = Table(
        title="dyno-stream compaction",
        caption=f"load average before {load_before[0]:.2f} / after {load_after[0]:.2f} "
        f"(1 min), {os.cpu_count()} CPUs",
    )
    table.add_column("benchmark")
    table.add_column("figure", justify="right")
    table.add_row(
        f"offline: {off['rows']:,.0f} rows ({args.items:,} items x {args.ops_per_item})",
        f"{off['rows_per_s']:,.0f} rows/s",
    )
    table.add_row("  pass, incl. LevelDB compaction", f"{off['seconds']:.2f} s")
    table.add_row("  bytes on disk", f"{off['bytes_before']:,.0f} -> {off['bytes_after']:,.0f}")
    table.add_row(
        "  items flattened / rows after", f"{off['flattened']:,.0f} / {off['rows_after']:,.0f}"
    )
    table.add_row("  (building the store)", f"{off['build_s']:.1f} s")
    if on is not None:
        online_rows(args, on, table)
    Console().print(table)
    write_json(args.json, {"offline": off, "online": on})


def online_rows(args: argparse.Namespace, on: dict[str, float], table: Table) -> None:
    table.add_row(
        f"online: one pass over {on['items']:,.0f} items "
        f"({args.online_ops_per_item} ops each, {args.partitions} partitions, 1 worker)",
        f"{on['seconds']:.2f} s",
    )
    table.add_row("  reading the snapshot topic", f"{on['read_s']:.2f} s")
    table.add_row("  sending the flatten commands", f"{on['send_s']:.2f} s")
    table.add_row("  the workers apply them; their answers read", f"{on['answers_s']:.2f} s")
    table.add_row(
        "  chosen / flattened / unconfirmed",
        f"{on['chosen']:,.0f} / {on['flattened']:,.0f} / {on['unconfirmed']:,.0f}",
    )
    table.add_row("  rows (summary)", f"{on['rows_before']:,.0f} -> {on['rows_after']:,.0f}")
    table.add_row(f"  (worker applying {on['ops']:,.0f} ops first)", f"{on['apply_s']:.1f} s")


def main() -> None:
    args = parse()
    report(args, run(args))


if __name__ == "__main__":
    main()
