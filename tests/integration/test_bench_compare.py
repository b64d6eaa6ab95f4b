"""bench/bench_compare.py runs end to end (dyno-stream's side, tiny sizes) on the real broker.

Not a speed test: the figures of a run this small mean nothing, and none is compared with a
target. It holds that the harness still works against the worker as it changes (its
/metrics, its CLI, its settings), that it counts every op where it should, and that what it
writes is complete: the JSON the docs' figures come from. quixstreams is not needed
(``--skip-quix``); its side runs only in ``make bench-compare``. The floor (a plain
confluent-kafka loop) runs here, and every contender's CPU per op is held to what the
machine could have given it in the time the test saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from helpers import REPO, cli_env

OPS = 3_000
ITEMS = 4_000


def _row(lines: list[str], label: str) -> list[str]:
    """The cells of the printed table row that starts with ``label``."""
    for line in lines:
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in the report")


def test_compare_harness_dyno_side_writes_sane_figures(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    out = tmp_path / "compare.json"
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "bench/bench_compare.py",
            "--bootstrap",
            kafka_bootstrap,
            "--quick",
            "--skip-quix",
            "--ops",
            str(OPS),
            "--rates",
            "1000,500",
            "--latency-seconds",
            "1",
            "--memory-items",
            str(ITEMS),
            "--json",
            str(out),
            "--png",
            "",
        ],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    res = json.loads(out.read_text())

    assert res["run"]["ops"] == OPS and "quix" not in res
    for name, fig in res["limits"].items():
        assert fig["ops"] == OPS, name  # its rate is held to the harness's time below
    one, two = res["dyno"]["one"], res["dyno"]["two"]
    floor = res["floor"]["throughput"]
    assert one["applied_per_worker"] == [OPS]
    # two workers in one group split the partitions (the ops twice over): both applied
    # some, none twice
    assert two["ops"] == res["run"]["two_workers_ops"] == 2 * OPS
    assert sum(two["applied_per_worker"]) == 2 * OPS and min(two["applied_per_worker"]) > 0
    assert 0 < one["snapshots"] <= OPS and 0 < two["snapshots"] <= 2 * OPS
    assert floor["snapshots"] == OPS  # one answer per op
    # Each rate is held to what the test saw itself, not recomputed from the same JSON: no
    # run of OPS ops can have taken longer than the whole harness did.
    for name, fig in {"one": one, "two": two, "floor": floor, **res["limits"]}.items():
        assert fig["ops_per_s"] > OPS / took, (name, fig["ops_per_s"], took)
    # and each contender's CPU, read from its processes, is no more than the machine's cores
    # could give in that time (the floor's few ms may round to no tick of /proc at all)
    for name, fig in {"one": one, "two": two, "floor": floor}.items():
        cpu_s = fig["cpu_us_per_op"] * fig["ops"] / 1e6
        assert 0 <= cpu_s < took * (os.cpu_count() or 1), (name, cpu_s, took)
        assert cpu_s > 0 or name == "floor", (name, cpu_s)
    # and the printed report, the figures the README quotes, shows what the JSON holds
    printed = done.stdout.splitlines()
    assert _row(printed, "dyno-stream, 1 worker")[1] == f"{one['ops_per_s']:,.0f}"
    assert _row(printed, "dyno-stream, 2 workers")[1] == f"{two['ops_per_s']:,.0f}"
    assert _row(printed, "floor: consume, answer")[1] == f"{floor['ops_per_s']:,.0f}"
    scaling = _row(printed, "2 workers on 2 cores: scaling (reported)")
    assert scaling[1] == f"{res['dyno']['scaling']:.2f}x"

    assert list(res["latency"]) == ["1000"]  # --quick: the first rate only
    at = res["latency"]["1000"]
    assert sorted(at) == ["dyno", "floor"]  # no quixstreams here
    for lat in at.values():
        assert lat["measured"] == lat["ops"] == 1000
        assert 0 < lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert len(lat["runs"]) == 1 and lat["runs"][0]["p99_ms"] == lat["p99_ms"]
        assert len(lat["runs"][0]["load"]) == 2
        cpu_s = lat["cpu_us_per_op"] * lat["ops"] / 1e6
        assert 0 < cpu_s < took * (os.cpu_count() or 1)  # 1,000 ops/s over 1 s: ticks of it
    lat = at["dyno"]
    # each goal's figure printed, from the JSON's medians
    x_floor = lat["p99_ms"] / at["floor"]["p99_ms"]
    printed_goal = _row(printed, "p99 at 1,000 ops/s <= 2x the floor's")[1]
    assert printed_goal == f"{lat['p99_ms']:.1f} / {at['floor']['p99_ms']:.1f} ms = {x_floor:.2f}x"
    x_cpu = lat["cpu_us_per_op"] / one["cpu_us_per_op"]
    printed_goal = _row(printed, "CPU per op at 1,000 ops/s <= 2x at full speed")[1]
    assert (
        printed_goal == f"{lat['cpu_us_per_op']:.1f} / {one['cpu_us_per_op']:.1f} us = {x_cpu:.2f}x"
    )

    mem = res["memory"]
    assert [c["items"] for c in mem["curve"]] == [ITEMS * k // 20 for k in range(21)]
    assert all(c["rss_bytes"] > 10 * 2**20 for c in mem["curve"])
    assert mem["bounded"] is None  # too few items to fill the state caches: not judged

    goals = {g["goal"]: g for g in res["goals"]}
    reference = "full speed, one worker >= 102,759 ops/s"
    verdict = _row(printed, reference)[2]
    assert verdict == {True: "met", False: "not met"}[goals[reference]["met"]]
    assert [p["name"] for p in res["run"]["phases"]][:3] == [
        "writing the shared ops topic",
        "limits",
        "dyno-stream, 1 worker, run 1",
    ]
    assert one["runs_ops_per_s"] == [round(one["ops_per_s"])]  # --quick: one run each
    # each run with its load average and length, the spread, the short runs said
    assert one["spread_ops_per_s"] == [round(one["ops_per_s"])] * 2
    assert one["runs_load"] == [one["load"]] and len(one["load"]) == 2
    assert one["runs_seconds"] == [round(one["seconds"], 1)]
    short = [s for fig in (one, two) for s in fig["runs_seconds"] if s < 10]
    assert len(res["short_runs"]) == len(short)
    assert goals["every throughput run >= 10 s"]["met"] is (not short)
    assert "same_work" not in res  # no quixstreams: nothing to compare with
