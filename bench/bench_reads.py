"""Read latency (issue 16): a local get, a routed get, and a read-your-writes get under load.

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
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from dyno_stream.config import load_settings
from dyno_stream.devtools.broker.local import LocalBroker
from dyno_stream.kafka.client import DynoClient
from dyno_stream.kafka.topics import ensure_topics


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"p50 {q[49] * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms (n={len(samples)})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap")
    ap.add_argument("--reads", type=int, default=500)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-reads-"))
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = LocalBroker(home=tmp / "broker", port=_port())
        bootstrap = broker.start(timeout=180)
    tag = uuid.uuid4().hex[:6]
    base = load_settings()
    s = base.model_copy(
        update={
            "kafka": base.kafka.model_copy(update={"bootstrap_servers": bootstrap}),
            "topics": base.topics.model_copy(
                update={
                    "ops": f"br-{tag}.ops",
                    "snapshots": f"br-{tag}.snapshots",
                    "dead_letter": f"br-{tag}.dead-letter",
                    "partitions": 4,
                }
            ),
            "worker": base.worker.model_copy(update={"group_id": f"br-{tag}", "http_port": 0}),
        }
    )
    ensure_topics(s)
    ports = [_port(), _port()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNO_")}
    env |= {
        "DYNO_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "DYNO_TOPICS__OPS": s.topics.ops,
        "DYNO_TOPICS__SNAPSHOTS": s.topics.snapshots,
        "DYNO_TOPICS__DEAD_LETTER": s.topics.dead_letter,
        "DYNO_TOPICS__PARTITIONS": "4",
        "DYNO_WORKER__GROUP_ID": s.worker.group_id,
        "DYNO_WORKER__LOG_LEVEL": "WARNING",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dyno_stream", "worker"],
            env=env
            | {"DYNO_WORKER__HTTP_PORT": str(port), "DYNO_WORKER__DATA_DIR": str(tmp / f"w{i}")},
        )
        for i, port in enumerate(ports)
    ]
    try:
        with DynoClient(s) as client:
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
            addresses = owners.addresses()
            local: list[float] = []
            routed: list[float] = []
            for i in range(args.reads):
                name = names[i % len(names)]
                _p, owner = client.reads.directory.owner_of(name)
                other = next(a for a in addresses if a != owner)
                for where, out in ((owner, local), (other, routed)):
                    t0 = time.perf_counter()
                    with urllib.request.urlopen(f"http://{where}/items/{name}", timeout=10) as r:
                        r.read()
                    out.append(time.perf_counter() - t0)
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
            for i in range(args.reads):
                d = client.inc_attr_by(f"ryw-{i % 50}", "n").result(30)
                t1 = time.perf_counter()
                client.get(d.item, after=d, timeout=60)
                ryw.append(time.perf_counter() - t1)
            stop.set()
            loader.join()
        print(f"local get:            {_pct(local)}")
        print(f"routed get (307):     {_pct(routed)}")
        print(f"read-your-writes get: {_pct(ryw)} (from the produce's acknowledgement)")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
