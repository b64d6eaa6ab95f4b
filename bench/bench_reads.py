"""Read latency: a local get, a routed get, and a read-your-writes get under load.

Starts a broker of its own (``LocalBroker``) unless ``--bootstrap`` names one, and two
worker processes on one 4-partition ops topic, each with its own HTTP port and data dir.
1,000 items are written; then, one read at a time:

- local: ``GET /items/<name>`` at the worker that owns the item;
- routed: the same at the other worker, which answers 307 and the read follows it;
- read-your-writes: ``DynoClient.get(name, after=delivery)`` right after each produce, while
  a thread keeps producing other ops (the load).

Run: ``python bench/bench_reads.py --reads 500`` (short: the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness.broker import bench_broker, free_port, scratch
from harness.settings import bench_settings

from dyno_stream.client import DynoClient
from dyno_stream.client.http import http_get
from dyno_stream.config import Settings
from dyno_stream.kafka.topics import ensure_topics


def _pct(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"p50 {q[49] * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms (n={len(samples)})"


def start_workers(s: Settings, tmp: Path) -> list[subprocess.Popen[bytes]]:
    """Two worker processes in one group, each with its own HTTP port and data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNO_")}
    env |= {
        "DYNO_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
        "DYNO_TOPICS__OPS": s.topics.ops,
        "DYNO_TOPICS__SNAPSHOTS": s.topics.snapshots,
        "DYNO_TOPICS__DEAD_LETTER": s.topics.dead_letter,
        "DYNO_TOPICS__PARTITIONS": "4",
        "DYNO_WORKER__GROUP_ID": s.worker.group_id,
        "DYNO_WORKER__LOG_LEVEL": "WARNING",
    }
    return [
        subprocess.Popen(
            [sys.executable, "-m", "dyno_stream", "worker"],
            env=env
            | {"DYNO_WORKER__HTTP_PORT": str(port), "DYNO_WORKER__DATA_DIR": str(tmp / f"w{i}")},
        )
        for i, port in enumerate([free_port(), free_port()])
    ]


def fill(client: DynoClient) -> tuple[list[str], list[str]]:
    """1,000 items written and read back; their names and the two workers' addresses."""
    names = [f"item-{i:04d}" for i in range(1000)]
    last = {}
    for n in names:
        last[n] = client.put_item(n, {"n": n, "pad": "x" * 80})
    for n in names:
        client.get(n, after=last[n].result(30), timeout=120)
    owners = client.reads.directory.owners()
    while len(owners.addresses()) < 2 or len(owners.by_partition) < 4:
        client.reads.directory.stale()
        time.sleep(0.5)
        owners = client.reads.directory.owners()
    return names, owners.addresses()


def direct_reads(
    client: DynoClient, names: list[str], addresses: list[str], reads: int
) -> tuple[list[float], list[float]]:
    """Seconds of each get at the item's owner (local) and at the other worker (routed)."""
    local: list[float] = []
    routed: list[float] = []
    for i in range(reads):
        name = names[i % len(names)]
        _p, owner = client.reads.directory.owner_of(name)
        other = next(a for a in addresses if a != owner)
        for where, out in ((owner, local), (other, routed)):
            t0 = time.perf_counter()
            answer = http_get(f"http://{where}/items/{name}", timeout=10)
            if answer.status == 307:  # the other worker names the owner: follow, as urlopen would
                answer = http_get(answer.headers["Location"], timeout=10)
            if answer.status != 200:
                raise RuntimeError(f"get {name} at {where} answered {answer.status}")
            out.append(time.perf_counter() - t0)
    return local, routed


def reads_your_writes(client: DynoClient, names: list[str], reads: int) -> list[float]:
    """Seconds of each get after its own write, from the produce's acknowledgement, while a
    thread keeps producing other ops."""
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            client.inc_attr_by(names[i % len(names)], "load")
            i += 1
            if i % 200 == 0:
                time.sleep(0.01)  # a steady load, not a flood the worker falls behind

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    ryw: list[float] = []
    for i in range(reads):
        d = client.inc_attr_by(f"ryw-{i % 50}", "n").result(30)
        t1 = time.perf_counter()
        client.get(d.item, after=d, timeout=60)
        ryw.append(time.perf_counter() - t1)
    stop.set()
    loader.join()
    return ryw


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap")
    ap.add_argument("--reads", type=int, default=500)
    return ap.parse_args()


def run(args: argparse.Namespace) -> dict[str, list[float]]:
    with (
        scratch("bench-reads-") as tmp,
        bench_broker(args.bootstrap, own_in=tmp / "broker", timeout=180) as bootstrap,
    ):
        s = bench_settings(bootstrap, tmp / "data", 4, http_port=0)
        ensure_topics(s)
        procs = start_workers(s, tmp)
        try:
            with DynoClient(s) as client:
                names, addresses = fill(client)
                local, routed = direct_reads(client, names, addresses, args.reads)
                ryw = reads_your_writes(client, names, args.reads)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(60)
    return {"local": local, "routed": routed, "ryw": ryw}


def report(res: dict[str, list[float]]) -> None:
    print(f"local get:            {_pct(res['local'])}")
    print(f"routed get (307):     {_pct(res['routed'])}")
    print(f"read-your-writes get: {_pct(res['ryw'])} (from the produce's acknowledgement)")


def main() -> None:
    report(run(parse()))


if __name__ == "__main__":
    main()
