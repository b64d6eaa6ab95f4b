"""bench/bench_scale.py runs end to end (``--quick``, one join) against worker processes.

Not a speed test: a run this short on a shared machine says nothing about lag targets, and
none is compared with one. It holds that the harness still drives the worker through its CLI
and settings as the worker changes, that it sees the join move partitions, measures lag in
every window, and that its end-state check finds the reference's items all equal, with no op
lost or applied twice: the figures the README's scale-out section comes from.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from helpers import REPO, cli_env

ITEMS_PER_PARTITION = 50  # what --quick pre-fills
PARTITIONS = 16


def test_scale_bench_quick_join_measures_and_checks_the_end_state(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    out = tmp_path / "scale.json"
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "bench/bench_scale.py",
            "--bootstrap",
            kafka_bootstrap,
            "--quick",
            "--steps",
            "join",
            "--disks",
            "separate",
            "--json",
            str(out),
        ],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(out.read_text())

    kinds = [c["label"].split(" ")[1] for c in report["changes"]]
    assert kinds == ["starts", "joins", "stops;"], kinds
    start, join, drain = report["changes"]
    # the join handed some partitions, not none and not all, to the new worker
    assert 0 < len(join["moved"]) < PARTITIONS, join
    assert start["moved"] == [] and drain["moved"] == []
    for window in (start, join):
        assert window["ops_visible"] > 0, window
        assert 0 <= window["p50_lag_s"] <= window["p99_lag_s"] <= window["worst_lag_s"], window

    end = report["end_state"]
    assert end["items"] == ITEMS_PER_PARTITION * PARTITIONS
    assert end["ops_produced"] == report["ops_sent"] > end["items"]
    assert (end["lost"], end["twice"], end["missing"], end["ops_failed"]) == (0, 0, 0, 0), end
    assert end["equal"] == end["items"], end

    texts = [e["text"] for e in report["timeline"]]
    assert any(t.startswith("w2 joins") for t in texts), texts
    assert any("16/16 assigned (w1: " in t and "w2: " in t for t in texts), texts
    print(f"\nbench_scale --quick --steps join: {took:.0f}s; join {join}")
