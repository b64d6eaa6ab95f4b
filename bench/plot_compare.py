"""Draw bench/results/compare.png from compare.json (written by bench_compare.py).

A script of its own so that the figure can be drawn again without running the benchmark, and
by whichever Python has matplotlib (the benchmark's .venv-bench; dyno-stream does not need it).

Run: ``python bench/plot_compare.py [bench/results/compare.json] [bench/results/compare.png]``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results"
#: (p50, p99) colours of each latency rate
COLOURS = [("tab:blue", "lightsteelblue"), ("tab:green", "palegreen"), ("tab:red", "mistyrose")]
CPU_COLOURS = ["lightsteelblue", "palegreen", "mistyrose", "tab:gray"]
NAMES = {"dyno": "dyno-stream", "quix": "quixstreams", "floor": "floor"}
#: one worker's full-speed median that no later run may fall below (bench_compare.py's)
REFERENCE = 102_759


def bars(res: dict[str, Any]) -> list[tuple[str, float, str]]:
    """(label, ops/s, colour) of every throughput figure, contenders first."""
    found = [
        ("dyno-stream, 1 worker", res["dyno"]["one"]["ops_per_s"], "tab:blue"),
        ("dyno-stream, 2 workers", res["dyno"]["two"]["ops_per_s"], "tab:blue"),
    ]
    quix = res.get("quix") or {}
    if "validated" in quix:
        found.append(("quixstreams, validated", quix["validated"]["ops_per_s"], "tab:orange"))
    if "plain" in quix:
        found.append(("quixstreams, JSON only", quix["plain"]["ops_per_s"], "tab:orange"))
    floor = (res.get("floor") or {}).get("throughput")
    if floor:
        found.append(("floor: consume, answer", floor["ops_per_s"], "tab:green"))
    names = {
        "consume_only": "limit: consume only",
        "produce_only": "limit: produce only",
        "plyvel": "limit: plyvel write_batch",
        "pydantic": "limit: pydantic parse_event",
    }
    for key, label in names.items():
        found.append((label, res["limits"][key]["ops_per_s"], "tab:gray"))
    return found


def plot(res: dict[str, Any], png: Path) -> None:
    lat = res.get("latency") or {}
    mem = res.get("memory")
    panels = 1 + 2 * bool(lat) + bool(mem)
    fig, axes = plt.subplots(1, panels, figsize=(6 + 4.5 * (panels - 1), 4.8), squeeze=False)
    throughput_panel(axes[0][0], res)
    if lat:
        latency_panel(axes[0][1], res["run"], lat)
        cpu_panel(axes[0][2], res)
    if mem:
        memory_panel(axes[0][panels - 1], mem)
    run = res["run"]
    load = f"load average {run['load_start'][0]} -> {run['load_end'][0]}"
    fig.suptitle(f"dyno-stream vs quixstreams and the floor, {run['started']}, {load}", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def throughput_panel(ax: Any, res: dict[str, Any]) -> None:
    """Each contender's and limit's ops/s, on a log scale, with the goals."""
    data = bars(res)
    labels = [d[0] for d in data][::-1]
    values = [d[1] for d in data][::-1]
    ax.barh(labels, values, color=[d[2] for d in data][::-1])
    ax.set_xscale("log")
    ax.set_xlabel("ops/s (log scale)")
    run = res["run"]
    runs = f", median of {run['repeat']} runs" if run.get("repeat", 1) > 1 else ""
    ax.set_title(
        f"{run['ops']:,} ops, {run['items']:,} items, {run['partitions']} partitions{runs}",
        fontsize=10,
    )
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
    ax.set_xlim(right=max(values) * 8)
    ax.axvline(REFERENCE, color="tab:blue", linestyle="--", linewidth=0.8, label="102,759")
    quix = (res.get("quix") or {}).get("validated")
    if quix:
        goal = 5 * quix["ops_per_s"]
        ax.axvline(goal, color="tab:orange", linestyle="--", linewidth=0.8, label="goal: 5x quix")
    ax.legend(loc="lower right", fontsize=8)


def latency_panel(ax: Any, run: dict[str, Any], lat: dict[str, Any]) -> None:
    """p50 and p99 at each rate (medians of the runs), for each contender."""
    who = [w for w in NAMES if any(w in at for at in lat.values())]
    series = [(r, p) for r in run["rates"] if str(r) in lat for p in ("p50", "p99")]
    width = 0.8 / len(series)
    top = 0.0
    for j, (rate, pct) in enumerate(series):
        xs = [k - 0.4 + width * (j + 0.5) for k in range(len(who))]
        ys = [lat[str(rate)].get(w, {}).get(f"{pct}_ms", 0.0) for w in who]
        colour = COLOURS[(j // 2) % len(COLOURS)][j % 2]
        ax.bar(xs, ys, width=width, color=colour, label=f"{pct} at {rate:,} ops/s")
        for x, y in zip(xs, ys, strict=True):
            ax.text(x, y, f"{y:.0f}", ha="center", va="bottom", fontsize=7)
        top = max(top, *ys)
    ax.set_xticks(range(len(who)), [NAMES[w] for w in who])
    ax.set_yscale("log")
    ax.set_ylabel("produce to visible, ms (log scale)")
    ax.set_ylim(top=top * 3)
    ax.set_title("latency")
    ax.legend(fontsize=7, loc="upper left")


def cpu_panel(ax: Any, res: dict[str, Any]) -> None:
    """Each contender's CPU per op at each steady rate and at full speed (medians)."""
    lat = res["latency"]
    full = {
        "dyno": res["dyno"]["one"],
        "quix": (res.get("quix") or {}).get("validated"),
        "floor": (res.get("floor") or {}).get("throughput"),
    }
    who = [w for w in NAMES if any(w in at for at in lat.values())]
    points = [(f"{int(r):,}/s", {w: at.get(w) for w in who}) for r, at in lat.items()]
    points.append(("full speed", {w: full[w] for w in who}))
    width = 0.8 / len(points)
    for j, (label, figs) in enumerate(points):
        xs = [k - 0.4 + width * (j + 0.5) for k in range(len(who))]
        ys = [(figs[w] or {}).get("cpu_us_per_op", 0.0) for w in who]
        ax.bar(xs, ys, width=width, color=CPU_COLOURS[j % len(CPU_COLOURS)], label=label)
        for x, y in zip(xs, ys, strict=True):
            ax.text(x, y, f"{y:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(who)), [NAMES[w] for w in who])
    ax.set_ylabel("CPU per op, us (user + system)")
    ax.set_title("cost")
    ax.legend(fontsize=7, loc="upper right")


def memory_panel(ax: Any, mem: dict[str, Any]) -> None:
    """The worker's RSS against the distinct items applied, with the state caches' budget."""
    ax.plot(
        [c["items"] for c in mem["curve"]],
        [c["rss_bytes"] / 2**20 for c in mem["curve"]],
        marker="o",
        markersize=3,
    )
    if "state_cache_items" in mem:  # results written before the caches had a byte budget
        ax.axvline(mem["state_cache_items"], color="gray", linestyle=":", label="state caches full")
    else:
        budget = mem["state_cache_budget_bytes"] / 2**20
        ax.axhline(budget, color="gray", linestyle=":", label="state caches' budget")
    ax.set_xlabel("distinct items applied")
    ax.set_ylabel("worker RSS, MiB")
    ax.set_ylim(bottom=0)
    ax.set_title("dyno-stream worker memory")
    ax.legend()


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "compare.json"
    png = Path(sys.argv[2]) if len(sys.argv) > 2 else src.with_suffix(".png")
    plot(json.loads(src.read_text()), png)


if __name__ == "__main__":
    main()
