"""What the limits on one event cost the worker per event (``dyno_stream/limits.py``).

The worker checks each valid event's size (one ``len``, before parsing) and then calls
``Limits.check`` on the parsed model (name length, nesting depth). This times that call,
over the worker benchmark's workload (``harness.workload.op_event``: about 100-byte changes,
a quarter of them putAttrs, the ops whose change can nest), parsed as the worker parses it.
Prints the cost per event of each of five runs; ``--json`` keeps them.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from harness.output import write_json
from harness.workload import op_event

from dyno_stream.core.events import EventModel, parse_event
from dyno_stream.core.flake import FlakeGenerator
from dyno_stream.core.limits import Limits


def per_event_s(events: list[EventModel], limits: Limits) -> float:
    check = limits.check
    t0 = time.perf_counter()
    for e in events:
        check(e)
    return (time.perf_counter() - t0) / len(events)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    return ap.parse_args()


def run(args: argparse.Namespace) -> list[float]:
    """Seconds per event of each run, after a warm-up."""
    rnd, gen = random.Random(7), FlakeGenerator(node=5, pid=5)
    events = [parse_event(op_event(rnd, gen, 1_000)[1]) for _ in range(args.events)]
    limits = Limits()  # the defaults, as config/dyno-stream.toml ships them
    per_event_s(events, limits)  # warm-up
    return [per_event_s(events, limits) for _ in range(args.runs)]


def report(args: argparse.Namespace, runs: list[float]) -> None:
    us = sorted(r * 1e6 for r in runs)
    print(
        f"Limits.check over {args.events:,} worker-benchmark events, {args.runs} runs: "
        f"{us[0]:.2f}-{us[-1]:.2f} us per event (median {statistics.median(us):.2f} us)"
    )
    write_json(args.json, {"limits_check_s_per_event": runs})


def main() -> None:
    args = parse()
    report(args, run(args))


if __name__ == "__main__":
    main()
