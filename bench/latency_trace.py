"""Where the latency tail goes: a latency run (bench_worker's) of a worker whose loop is traced.

What makes the worker's p99 at a steady rate what it is? This runs
``harness.latency.bench_latency`` against a ``dyno-stream worker`` process started through this
file (``--worker``), which wraps the loop's steps before running the worker as the CLI does:

- each batch's ``poll`` (wall time, events, the age of its oldest event by LogAppendTime),
  ``process`` (wall and thread CPU time), validation, the store transaction, the wait for
  acknowledgements (``Checkpoint.advance``), the Kafka commit, the scheduled work, the state
  write-behind (``StateCache.flush`` and each write of states), and every collection
  (``gc.callbacks``), written as JSON lines to ``$TRACE_FILE``;
- each op's send time and latency, from the benchmark's side.

Then, for the slowest 1% of the measured ops, it says how much of their time the worker's
loop spent in each step, and prints each step's longest and total time: what a spike lines
up with. The wrapping costs the worker some CPU (its figures are a little worse than
bench_worker's); compare runs of this tool with each other.

Run: ``python bench/latency_trace.py --rate 5000 --seconds 15`` (starts the local broker if
needed); ``--keep DIR`` keeps the trace and the per-op samples.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: steps wrapped in the worker: (module, class, method, record name)
STEPS = [
    ("dyno_stream.stream.processing", "BatchProcessor", "process", "process"),
    ("dyno_stream.stream.processing", "BatchProcessor", "_validated", "validate"),
    ("dyno_stream.stream.processing", "BatchProcessor", "_apply", "apply"),
    ("dyno_stream.stream.checkpoint", "Checkpoint", "advance", "acks"),
    ("dyno_stream.stream.checkpoint", "Checkpoint", "commit", "commit"),
    ("dyno_stream.stream.scheduler", "Scheduler", "run_due", "scheduled"),
    ("dyno_stream.store.states", "StateCache", "flush", "flush"),
    ("dyno_stream.store.states", "StateCache", "_write_states", "write_states"),
]


def traced_worker() -> None:
    """Inside the worker process: wrap the steps, then run ``dyno-stream worker``."""
    import importlib

    out = Path(os.environ["TRACE_FILE"]).open("w", buffering=1)  # noqa: SIM115 (the worker's life)

    def record(kind: str, t0: float, seconds: float, **more: Any) -> None:
        out.write(json.dumps({"k": kind, "t": t0, "d": seconds, **more}) + "\n")

    def wrap(cls: Any, method: str, kind: str) -> None:
        original = getattr(cls, method)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.monotonic(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                seconds = time.monotonic() - t0
                if kind == "process" or seconds > 0.002:  # every batch; other steps if slow
                    cpu = time.thread_time() - c0
                    record(kind, t0, seconds, cpu=cpu, wait=kwargs.get("wait", False))

        setattr(cls, method, timed)

    for module, cls_name, method, kind in STEPS:
        wrap(getattr(importlib.import_module(module), cls_name), method, kind)

    from dyno_stream.stream import worker

    next_batch = worker.Worker._next_batch

    def polled(self: Any) -> Any:
        t0 = time.monotonic()
        messages = next_batch(self)
        if messages:
            now_ms = time.time() * 1000
            ages = [now_ms - m.timestamp()[1] for m in messages if m.timestamp()[0]]
            oldest = max(ages) if ages else None
            record("poll", t0, time.monotonic() - t0, n=len(messages), oldest_ms=oldest)
        return messages

    worker.Worker._next_batch = polled  # type: ignore[method-assign]
    started: dict[str, float] = {}

    def collections(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started["t"] = time.monotonic()
        elif "t" in started:
            t0 = started.pop("t")
            record("gc", t0, time.monotonic() - t0, generation=info["generation"])

    gc.callbacks.append(collections)
    from dyno_stream.cli import main

    sys.argv = ["dyno-stream", "worker"]
    main()


def attribute(trace: list[dict[str, Any]], samples: list[tuple[float, float]]) -> dict[str, Any]:
    """How the slowest 1% of ``samples`` (send time, latency) spent their time in the loop."""
    threshold = sorted(lat for _, lat in samples)[int(len(samples) * 0.99)]
    slow = [(sent, lat) for sent, lat in samples if lat >= threshold]

    def share(kind: str, part: Callable[[dict[str, Any]], float]) -> float:
        spans = [e for e in trace if e["k"] == kind and not e.get("wait")]
        total = 0.0
        for sent, lat in slow:
            for e in spans:
                overlap = min(sent + lat, e["t"] + e["d"]) - max(sent, e["t"])
                if overlap > 0 and e["d"] > 0:
                    total += overlap * part(e) / e["d"]
        return total / sum(lat for _, lat in slow)

    steps: dict[str, dict[str, float]] = {}
    for e in trace:
        step = steps.setdefault(e["k"], {"count": 0, "total_s": 0.0, "max_ms": 0.0})
        step["count"] += 1
        step["total_s"] += e["d"]
        step["max_ms"] = max(step["max_ms"], e["d"] * 1000)
    return {
        "p99_ms": threshold * 1000,
        "slowest_ops": len(slow),
        "their_time": {
            "in batches (wall)": share("process", lambda e: e["d"]),
            "in batches (CPU)": share("process", lambda e: e["cpu"]),
            "waiting for acknowledgements": share("acks", lambda e: e["d"]),
            "waiting in poll": share("poll", lambda e: e["d"]),
        },
        "steps": steps,
    }


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=int, default=5_000)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--items", type=int, default=1_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--bootstrap", help="a running broker (default: the local one, started)")
    ap.add_argument("--keep", type=Path, help="keep the trace and the per-op samples here")
    return ap.parse_args()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """A latency run of the traced worker; its figures, what the slowest ops spent their time
    on, and the load average (1 minute) before and after."""
    # imported here, not at the top: the traced worker process needs none of it
    from harness.broker import bench_broker, free_port, scratch
    from harness.latency import Tally, bench_latency, drain
    from harness.workers import Started, wait_metrics

    from dyno_stream.cli.demo import settings_env
    from dyno_stream.config import Settings

    samples: list[tuple[float, float]] = []
    load_before = os.getloadavg()[0]
    with bench_broker(args.bootstrap) as bootstrap, scratch("dyno-trace-") as tmp:
        trace_file = tmp / "loop.trace"

        def launch(s: Settings, where: Path) -> Started:
            env = {**os.environ, **settings_env(s), "TRACE_FILE": str(trace_file)}
            with (where / "worker.log").open("wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, __file__, "--worker"], env=env, stdout=log, stderr=log
                )
            wait_metrics(f"http://127.0.0.1:{s.worker.http_port}", proc)
            return Started([proc])

        def kept(consumer: Any, tally: Tally, timeout: float) -> None:
            before = len(tally.latencies)
            drain(consumer, tally, timeout)
            now = time.monotonic()  # the drain's own clock, within its sub-millisecond run
            for i, lat in tally.latencies[before:]:
                if i >= args.rate * 2:  # bench_latency's 2 s warm-up: not counted
                    samples.append((now - lat, lat))

        # a free port: others may run a worker on the default
        figures = bench_latency(
            bootstrap, tmp, args.rate, args.seconds, args.items, args.partitions, launch,
            free_port(), drain=kept,
        )  # fmt: skip
        trace = [json.loads(line) for line in trace_file.read_text().splitlines()]
        first = min(sent for sent, _ in samples)
        found = attribute([e for e in trace if e["t"] + e["d"] >= first], samples)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(trace_file, args.keep / "loop.trace")
            (args.keep / "samples.json").write_text(json.dumps(samples))
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return {"figures": figures, "found": found, "load": load}


def report(args: argparse.Namespace, res: dict[str, Any]) -> None:
    figures, found, load = res["figures"], res["found"], res["load"]
    print(
        f"{args.rate:,} ops/s, load average {load[0]}-{load[1]}: p50 {figures['p50_ms']:.0f} "
        f"ms, p99 {figures['p99_ms']:.0f} ms, max {figures['max_ms']:.0f} ms"
    )
    print(f"the slowest {found['slowest_ops']:,} ops (p99 and above) spent their time:")
    for what, part in found["their_time"].items():
        print(f"  {part:6.0%}  {what}")
    print("the loop's steps (poll and process every time, the others when over 2 ms):")
    for kind, step in sorted(found["steps"].items(), key=lambda kv: -kv[1]["max_ms"]):
        print(
            f"  {kind:13s} {step['count']:6.0f} times, {step['total_s']:6.2f} s in all, "
            f"longest {step['max_ms']:6.1f} ms"
        )


def main() -> None:
    args = parse()
    if args.worker:
        traced_worker()
        return
    report(args, run(args))


if __name__ == "__main__":
    main()
