"""Throughput of one worker run as 1, 2, ... member processes (``--processes``), on one machine.

The workload is bench_worker.py's (ops of about 100 bytes of change over 1,000 items, 4
partitions, snapshots on), produced once into one ops topic before any run. Each run is a
fresh consumer group with its own snapshot and dead-letter topics and an empty data dir, so
each replays the whole ops topic: the same work for every process count. A run is timed from
the first event consumed until every op is applied and every snapshot acknowledged (the
worker's one /metrics, which sums its children). Process counts take turns run by run, so a
change in what else loads the machine falls on each alike.

Beside each figure: the CPU each part used during the run (``/proc/<pid>/stat``: the
worker's processes, the broker, this benchmark; ``/proc/stat`` for the whole machine, so
"other" is what else ran, e.g. other developers' tests) and the load average.

Run: ``python bench/bench_processes.py --ops 1500000 --runs 5`` (the broker as ``make bench``
starts it; ``DYNO_BROKER_PORT`` picks another port).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient
from harness.broker import bench_broker, scratch
from harness.machine import process_cpu_seconds
from harness.output import write_json
from harness.settings import bench_settings
from harness.workers import metrics, spawn_worker, stop, wait_metrics
from harness.workload import make_payloads, produce_all
from rich.console import Console
from rich.table import Table

from dyno_stream.config import Settings
from dyno_stream.devtools.broker import LocalBroker
from dyno_stream.kafka.topics import ensure_topics

TICKS = os.sysconf("SC_CLK_TCK")


def runqueue_wait_seconds(pid: int) -> float:
    """Seconds the threads of a process have waited, runnable, for a CPU so far
    (``/proc/<pid>/task/*/schedstat``, second field): the time others' work took from it."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def machine_cpu_seconds() -> float:
    """CPU seconds every core of the machine spent busy so far (not idle, not iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICKS


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


def run_settings(ops: Settings, tmp: Path, processes: int) -> Settings:
    """``ops``' ops topic, with a new group, new output topics and an empty data dir."""
    tag = uuid.uuid4().hex[:6]
    return ops.model_copy(
        update={
            "topics": ops.topics.model_copy(
                update={
                    "snapshots": f"{ops.topics.ops}-run-{tag}.snapshots",
                    "dead_letter": f"{ops.topics.ops}-run-{tag}.dead-letter",
                }
            ),
            "worker": ops.worker.model_copy(
                update={"group_id": f"{ops.worker.group_id}-{tag}", "data_dir": tmp / tag}
            ),
        }
    )


def one_run(
    s: Settings, tmp: Path, processes: int, n: int, broker_pid: int | None
) -> dict[str, Any]:
    ensure_topics(s)
    log = tmp / f"worker-{processes}-{s.worker.group_id}.log"
    proc = spawn_worker(s, log, {"DYNO_WORKER__PROCESSES": str(processes)})
    url = f"http://127.0.0.1:{s.worker.http_port}"
    load_before = os.getloadavg()
    try:
        wait_metrics(url, proc)
        seconds, m, before, after = watch_until_applied(url, proc, log, n, broker_pid)
        load_after = os.getloadavg()
    finally:
        stop(proc)
    cores = {k: (after[k] - before[k]) / seconds for k in after if k != "waited"}
    cores["other"] = cores["machine"] - sum(v for k, v in cores.items() if k != "machine")
    return {
        "processes": processes,
        "ops": n,
        "seconds": seconds,
        "ops_per_s": n / seconds,
        # what the worker does with the CPU it gets: equal across process counts means that
        # N processes cost nothing extra per op, and scale with the cores they are given
        "ops_per_worker_core_s": n / seconds / cores["worker"],
        # runnable but waiting for a core, summed over the worker's threads, per second
        "worker_waiting_for_cpu": round((after["waited"] - before["waited"]) / seconds, 2),
        "exit_status": proc.returncode,
        "cores": {k: round(v, 2) for k, v in cores.items()},
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "applied": m.get("dyno_ops_applied_total", 0),
        "snapshots": m.get("dyno_snapshots_published_total", 0),
    }


def cpu_sample(watched: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds of each watched group of processes and of the machine, and the seconds the
    worker's threads waited for a core (``waited``)."""
    sample = {k: sum(process_cpu_seconds(p) for p in v) for k, v in watched.items()}
    sample["machine"] = machine_cpu_seconds()
    sample["waited"] = sum(runqueue_wait_seconds(p) for p in watched["worker"])
    return sample


def watch_until_applied(
    url: str, proc: subprocess.Popen[bytes], log: Path, n: int, broker_pid: int | None
) -> tuple[float, dict[str, float], dict[str, float], dict[str, float]]:
    """From the first op consumed until ``n`` are applied and none in flight: the seconds, the
    worker's last metrics, and the CPU samples at the start and the end."""
    t0 = None
    watched: dict[str, list[int]] = {}
    before: dict[str, float] = {}
    deadline = time.monotonic() + 900
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited with {proc.returncode}; see {log}")
        m = metrics(url)
        if t0 is None and m.get("dyno_events_consumed_total", 0) > 0:
            t0 = time.monotonic()
            watched = {  # the children are running by now: one of them consumed
                "worker": [proc.pid, *children_of(proc.pid)],
                "broker": [broker_pid] if broker_pid else [],
                "bench": [os.getpid()],
            }
            before = cpu_sample(watched)
        if m.get("dyno_ops_applied_total", 0) >= n and m.get("dyno_batches_in_flight") == 0:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"applied {m.get('dyno_ops_applied_total', 0):.0f} of {n}")
        time.sleep(0.02)
    t1 = time.monotonic()
    assert t0 is not None
    return t1 - t0, m, before, cpu_sample(watched)


def drop_run_topics(s: Settings) -> None:
    admin = AdminClient(s.kafka.librdkafka())
    doomed = [s.topics.snapshots, s.topics.dead_letter]
    for future in admin.delete_topics(doomed, operation_timeout=30).values():
        try:
            future.result(30)
        except Exception as exc:  # a run that never made one; the exit clean-up tries again
            print(f"not deleted: {exc}")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ops", type=int, default=1_500_000)
    ap.add_argument("--items", type=int, default=1_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--processes", default="1,2", help="process counts, comma-separated")
    ap.add_argument("--runs", type=int, default=5, help="runs of each process count")
    ap.add_argument("--bootstrap", help="a running broker (default: the local one, started)")
    ap.add_argument("--json", type=Path)
    return ap.parse_args()


def run(args: argparse.Namespace, counts: list[int]) -> list[dict[str, Any]]:
    """The ops written once, then each process count in turn, ``--runs`` times."""
    results: list[dict[str, Any]] = []
    with bench_broker(args.bootstrap) as bootstrap, scratch("dyno-bench-procs-") as tmp:
        # the broker's CPU is counted when it is the local one
        broker_pid = None if args.bootstrap else LocalBroker().status().pid
        base = bench_settings(bootstrap, tmp, args.partitions)
        ensure_topics(base)
        took = produce_all(base, base.topics.ops, make_payloads(args.ops, args.items))
        print(f"produced {args.ops:,} ops in {took:.1f} s")
        for _run in range(args.runs):
            for k in counts:
                s = run_settings(base, tmp, k)
                r = one_run(s, tmp, k, args.ops, broker_pid)
                results.append(r)
                print(json.dumps(r))
                drop_run_topics(s)
                shutil.rmtree(s.worker.data_dir, ignore_errors=True)
    return results


def summarize(counts: list[int], results: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Each process count's medians over its runs, with the fastest and slowest."""
    summary: dict[int, dict[str, Any]] = {}
    for k in counts:
        rs = [r for r in results if r["processes"] == k]
        rates = sorted(r["ops_per_s"] for r in rs)
        med = {c: statistics.median(r["cores"][c] for r in rs) for c in rs[0]["cores"]}
        summary[k] = {
            "median_ops_per_s": statistics.median(rates),
            "min_ops_per_s": rates[0],
            "max_ops_per_s": rates[-1],
            "median_seconds": statistics.median(r["seconds"] for r in rs),
            "median_ops_per_worker_core_s": statistics.median(
                r["ops_per_worker_core_s"] for r in rs
            ),
            "median_cores": med,
            "median_waiting_for_cpu": statistics.median(r["worker_waiting_for_cpu"] for r in rs),
            "load_1min": [r["load_after"][0] for r in rs],
        }
    return summary


def report(args: argparse.Namespace, summary: dict[int, dict[str, Any]]) -> None:
    table = Table(
        title=f"one worker as N processes: {args.ops:,} ops, {args.partitions} partitions, "
        f"{args.items:,} items, {args.runs} runs each (median [min-max])"
    )
    for col in (
        "processes",
        "ops/s",
        "ops per worker core-s",
        "x 1 process",
        "s per run",
        "cores: worker / broker / bench / other",
        "worker waiting for a core",
        "load avg (1 min)",
    ):
        table.add_column(col, justify="right")
    one = summary.get(1, {}).get("median_ops_per_s")
    for k, row in summary.items():
        c = row["median_cores"]
        table.add_row(
            str(k),
            f"{row['median_ops_per_s']:,.0f} "
            f"[{row['min_ops_per_s']:,.0f}-{row['max_ops_per_s']:,.0f}]",
            f"{row['median_ops_per_worker_core_s']:,.0f}",
            f"{row['median_ops_per_s'] / one:.2f}" if one else "",
            f"{row['median_seconds']:.1f}",
            f"{c['worker']:.2f} / {c['broker']:.2f} / {c['bench']:.2f} / {c['other']:.2f}",
            f"{row['median_waiting_for_cpu']:.2f}",
            f"{min(row['load_1min']):.1f}-{max(row['load_1min']):.1f}",
        )
    Console().print(table)


def main() -> None:
    args = parse()
    counts = [int(x) for x in args.processes.split(",")]
    results = run(args, counts)
    summary = summarize(counts, results)
    report(args, summary)
    write_json(args.json, {"summary": summary, "runs": results})


if __name__ == "__main__":
    main()
