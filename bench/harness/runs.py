"""A figure from several runs, and the check that two contenders did the same work."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from harness.machine import load

#: A throughput run shorter than this is too short for its figure to settle.
MIN_RUN_S = 10.0


def best_of(run: Callable[[], dict[str, float]], times: int = 3) -> dict[str, Any]:
    """The fastest of a few runs, with every run's ops/s: a limit is what the part can do.

    The consume-only loop is bimodal on this machine: the same 200,000 messages take 0.2 s
    or 1.2 s, the slow runs waiting on fetches at the start (the process uses 0.4 s of CPU
    either way).
    """
    runs = [run() for _ in range(times)]
    best = max(runs, key=lambda r: r["ops_per_s"])
    return {**best, "runs_ops_per_s": [round(r["ops_per_s"]) for r in runs]}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median ops/s (the lower middle of an even count), with every run's
    ops/s, length and load average (1 minute, before and after), and the spread. Its
    ``cpu_us_per_op`` is the median of the runs' (each in ``runs_cpu_us_per_op``)."""
    ordered = sorted(runs, key=lambda r: r["ops_per_s"])
    middle = ordered[(len(ordered) - 1) // 2]
    found = {
        **middle,
        "runs_ops_per_s": [round(r["ops_per_s"]) for r in runs],
        "runs_seconds": [round(r["seconds"], 1) for r in runs],
        "runs_load": [r.get("load") for r in runs],
        "spread_ops_per_s": [round(ordered[0]["ops_per_s"]), round(ordered[-1]["ops_per_s"])],
    }
    if all("cpu_us_per_op" in r for r in runs):
        cpu = [r["cpu_us_per_op"] for r in runs]
        found["cpu_us_per_op"] = statistics.median(cpu)
        found["runs_cpu_us_per_op"] = [round(c, 2) for c in cpu]
        found["spread_cpu_us_per_op"] = [round(min(cpu), 2), round(max(cpu), 2)]
    return found


#: The figures of a latency run that ``median_latency`` takes the median of.
LATENCY_FIGURES = ("p50_ms", "p99_ms", "max_ms", "cpu_us_per_op", "rate")


def median_latency(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency runs at one rate: the median of each figure (each on its own), its spread
    (lowest, highest), and every run with its load average around it."""
    found: dict[str, Any] = {
        "ops": runs[0]["ops"],
        "measured": min(r["measured"] for r in runs),
        "runs": runs,
        "spread": {},
    }
    for key in LATENCY_FIGURES:
        values = [r[key] for r in runs]
        found[key] = statistics.median(values)
        found["spread"][key] = [min(values), max(values)]
    return found


def timed(run: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``run(*args, **kwargs)``'s figures with the load average (1 minute) before and after."""
    before = load()[0]
    figures = run(*args, **kwargs)
    return {**figures, "load": [before, load()[0]]}


def same_work(dyno: dict[str, Any], quix: dict[str, Any]) -> dict[str, Any]:
    """What the two contenders' runs did, side by side, and whether it is the same work: the
    same ops applied, none dead-lettered, every item's newest snapshot equal."""
    a, b = dyno["read_back"]["final"], quix["read_back"]["final"]
    differing = sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))
    checks: dict[str, Any] = {
        "ops": [dyno["applied"], quix["snapshots"]],
        "dead_letters": [dyno["dead_letters"], 0],
        "items": [len(a), len(b)],
        "items_differing": len(differing),
        "first_differing": differing[:5],
        "snapshots": [dyno["read_back"]["snapshots"], quix["read_back"]["snapshots"]],
        "snapshots_per_item_min_median_max": [
            dyno["read_back"]["per_item_min_median_max"],
            quix["read_back"]["per_item_min_median_max"],
        ],
    }
    checks["same"] = (
        checks["ops"][0] == checks["ops"][1] == dyno["ops"]
        and checks["dead_letters"] == [0, 0]
        and not differing
    )
    return checks
