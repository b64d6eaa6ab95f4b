"""Repartition benchmark (issue 20): moving N items from 4 to 8 partitions. Prints a table.

For each size: one op per item (about 100 bytes of change) is applied by a worker process on
4 partitions; the worker stops, and a backlog of another tenth as many ops is left in the
old topic (the tool forwards those). Then ``repartition(..., 8)`` is timed, as
``dyno-stream repartition --partitions 8 --drain-timeout 0`` runs it, and a worker on the new
topics is started and timed until it has restored every item from the new snapshot topic
and applied the forwarded ops: the time the deployment is without a worker.

Run: ``python bench/bench_repartition.py [--items 100000 1000000]``. It starts a broker of
its own (in a temporary directory, on free ports) and the workers' HTTP endpoint on a free
port, so it runs beside other benchmarks and tests on the same machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_worker
from bench_worker import (
    bench_settings,
    metrics,
    op_event,
    produce_all,
    start_worker,
    stop,
    wait_metrics,
)
from rich.console import Console
from rich.table import Table

from dyno_stream.config import Settings
from dyno_stream.core.flake import FlakeGenerator
from dyno_stream.devtools.broker import LocalBroker
from dyno_stream.jobs.progress import Reporter
from dyno_stream.jobs.repartition import new_topic_names, repartition
from dyno_stream.kafka.topics import ensure_topics


def first_ops(items: int) -> list[tuple[bytes, bytes]]:
    """One putAttrs per item, so every item has a snapshot."""
    gen = FlakeGenerator(node=20, pid=20)
    out = []
    for i in range(items):
        name = f"user-{i:05d}"
        ev = {
            "item": name,
            "op": "putAttrs",
            "ts": gen(),
            "change": {"email": f"{name}@example.com", "city": "Wellington", "n": i},
        }
        out.append((name.encode(), json.dumps(ev, separators=(",", ":")).encode()))
    return out


def backlog(n: int, items: int) -> list[tuple[bytes, bytes]]:
    rnd, gen = random.Random(20), FlakeGenerator(node=21, pid=21)
    return [(name.encode(), value) for name, value in (op_event(rnd, gen, items) for _ in range(n))]


def wait_for(url: str, want: dict[str, float], timeout: float) -> float:
    t0 = time.monotonic()
    while True:
        got = metrics(url)
        if all(got.get(k, 0) >= v for k, v in want.items()):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"not within {timeout:.0f}s: {want} (got {got})")
        time.sleep(0.2)


def moved(s: Settings, partitions: int) -> Settings:
    ops, snapshots = new_topic_names(s, partitions)
    topics = s.topics.model_copy(
        update={"ops": ops, "snapshots": snapshots, "partitions": partitions}
    )
    return s.model_copy(update={"topics": topics})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bench_one(bootstrap: str, tmp: Path, items: int, partitions: int) -> dict[str, Any]:
    http = free_port()
    s = bench_settings(bootstrap, tmp / f"data-{items}", 4, http_port=http)
    url = f"http://127.0.0.1:{http}"
    ensure_topics(s)
    produce_all(s, s.topics.ops, first_ops(items))
    proc = start_worker(s, tmp / f"old-{items}.log")
    try:
        wait_metrics(url, proc)
        apply_s = wait_for(url, {"dyno_ops_applied_total": items}, 1800)
    finally:
        stop(proc)
    left = items // 10
    produce_all(s, s.topics.ops, backlog(left, items))

    quiet = Reporter(Console(file=io.StringIO()))
    t0 = time.monotonic()
    report = repartition(s, partitions, quiet, drain_timeout=0)
    seconds = time.monotonic() - t0
    assert report.items == items, report.summary()
    assert report.forwarded == left, report.summary()

    proc = start_worker(moved(s, partitions), tmp / f"new-{items}.log")
    try:
        wait_metrics(url, proc)
        restore_s = wait_for(
            url, {"dyno_restored_items_total": items, "dyno_ops_applied_total": left}, 3600
        )
    finally:
        stop(proc)
    return {
        "items": items,
        "forwarded": left,
        "repartition_s": seconds,
        "items_per_s": items / seconds,
        "restore_s": restore_s,
        "apply_before_s": apply_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="dyno-bench-repartition-"))
    # the controller listens on port + 1: find two free ports in a row
    port = free_port()
    while True:
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            port = free_port()
    broker = LocalBroker(home=tmp / "broker", port=port)
    results = []
    try:
        bootstrap = broker.start()
        for n in args.items:
            results.append(bench_one(bootstrap, tmp, n, args.partitions))
            print(json.dumps(results[-1]), flush=True)
    finally:
        broker.stop()  # its topics go with it: nothing for bench_worker's clean-up at exit
        bench_worker._TAGS.clear()
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()
    table = Table(
        title=f"dyno-stream repartition, 4 -> {args.partitions} partitions",
        caption=f"load average before {load_before[0]:.2f} / after {load_after[0]:.2f} "
        f"(1 min), {os.cpu_count()} CPUs",
    )
    for col in ("items", "ops forwarded", "repartition", "items/s", "new worker restored"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            f"{r['items']:,}",
            f"{r['forwarded']:,}",
            f"{r['repartition_s']:.1f} s",
            f"{r['items_per_s']:,.0f}",
            f"{r['restore_s']:.1f} s",
        )
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
