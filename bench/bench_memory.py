"""Memory and many partitions: one worker's RSS under its memory
budget, the time to open 64 newly assigned partitions, and 64 partitions against 4.

All on the real ``dyno-stream worker`` process and the local broker:

1. **RSS under a budget.** A worker with ``memory_mb`` (256) holds 1, 16 and then 64
   partitions of a fresh topic, and takes 1,000,000 distinct items (bench_compare's
   ``distinct_puts``: putAttrs of about 100 bytes), written while it is stopped (SIGSTOP) so
   that it works them off in full batches. ``/proc/PID/status`` is read every 0.1 s: VmRSS
   at the start, its peak while the items go through, VmHWM, and VmRSS once idle after the
   last item ("steady", with its anonymous and file-backed parts). ``dyno_state_cache_bytes``
   is sampled with it (the state caches' estimate, against their part of the budget).
2. **Opening 64 partitions.** From the moment ``/healthz`` lists the 64 assigned partitions
   to the moment all are RUNNING (polled every 10 ms): with empty stores (a new worker on a
   new topic, each partition restored from an empty snapshot partition), and with existing
   stores (the same worker restarted on the 64-partition run's data, 1,000,000 items).
3. **64 partitions against 4.** The same ops (``--ops`` over ``--items`` items, bench_worker's
   workload) on a topic of 4 and one of 64 partitions, each through a worker that is paused
   (SIGSTOP) while the ops are written, then timed from its first consumed event until every
   op is applied and acknowledged, alternated ``--runs`` times; the medians count.

Run: ``make bench-memory`` or ``python bench/bench_memory.py [--quick] [--json PATH]``.
Writes bench/results/memory.json. Other processes share this machine: the load average and
the busiest processes are recorded beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.broker import bench_broker, free_port, scratch
from harness.machine import busiest, load, vm_status
from harness.output import write_json
from harness.settings import bench_settings
from harness.workers import metrics, spawn_worker, stop, time_until_applied, wait_metrics
from harness.workload import distinct_puts, make_payloads, produce_all
from rich.console import Console
from rich.table import Table

from dyno_stream.client.http import http_get
from dyno_stream.config import Settings
from dyno_stream.kafka.topics import ensure_topics

RESULTS = Path(__file__).resolve().parent / "results"
MIB = 1024 * 1024

out = Console(width=None if sys.stdout.isatty() else 160)


def healthz(url: str) -> dict[str, Any]:
    code, raw, _ = http_get(url + "/healthz", timeout=2)
    if code != 200:  # an OSError: the waiter takes it as a worker not ready yet
        raise OSError(f"{url}/healthz answered {code}: {raw[:200]!r}")
    body: dict[str, Any] = json.loads(raw)
    return body


def settings_for(bootstrap: str, data_dir: Path, partitions: int) -> Settings:
    return bench_settings(bootstrap, data_dir, partitions, free_port())


def start(s: Settings, log: Path, memory_mb: int | None) -> subprocess.Popen[bytes]:
    """A ``dyno-stream worker`` process on ``s``, with ``memory_mb`` (None: the default)."""
    extra = {} if memory_mb is None else {"DYNO_WORKER__MEMORY_MB": str(memory_mb)}
    return spawn_worker(s, log, extra)


def wait_running(url: str, proc: subprocess.Popen[bytes], partitions: int) -> dict[str, float]:
    """Poll /healthz every 10 ms: when the worker listed every partition assigned, and
    when all of them were RUNNING (seconds from the first moment they were listed)."""
    listed = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited with {proc.returncode}")
        try:
            states = healthz(url).get("partition_states", {})
        except OSError:
            time.sleep(0.01)
            continue
        now = time.monotonic()
        if listed is None and len(states) == partitions:
            listed = now
        if len(states) == partitions and all(v == "RUNNING" for v in states.values()):
            assert listed is not None
            return {"listed_at": listed, "open_s": now - listed}
        time.sleep(0.01)
    raise SystemExit(f"{partitions} partitions not RUNNING within 120 s")


@contextmanager
def worker(
    s: Settings, log: Path, memory_mb: int | None
) -> Iterator[tuple[str, subprocess.Popen[bytes], dict[str, float]]]:
    proc = start(s, log, memory_mb)
    url = f"http://127.0.0.1:{s.worker.http_port}"
    try:
        wait_metrics(url, proc)
        opened = wait_running(url, proc, s.topics.partitions)
        yield url, proc, opened
    finally:
        stop(proc)


# -- 1. RSS under the budget ----------------------------------------------------------------


def rss_run(
    bootstrap: str, tmp: Path, partitions: int, items: int, memory_mb: int
) -> tuple[dict[str, Any], Settings]:
    """One worker's RSS while it takes ``items`` distinct items on ``partitions``."""
    s = settings_for(bootstrap, tmp / f"rss-{partitions}", partitions)
    ensure_topics(s)
    with worker(s, tmp / f"rss-{partitions}.log", memory_mb) as (url, proc, opened):
        pid = proc.pid
        start_rss = vm_status(pid)["VmRSS"]
        # written while the worker is stopped: it then works off the whole backlog in full
        # batches (the most a batch holds), and the benchmark's own producer does not
        # compete with it for the two cores
        os.kill(pid, signal.SIGSTOP)
        try:
            produced_s = produce_all(s, s.topics.ops, distinct_puts(items))
        finally:
            os.kill(pid, signal.SIGCONT)
        if produced_s > 30:  # the group's session is 45 s: it may have moved the partitions
            out.print(f"[yellow]writing the items took {produced_s:.0f} s while paused[/]")
        t0 = time.monotonic()
        peak, cache_peak, curve = watch_rss(url, proc, items, start_rss)
        seconds = time.monotonic() - t0
        time.sleep(3)  # idle: the states' write-behind and LevelDB's compactions settle
        end = vm_status(pid)
        kinds = rss_kinds(pid)
        m = metrics(url)
    by_quarter = [next(r for a, r in curve if a >= items * k / 4) for k in (1, 2, 3, 4)]
    return {
        "partitions": partitions,
        "items": items,
        "memory_mb": memory_mb,
        "open_s": opened["open_s"],
        "rss_start_bytes": start_rss,
        "rss_peak_bytes": peak,
        "rss_steady_bytes": end["VmRSS"],
        "rss_steady_anon_bytes": kinds.get("RssAnon", 0),
        "rss_steady_file_bytes": kinds.get("RssFile", 0),
        "hwm_bytes": end["VmHWM"],
        "rss_at_quarters_bytes": by_quarter,
        "state_cache_peak_bytes": cache_peak,
        "state_cache_end_bytes": m.get("dyno_state_cache_bytes", 0.0),
        "state_cache_budget_bytes": m.get("dyno_state_cache_budget_bytes", 0.0),
        "produce_s": produced_s,
        "seconds": seconds,
        "items_per_s": items / seconds,
    }, s


def watch_rss(
    url: str, proc: subprocess.Popen[bytes], items: int, start_rss: int
) -> tuple[int, float, list[tuple[float, int]]]:
    """Sample RSS and the state caches every 0.1 s until ``items`` ops are applied: the peak
    RSS, the caches' peak and (applied, RSS) all along."""
    peak, cache_peak, applied = start_rss, 0.0, 0.0
    curve: list[tuple[float, int]] = []
    deadline = time.monotonic() + 900
    while applied < items:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"rss run: {applied:.0f} of {items} items in 900 s")
        m = metrics(url)
        applied = m.get("dyno_ops_applied_total", 0.0)
        cache_peak = max(cache_peak, m.get("dyno_state_cache_bytes", 0.0))
        rss = vm_status(proc.pid)["VmRSS"]
        peak = max(peak, rss)
        curve.append((applied, rss))
        time.sleep(0.1)
    return peak, cache_peak, curve


def rss_kinds(pid: int) -> dict[str, int]:
    """RssAnon and RssFile of a process, in bytes."""
    return {
        key: int(rest.split()[0]) * 1024
        for key, _, rest in (
            line.partition(":") for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        if key in ("RssAnon", "RssFile")
    }


# -- 2. opening 64 partitions ----------------------------------------------------------------


def reopen_run(s: Settings, tmp: Path, memory_mb: int) -> dict[str, float]:
    """The same worker started again on the stores a run left: the time to open them."""
    with worker(s, tmp / "reopen.log", memory_mb) as (_url, _proc, opened):
        return {"open_s": opened["open_s"]}


# -- 3. 64 partitions against 4 -------------------------------------------------------------


def throughput_run(
    bootstrap: str, tmp: Path, payloads: list[tuple[bytes, bytes]], partitions: int, tag: str
) -> dict[str, Any]:
    """A worker (default memory_mb) paused while the ops are written, then timed."""
    s = settings_for(bootstrap, tmp / f"tp-{tag}", partitions)
    ensure_topics(s)
    with worker(s, tmp / f"tp-{tag}.log", None) as (url, proc, opened):
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            produce_all(s, s.topics.ops, payloads)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        t0, t1, m = time_until_applied([url], [proc], len(payloads))
    return {
        "partitions": partitions,
        "ops": len(payloads),
        "seconds": t1 - t0,
        "ops_per_s": len(payloads) / (t1 - t0),
        "batches": m.get("dyno_batch_seconds_count", 0),
        "snapshots": m.get("dyno_snapshots_published_total", 0),
        "open_s": opened["open_s"],
    }


# -- the report ------------------------------------------------------------------------------


def mib(b: float) -> str:
    return f"{b / MIB:,.0f} MiB"


def report(res: dict[str, Any]) -> None:
    budget = res["memory_mb"]
    t = Table(title=f"worker RSS, {res['items']:,} distinct items, memory_mb={budget}")
    for col in ("partitions", "start", "peak", "VmHWM", "steady", "state caches peak / budget"):
        t.add_column(col, justify="right")
    t.add_column("items/s", justify="right")
    for r in res["rss"]:
        t.add_row(
            str(r["partitions"]),
            mib(r["rss_start_bytes"]),
            mib(r["rss_peak_bytes"]),
            mib(r["hwm_bytes"]),
            mib(r["rss_steady_bytes"]),
            f"{mib(r['state_cache_peak_bytes'])} / {mib(r['state_cache_budget_bytes'])}",
            f"{r['items_per_s']:,.0f}",
        )
    out.print(t)
    t = Table(title="64 partitions")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_column("goal", justify="right")
    o = res["open"]
    t.add_row("open 64 new partitions, empty stores", f"{o['empty_s']:.2f} s", "< 2 s")
    t.add_row(
        f"open 64 partitions, existing stores ({res['items']:,} items)",
        f"{o['existing_s']:.2f} s",
        "< 2 s",
    )
    tp = res["throughput"]
    t.add_row(
        f"throughput, 4 partitions ({tp['ops']:,} ops, {tp['items']:,} items; runs)",
        f"{tp['median_4']:,.0f} ops/s ({', '.join(f'{x:,.0f}' for x in tp['runs_4'])})",
        "",
    )
    t.add_row(
        "throughput, 64 partitions (runs)",
        f"{tp['median_64']:,.0f} ops/s ({', '.join(f'{x:,.0f}' for x in tp['runs_64'])})",
        "",
    )
    t.add_row("64 against 4 (medians)", f"{tp['ratio']:.2f}", ">= 0.80")
    out.print(t)
    out.print(f"load average before/after: {res['load_before']} / {res['load_after']}")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a smoke test: small, one run each")
    ap.add_argument("--items", type=int, help="distinct items of the RSS runs (1,000,000)")
    ap.add_argument("--memory-mb", type=int, default=256)
    ap.add_argument("--ops", type=int, help="ops of each throughput run (200,000)")
    ap.add_argument("--tp-items", type=int, default=1_000, help="items of the throughput runs")
    ap.add_argument("--runs", type=int, help="throughput runs of each (3)")
    ap.add_argument("--json", type=Path, default=RESULTS / "memory.json")
    args = ap.parse_args()
    args.items = args.items or (50_000 if args.quick else 1_000_000)
    args.ops = args.ops or (20_000 if args.quick else 200_000)
    args.runs = args.runs or (1 if args.quick else 3)
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "items": args.items,
        "memory_mb": args.memory_mb,
        "load_before": load(),
        "busiest_before": busiest(),
    }
    # a broker of its own: others on this machine run theirs (and their benchmarks) beside
    with (
        scratch("dyno-bench-memory-") as tmp,
        bench_broker(own_in=tmp / "broker", timeout=120) as bootstrap,
    ):
        partition_counts = (1, 4, 64) if args.quick else (1, 16, 64)
        rss = []
        last: Settings | None = None
        for p in partition_counts:
            r, last = rss_run(bootstrap, tmp, p, args.items, args.memory_mb)
            rss.append(r)
            out.print(
                f"{p} partitions: peak {mib(r['rss_peak_bytes'])}, "
                f"steady {mib(r['rss_steady_bytes'])}"
            )
        res["rss"] = rss
        assert last is not None
        res["open"] = {
            "empty_s": rss[-1]["open_s"],
            "existing_s": reopen_run(last, tmp, args.memory_mb)["open_s"],
        }
        res["throughput"] = throughput_runs(args, bootstrap, tmp)
        res["load_after"] = load()
        res["busiest_after"] = busiest()
    return res


def throughput_runs(args: argparse.Namespace, bootstrap: str, tmp: Path) -> dict[str, Any]:
    """4 and 64 partitions in turn, ``--runs`` times each; the medians and their ratio."""
    payloads = make_payloads(args.ops, args.tp_items)
    by: dict[int, list[dict[str, Any]]] = {4: [], 64: []}
    for i in range(args.runs):
        for p in (4, 64) if i % 2 == 0 else (64, 4):
            by[p].append(throughput_run(bootstrap, tmp, payloads, p, f"{p}-{i}"))
            out.print(f"{p} partitions: {by[p][-1]['ops_per_s']:,.0f} ops/s")
    m4 = statistics.median(r["ops_per_s"] for r in by[4])
    m64 = statistics.median(r["ops_per_s"] for r in by[64])
    return {
        "ops": args.ops,
        "items": args.tp_items,
        "runs_4": [r["ops_per_s"] for r in by[4]],
        "runs_64": [r["ops_per_s"] for r in by[64]],
        "median_4": m4,
        "median_64": m64,
        "ratio": m64 / m4,
        "detail": by,
    }


def main() -> None:
    args = parse()
    res = run(args)
    report(res)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, res)
    out.print(f"written to {args.json}")


if __name__ == "__main__":
    main()
