"""dyno-stream beside quixstreams, a floor and the machine's limits: speed and cost, in one run.

The workload is bench_worker.py's: N ops over 1,000 items (changes of about 100 bytes: a mix
of putAttrs, incAttrBy, append and addToSet), keyed by item over 4 partitions. Every
contender reads the same ops, written before it starts, from the first offset until done:

- **dyno-stream**: the real ``dyno-stream worker`` process(es), one and then two in one
  group. They are started on a fresh, empty topic and wait until the group has assigned
  every partition; then they are paused (SIGSTOP), the N ops are written (for two workers
  2N ops over twice the items, so that their runs last as long), and they are resumed
  (SIGCONT); the group's session is 60 s meanwhile (``long_session``). So start-up and the
  group join are not timed, and two workers split the partitions from the first op rather
  than after a rebalance. Done = the workers' /metrics count every op applied, which the worker does
  only once the batch's snapshots are acknowledged by the broker.
- **quixstreams** (bench/quix_app.py, in its own virtualenv): a stateful app, at-least-once,
  each item in its RocksDB state store, one snapshot per message to an output topic. It
  reads a topic written before it starts. Done = the output topic holds N snapshots (the
  sum of its partitions' high watermarks), i.e. every op applied and its snapshot stored by
  the broker. quixstreams keeps state changes in memory until its checkpoint (every 5 s by
  default), so "committed" (the group's committed offsets reach the end: state flushed to
  RocksDB and its changelog, offsets committed) is reported too; the headline figure is
  the earlier, more favourable one. Measured with and without the pydantic validation.
- **the floor** (bench/floor_app.py): a plain confluent-kafka loop that answers each op with
  one small message keyed by its item, no validation, no store: what taking an op off Kafka
  and putting an answer back costs on this machine, with nothing of ours in it. Done = its
  output holds N answers.
- **limits**, each the best of three runs (all three kept): a confluent-kafka consume-only
  loop (``consume(1000)``, touching key and value; the worker's consumer settings), a
  produce-only loop (the worker's producer settings: idempotent, acks=all, linger.ms=2),
  plyvel ``write_batch`` puts of the ops' rows (1,000 per batch), and pydantic validation
  alone (``parse_event``).

Time runs from the first op consumed to done. Cost is each contender's CPU time over that
span (user and system, from /proc, summed over its processes and their threads; never the
benchmark's own), per op. Each throughput contender runs five times, in turn with the others,
and its median run counts (its CPU per op: the median of its runs'), with the spread
(slowest-fastest) and the load average around each run beside it (the load on this machine
varies). A run shorter than 10 s is reported loudly (the floor's runs are not held to it):
200,000 ops took dyno-stream 2-4 s, and its figure moved 30% from run to run with what else
ran on the machine.

Both contenders must do the same work, and each run checks it by reading its snapshot topic
back: every op applied (dyno-stream's ``dyno_ops_applied_total``, quixstreams' output
count), none dead-lettered (both validate with ``parse_event``), and each item's newest
snapshot equal between the two (its value and its count of changes). Snapshots per item
differ by design (dyno-stream publishes an item once per batch that changed it,
quixstreams once per message): the report prints both counts.

Then produce-to-visible latency at a steady 1,000, 5,000 and 10,000 ops/s, 10 s each after a
2 s warm-up (harness.latency: from an op's send to the moment a reader sees the first
snapshot, or the floor's answer, that includes it), with each contender's CPU per op at that
rate. Each point runs five times, the contenders alternated (dyno-stream, quixstreams, floor,
dyno-stream, ...); the median of each figure counts, with its spread and each run's load.
The p99 is reported as a multiple of the floor's at the same rate. quixstreams may not keep
up once the benchmark's producer and snapshot reader share the cores, and then shows its
queue. Last, the worker's RSS while it takes 1,000,000 distinct items
(``/proc/<pid>/status`` VmRSS). Other agents share this machine: the load average and the
busiest processes are recorded beside the figures.

The report prints each goal's figure, met or not: CPU per op at 1,000 and 5,000 ops/s at most
2x that at full speed; p99 at each rate within 2x the floor's and at most quixstreams';
full-speed throughput at least 5x quixstreams' and never below ``REFERENCE_OPS_PER_S``.

Run: ``make bench-compare`` (builds .venv-bench with quixstreams, starts the broker if
needed; about 30 minutes), or ``python bench/bench_compare.py [--quick] [--skip-quix]
[--ops N] [--repeat N] [--latency-repeat N]``. Writes bench/results/compare.json and
compare.png (bench/plot_compare.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import confluent_kafka
import orjson
import plyvel
import pydantic
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)
from harness.broker import bench_broker, free_port, scratch
from harness.latency import bench_latency
from harness.machine import busiest, cpu_seconds, load, vm_status
from harness.output import RESULTS, write_json
from harness.runs import MIN_RUN_S, best_of, median_latency, median_run, same_work, timed
from harness.settings import bench_settings
from harness.workers import Launch, Started, metrics, stop, time_until_applied, wait_metrics
from harness.workload import distinct_puts, make_payloads, produce_all
from rich.console import Console
from rich.table import Table

from dyno_stream.cli.demo import start_worker
from dyno_stream.config import Settings, WorkerSettings, consumer_config
from dyno_stream.core.events import parse_event
from dyno_stream.kafka.group_protocol import resolve_group_protocol
from dyno_stream.kafka.topics import ensure_topics
from dyno_stream.store.budget import MemoryBudget

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

out = Console(width=None if sys.stdout.isatty() else 160)


# -- the machine and what else runs on it --------------------------------------------------


def subdir(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir(parents=True, exist_ok=True)
    return path


class Phases:
    """Each phase's duration and the load average around it, for the JSON."""

    def __init__(self) -> None:
        self.log: list[dict[str, Any]] = []

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        out.print(f"[bold]{name}[/] (load {load()[0]})")
        entry: dict[str, Any] = {"name": name, "load_before": load()}
        t0 = time.monotonic()
        try:
            yield
        finally:
            entry["seconds"] = round(time.monotonic() - t0, 1)
            entry["load_after"] = load()
            self.log.append(entry)


# -- the limits ------------------------------------------------------------------------------


def read_back(s: Settings, topic: str, partitions: int) -> dict[str, Any]:
    """A snapshot topic read from its start to its end: how many snapshots each item got,
    and each item's newest ``value`` and ``changes`` (what both contenders must agree on)."""
    consumer = Consumer({**s.kafka.librdkafka(), "group.id": f"read-back-{uuid.uuid4().hex}"})
    parts = [TopicPartition(topic, p) for p in range(partitions)]
    ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts}
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    per_item: Counter[bytes] = Counter()
    newest: dict[bytes, bytes] = {}
    done = {p for p, end in ends.items() if end <= 0}
    deadline = time.monotonic() + 300
    try:
        while len(done) < partitions and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 1.0):
                if msg.error():
                    continue
                key, partition, offset = msg.key() or b"", msg.partition(), msg.offset()
                assert partition is not None and offset is not None  # set on consumed ones
                per_item[key] += 1
                newest[key] = msg.value() or b"null"
                if offset + 1 >= ends[partition]:
                    done.add(partition)
    finally:
        consumer.close()
    if len(done) < partitions:
        raise SystemExit(f"{topic}: not read to its end in 300 s")
    final = {}
    for key, value in newest.items():
        snap = orjson.loads(value)
        final[key.decode()] = {"value": snap["value"], "changes": snap["changes"]}
    counts = sorted(per_item.values())
    return {
        "snapshots": sum(counts),
        "items": len(counts),
        "per_item_min_median_max": [counts[0], counts[len(counts) // 2], counts[-1]]
        if counts
        else [0, 0, 0],
        "final": final,
    }


def limit_consume(s: Settings, topic: str, n: int) -> dict[str, float]:
    """confluent-kafka alone: consume(1000) batches with the worker's consumer settings."""
    protocol = resolve_group_protocol(s).protocol
    conf = consumer_config(s, protocol=protocol)
    consumer = Consumer({**conf, "group.id": f"consume-only-{uuid.uuid4().hex}"})
    consumer.subscribe([topic])
    got, size, t0 = 0, 0, 0.0
    deadline = time.monotonic() + 300
    try:
        while got < n and time.monotonic() < deadline:
            batch = consumer.consume(1000, 1.0)
            if batch and not t0:
                t0 = time.monotonic()
            for msg in batch:
                if msg.error():
                    continue
                size += len(msg.value() or b"") + len(msg.key() or b"")
                got += 1
        t1 = time.monotonic()
    finally:
        consumer.close()
    if got < n:
        raise SystemExit(f"consume-only read {got} of {n}")
    return {"ops": n, "seconds": t1 - t0, "ops_per_s": n / (t1 - t0), "bytes": size}


def limit_produce(s: Settings, payloads: list[tuple[bytes, bytes]]) -> dict[str, float]:
    """confluent-kafka alone: the same payloads with the worker's producer settings, as is."""
    ensure_topics(s)
    seconds = produce_all(s, s.topics.ops, payloads, conf={})
    return {"ops": len(payloads), "seconds": seconds, "ops_per_s": len(payloads) / seconds}


def limit_plyvel(tmp: Path, payloads: list[tuple[bytes, bytes]]) -> dict[str, float]:
    """LevelDB alone: each op's row (``name/flake/op`` = change JSON), 1,000 per write batch."""
    rows = []
    for _key, value in payloads:
        ev = orjson.loads(value)
        rows.append((f"{ev['item']}/{ev['ts']}/{ev['op']}".encode(), orjson.dumps(ev["change"])))
    db = plyvel.DB(tempfile.mkdtemp(prefix="plyvel-limit-", dir=tmp), create_if_missing=True)
    try:
        t0 = time.perf_counter()
        for i in range(0, len(rows), 1000):
            with db.write_batch() as wb:
                for k, v in rows[i : i + 1000]:
                    wb.put(k, v)
        seconds = time.perf_counter() - t0
    finally:
        db.close()
    return {"ops": len(rows), "seconds": seconds, "ops_per_s": len(rows) / seconds}


def limit_pydantic(payloads: list[tuple[bytes, bytes]]) -> dict[str, float]:
    """pydantic alone: ``parse_event`` over the raw values, as the worker validates them."""
    values = [v for _k, v in payloads]
    t0 = time.perf_counter()
    for v in values:
        parse_event(v)
    seconds = time.perf_counter() - t0
    return {"ops": len(values), "seconds": seconds, "ops_per_s": len(values) / seconds}


# -- dyno-stream -----------------------------------------------------------------------------


def worker_settings(bootstrap: str, data_dir: Path, partitions: int, count: int) -> list[Settings]:
    """Settings of ``count`` workers in one group on fresh topics, each with its HTTP port."""
    base = bench_settings(bootstrap, data_dir, partitions, free_port())
    ports = [base.worker.http_port] + [free_port() for _ in range(count - 1)]
    return [
        base.model_copy(update={"worker": base.worker.model_copy(update={"http_port": p})})
        for p in ports
    ]


def wait_assigned(urls: list[str], partitions: int, timeout: float = 60) -> None:
    """Until the group has handed out every partition (each worker holding some)."""
    deadline = time.monotonic() + timeout
    stable_since = None
    while time.monotonic() < deadline:
        held = [metrics(u).get("dyno_assigned_partitions", 0) for u in urls]
        if sum(held) == partitions and all(h > 0 for h in held[:partitions]):
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since > 0.5:
                return
        else:
            stable_since = None
        time.sleep(0.1)
    raise SystemExit(f"partitions not assigned to the workers in {timeout:.0f} s")


#: Two workers take this many times the ops over this many times the items: each worker's
#: share is one worker's workload, and their runs last as long. (The same ops written twice
#: would be a different workload: each item's history replayed out of order.)
TWO_WORKER_SCALE = 2

#: The group's session while the workers are paused (SIGSTOP) and 1,000,000 ops are
#: written: the local broker's own is 10 s, and a worker paused longer lost its partitions
#: (its run then timed a rebalance). 60 s is the broker's largest (its default
#: group.consumer.max.session.timeout.ms).
PAUSED_SESSION_MS = 60_000


def long_session(s: Settings) -> None:
    """Give the group (KIP-848's protocol: the broker holds its session) a 60 s session."""
    if resolve_group_protocol(s).protocol != "consumer":
        return
    admin = AdminClient(s.kafka.librdkafka())
    resource = ConfigResource(
        ResourceType.GROUP,
        s.worker.group_id,
        incremental_configs=[
            ConfigEntry(
                "consumer.session.timeout.ms",
                str(PAUSED_SESSION_MS),
                incremental_operation=AlterConfigOpType.SET,
            )
        ],
    )
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)


@contextmanager
def workers(
    bootstrap: str, tmp: Path, name: str, partitions: int, count: int
) -> Iterator[tuple[Settings, list[str], list[subprocess.Popen[bytes]]]]:
    """``count`` worker processes on fresh topics, started, with every partition assigned."""
    settings = worker_settings(bootstrap, tmp / f"{name}-data", partitions, count)
    ensure_topics(settings[0])
    long_session(settings[0])
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, s in enumerate(settings):
            procs.append(start_worker(s, tmp / f"{name}-{i}.log"))
        urls = [f"http://127.0.0.1:{s.worker.http_port}" for s in settings]
        for url, proc in zip(urls, procs, strict=True):
            wait_metrics(url, proc)
        wait_assigned(urls, partitions)
        yield settings[0], urls, procs
    finally:
        for proc in procs:
            stop(proc)


def dyno_throughput(
    bootstrap: str,
    tmp: Path,
    payloads: list[tuple[bytes, bytes]],
    partitions: int,
    count: int,
    check: bool = False,
) -> dict[str, Any]:
    """``count`` workers, paused while the ops are written, timed once resumed; their CPU
    time from their resumption to done, per op."""
    n = len(payloads)
    name = f"dyno{count}-{uuid.uuid4().hex[:6]}"
    with workers(bootstrap, tmp, name, partitions, count) as (s, urls, procs):
        for proc in procs:
            os.kill(proc.pid, signal.SIGSTOP)
        try:
            produced_s = produce_all(s, s.topics.ops, payloads)
        finally:
            cpu0 = cpu_seconds([p.pid for p in procs])
            for proc in procs:
                os.kill(proc.pid, signal.SIGCONT)
        if produced_s > PAUSED_SESSION_MS / 1000 / 2:  # the group may have moved
            out.print(f"[yellow]writing the ops took {produced_s:.0f} s while paused[/]")
        t0, t1, m = time_until_applied(urls, procs, n)
        cpu = cpu_seconds([p.pid for p in procs]) - cpu0
        per_worker = [metrics(u).get("dyno_ops_applied_total", 0) for u in urls]
        rss = [vm_status(p.pid)["VmRSS"] for p in procs]
        back = read_back(s, s.topics.snapshots, partitions) if check else None
    return {
        "workers": count,
        "ops": n,
        "seconds": t1 - t0,
        "ops_per_s": n / (t1 - t0),
        "cpu_us_per_op": cpu / n * 1e6,
        "applied": round(sum(per_worker)),
        "dead_letters": round(m.get("dyno_dead_lettered_total", 0)),
        "read_back": back,
        "applied_per_worker": per_worker,
        "snapshots": m.get("dyno_snapshots_published_total", 0),
        "batches": m.get("dyno_batch_seconds_count", 0),
        "rss_bytes": rss,
    }


def state_cache_budget_bytes() -> int:
    """The bytes the worker's state caches share, every partition together (the default
    ``[worker] memory_mb``'s part: dyno_stream.store.budget)."""
    default = WorkerSettings.model_fields["memory_mb"].default
    return MemoryBudget.megabytes(default).state_bytes


def dyno_memory(bootstrap: str, tmp: Path, n: int, partitions: int) -> dict[str, Any]:
    """One worker's RSS while it takes ``n`` distinct items (written while it runs)."""
    marks = [n * k // 20 for k in range(1, 21)]
    curve: list[dict[str, float]] = []
    with workers(bootstrap, tmp, "memory", partitions, 1) as (s, urls, procs):
        pid = procs[0].pid
        start = vm_status(pid)
        curve.append({"items": 0, "rss_bytes": start["VmRSS"]})
        failed: list[BaseException] = []

        def write() -> None:
            try:
                produce_all(s, s.topics.ops, distinct_puts(n))
            except BaseException as exc:
                failed.append(exc)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        t0 = time.monotonic()
        deadline = t0 + 1800
        while marks and time.monotonic() < deadline:
            if procs[0].poll() is not None:
                raise SystemExit(f"worker exited with {procs[0].returncode}")
            if failed:
                raise failed[0]
            applied = metrics(urls[0]).get("dyno_ops_applied_total", 0)
            while marks and applied >= marks[0]:
                curve.append({"items": marks.pop(0), "rss_bytes": vm_status(pid)["VmRSS"]})
            time.sleep(0.05)
        if marks:
            raise SystemExit(f"memory run: {marks[0]} items not reached in time")
        seconds = time.monotonic() - t0
        writer.join(60)
        time.sleep(2)
        end = vm_status(pid)
    cache = state_cache_budget_bytes()
    by = {c["items"]: c["rss_bytes"] for c in curve}
    quarter = [by[n * k // 4] for k in range(1, 5)]
    first = (by[n // 4] - by[0]) / (n // 4)
    last_half = (by[n] - by[n // 2]) / (n - n // 2)
    return {
        "items": n,
        "partitions": partitions,
        "state_cache_budget_bytes": cache,
        "rss_start_bytes": start["VmRSS"],
        "rss_quarters_bytes": quarter,
        "rss_idle_after_bytes": end["VmRSS"],
        "hwm_bytes": end["VmHWM"],
        "bytes_per_item_first_quarter": first,
        "bytes_per_item_last_half": last_half,
        "curve": curve,
        "seconds": seconds,
        "items_per_s_while_written": n / seconds,
        # judged only when the last half lies wholly beyond what the state caches hold
        "bounded": None if n // 2 < cache else last_half < max(0.1 * first, 50.0),
    }


# -- quixstreams and the floor: apps that answer each op on an output topic -----------------


def quix_command(python: str, args: list[str]) -> list[str]:
    return [python, str(BENCH / "quix_app.py"), *args]


def quix_versions(python: str) -> dict[str, str]:
    done = subprocess.run(
        quix_command(python, ["--versions"]), capture_output=True, text=True, check=True
    )
    result: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


#: The command line of an app on these settings, given the prefix of its status files.
AppCommand = Callable[[Settings, Path], list[str]]


def quix_app(python: str, validate: bool) -> AppCommand:
    """The quix app (bench/quix_app.py) reading ``s.topics.ops``, its state under the status."""

    def command(s: Settings, status: Path) -> list[str]:
        return quix_command(
            python,
            [
                "--bootstrap", s.kafka.bootstrap_servers,
                "--input", s.topics.ops,
                "--output", s.topics.snapshots,
                "--group", s.worker.group_id,
                "--state-dir", str(status.with_suffix(".state")),
                "--status", str(status),
                "--validate" if validate else "--no-validate",
            ],
        )  # fmt: skip

    return command


def floor_app(s: Settings, status: Path) -> list[str]:
    """The floor (bench/floor_app.py, a plain confluent-kafka loop), in this Python."""
    return [
        sys.executable, str(BENCH / "floor_app.py"),
        "--bootstrap", s.kafka.bootstrap_servers,
        "--input", s.topics.ops,
        "--output", s.topics.snapshots,
        "--group", s.worker.group_id,
        "--status", str(status),
    ]  # fmt: skip


def start_app(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)


def wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return float(path.read_text())
        if proc.poll() is not None:
            raise SystemExit(f"{path.stem} app exited with {proc.returncode}")
        time.sleep(0.01)
    raise SystemExit(f"{path.stem} app: no {path.name} in {timeout:.0f} s")


def _sum_high(watcher: Consumer, parts: list[TopicPartition]) -> int:
    return sum(watcher.get_watermark_offsets(tp, timeout=5, cached=False)[1] for tp in parts)


def wait_answers(
    watcher: Consumer, outputs: list[TopicPartition], proc: subprocess.Popen[bytes], n: int
) -> int:
    """Until the output topic holds ``n`` messages (the sum of its high watermarks)."""
    deadline = time.monotonic() + 1800
    while (written := _sum_high(watcher, outputs)) < n:
        if proc.poll() is not None:
            raise SystemExit(f"app exited with {proc.returncode}: {proc.args}")
        if time.monotonic() > deadline:
            raise SystemExit(f"app wrote {written} of {n} answers: {proc.args}")
        time.sleep(0.02)
    return written


def wait_committed(group: Consumer, inputs: list[TopicPartition], n: int) -> float | None:
    """When the group's committed offsets reach ``n`` ops (None: not within 60 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        committed = group.committed(inputs, timeout=5)
        if sum(max(tp.offset, 0) for tp in committed) >= n:
            return time.monotonic()
        time.sleep(0.05)
    return None


def app_throughput(
    command: AppCommand,
    name: str,
    bootstrap: str,
    tmp: Path,
    ops_topic: str,
    n: int,
    partitions: int,
    check: bool,
) -> dict[str, Any]:
    """An app on the pre-written ops topic, timed from its first op until its output holds n
    answers; its CPU time over that span, per op. ``check``: read its output back too, and
    time its commit (quixstreams keeps state in memory until it commits)."""
    base = bench_settings(bootstrap, tmp / f"{name}-unused", partitions, 0)
    s = base.model_copy(
        update={"topics": base.topics.model_copy(update={"ops": ops_topic})}
    )  # the output (s.topics.snapshots) is created like dyno-stream's: compacted, 4 partitions
    ensure_topics(s)
    status = tmp / name
    proc = start_app(command(s, status), tmp / f"{name}.log")
    watcher = Consumer({**s.kafka.librdkafka(), "group.id": f"watch-{uuid.uuid4().hex}"})
    group = Consumer({**s.kafka.librdkafka(), "group.id": s.worker.group_id})
    outputs = [TopicPartition(s.topics.snapshots, p) for p in range(partitions)]
    try:
        t0 = wait_file(status.with_suffix(".first"), proc, 120)
        cpu0 = cpu_seconds([proc.pid])
        written = wait_answers(watcher, outputs, proc, n)
        t_done = time.monotonic()
        cpu = cpu_seconds([proc.pid]) - cpu0
        inputs = [TopicPartition(ops_topic, p) for p in range(partitions)]
        t_commit = wait_committed(group, inputs, n) if check else None
        rss = vm_status(proc.pid)["VmRSS"]
        back = read_back(s, s.topics.snapshots, partitions) if check else None
    finally:
        watcher.close()
        group.close()
        stop(proc)
    return {
        "ops": n,
        "seconds": t_done - t0,
        "ops_per_s": n / (t_done - t0),
        "cpu_us_per_op": cpu / n * 1e6,
        "snapshots": written,
        "read_back": back,
        "seconds_to_commit": None if t_commit is None else t_commit - t0,
        "ops_per_s_to_commit": None if t_commit is None else n / (t_commit - t0),
        "rss_bytes": rss,
    }


def quix_throughput(
    python: str, bootstrap: str, tmp: Path, ops_topic: str, n: int, partitions: int, validate: bool
) -> dict[str, Any]:
    """The quix app on the pre-written ops topic; done when its output holds n snapshots."""
    name = f"quix-{uuid.uuid4().hex[:6]}" + ("" if validate else "-plain")
    figures = app_throughput(
        quix_app(python, validate), name, bootstrap, tmp, ops_topic, n, partitions, validate
    )
    return {"validated": validate, **figures}


def floor_throughput(
    bootstrap: str, tmp: Path, ops_topic: str, n: int, partitions: int
) -> dict[str, Any]:
    """The floor on the pre-written ops topic; done when its output holds n answers."""
    name = f"floor-{uuid.uuid4().hex[:6]}"
    return app_throughput(floor_app, name, bootstrap, tmp, ops_topic, n, partitions, False)


def app_launch(command: AppCommand, name: str) -> Launch:
    """A harness ``Launch`` of an app, for the latency benchmark."""

    def launch(s: Settings, tmp: Path) -> Started:
        status = tmp / name
        proc = start_app(command(s, status), tmp / f"{name}.log")
        try:
            wait_file(status.with_suffix(".started"), proc, 120)
        except BaseException:
            stop(proc)
            raise
        return Started([proc])

    return launch


def find_quix_python(given: str | None) -> str | None:
    if given:  # absolute, not resolved: a venv's python is a symlink that must stay one
        return os.path.abspath(given)
    bench_venv = REPO / ".venv-bench" / "bin" / "python"
    if bench_venv.exists():
        return str(bench_venv)
    probe = subprocess.run([sys.executable, "-c", "import quixstreams"], capture_output=True)
    return sys.executable if probe.returncode == 0 else None


# -- report -------------------------------------------------------------------------------

#: One worker's full-speed median (ops/s) this benchmark measured before the work on the cost
#: per op: no later run may fall below it.
REFERENCE_OPS_PER_S = 102_759

#: The rates whose CPU per op is held to full speed's (the rates most deployments run at).
CPU_GOAL_RATES = (1000, 5000)


def goals(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the comparison, its figure and whether it was met (None: reported)."""
    return cost_goals(res) + latency_goals(res) + against_quix(res) + own_goals(res)


def goal(name: str, figure: str, met: bool | None) -> dict[str, Any]:
    return {"goal": name, "figure": figure, "met": met}


def cost_goals(res: dict[str, Any]) -> list[dict[str, Any]]:
    """dyno-stream's CPU per op at the low rates against its CPU per op at full speed; beside
    it the floor's own (reported): what a loop with nothing of ours in it pays at that rate."""
    full = res["dyno"]["one"]["cpu_us_per_op"]
    floor_full = ((res.get("floor") or {}).get("throughput") or {}).get("cpu_us_per_op")
    found = []
    for rate in CPU_GOAL_RATES:
        at = res.get("latency", {}).get(str(rate), {})
        if at.get("dyno"):
            cpu = at["dyno"]["cpu_us_per_op"]
            found.append(
                goal(
                    f"CPU per op at {rate:,} ops/s <= 2x at full speed",
                    f"{cpu:.1f} / {full:.1f} us = {cpu / full:.2f}x",
                    cpu / full <= 2,
                )
            )
        if at.get("floor") and floor_full:
            cpu = at["floor"]["cpu_us_per_op"]
            found.append(
                goal(
                    f"the floor's CPU per op at {rate:,} ops/s over its full speed's (reported)",
                    f"{cpu:.1f} / {floor_full:.1f} us = {cpu / floor_full:.2f}x",
                    None,
                )
            )
    return found


def latency_goals(res: dict[str, Any]) -> list[dict[str, Any]]:
    """dyno-stream's p99 at each rate against the floor's and against quixstreams'."""
    found = []
    for rate, at in res.get("latency", {}).items():
        dyno, floor, quix = at.get("dyno"), at.get("floor"), at.get("quix")
        if dyno and floor:
            x = dyno["p99_ms"] / floor["p99_ms"]
            found.append(
                goal(
                    f"p99 at {int(rate):,} ops/s <= 2x the floor's",
                    f"{dyno['p99_ms']:.1f} / {floor['p99_ms']:.1f} ms = {x:.2f}x",
                    x <= 2,
                )
            )
        if dyno and quix:
            found.append(
                goal(
                    f"p99 at {int(rate):,} ops/s <= quixstreams'",
                    f"{dyno['p99_ms']:.1f} vs {quix['p99_ms']:.1f} ms",
                    dyno["p99_ms"] <= quix["p99_ms"],
                )
            )
    return found


def against_quix(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Full speed against quixstreams', the same work, and runs long enough to count."""
    one = res["dyno"]["one"]
    found = []
    quix = res.get("quix") or {}
    if "validated" in quix:
        x = one["ops_per_s"] / quix["validated"]["ops_per_s"]
        runs = len(one["runs_ops_per_s"])
        found.append(goal(f"full speed >= 5x quixstreams' (median of {runs})", f"{x:.2f}x", x >= 5))
    if res.get("same_work"):
        same = all(c["same"] for c in res["same_work"])
        figure = "same" if same else "DIFFERENT (see same_work)"
        found.append(
            goal("the same work: ops, validation, newest snapshot of every item", figure, same)
        )
    if res.get("short_runs") is not None:
        found.append(
            goal(
                f"every throughput run >= {MIN_RUN_S:.0f} s",
                "; ".join(res["short_runs"]) or "all",
                not res["short_runs"],
            )
        )
    return found


def own_goals(res: dict[str, Any]) -> list[dict[str, Any]]:
    """dyno-stream's goals of its own: throughput, against the limits, scaling, memory."""
    dyno1 = res["dyno"]["one"]["ops_per_s"]
    consume = res["limits"]["consume_only"]["ops_per_s"]
    found = [
        goal(
            f"full speed, one worker >= {REFERENCE_OPS_PER_S:,} ops/s",
            f"{dyno1:,.0f}",
            dyno1 >= REFERENCE_OPS_PER_S,
        ),
        goal(
            ">= half the consume-only limit", f"{dyno1 / consume:.2f} of it", dyno1 >= consume / 2
        ),
    ]
    if res["dyno"].get("scaling"):
        found.append(
            goal("2 workers on 2 cores: scaling (reported)", f"{res['dyno']['scaling']:.2f}x", None)
        )
    mem = res.get("memory")
    if mem:
        found.append(
            goal(
                f"RSS bounded over {mem['items']:,} items",
                f"{mem['bytes_per_item_last_half']:.0f} B/item in the last half",
                mem["bounded"],
            )
        )
    return found


def print_report(res: dict[str, Any]) -> None:
    out.print(throughput_table(res))
    print_spreads(res)
    print_same_work(res)
    if res.get("latency"):
        out.print(latency_table(res))
    if res.get("memory"):
        print_memory(res["memory"])
    gt = Table(title="goals")
    gt.add_column("goal")
    gt.add_column("figure", justify="right")
    gt.add_column("")
    for g in res["goals"]:
        verdict = {True: "met", False: "[bold red]not met[/]", None: ""}[g["met"]]
        gt.add_row(g["goal"], g["figure"], verdict)
    out.print(gt)
    for when in ("start", "end"):
        out.print(f"busiest processes at the {when} (CPUs in use over 0.5 s):")
        for p in res["run"][f"busiest_{when}"]:
            out.print(f"  {p['cpu']:.2f}  {p['cmd']}", highlight=False, markup=False)


def throughput_table(res: dict[str, Any]) -> Table:
    """Each contender's and limit's ops/s at full speed, its CPU per op, and its runs."""
    run = res["run"]
    table = Table(
        title=f"full speed: {run['ops']:,} ops over {run['items']:,} items, "
        f"{run['partitions']} partitions, {os.cpu_count()} cores; load average "
        f"{run['load_start'][0]} at the start, {run['load_end'][0]} at the end"
    )
    table.add_column("contender")
    for col in ("ops/s", "x quixstreams", "x consume-only", "CPU us/op (spread)"):
        table.add_column(col, justify="right")
    table.add_column("runs, ops/s (load average)", justify="right")

    def row(label: str, fig: dict[str, Any] | None) -> None:
        if fig is not None:
            table.add_row(*row_cells(res, label, fig))

    row("dyno-stream, 1 worker", res["dyno"]["one"])
    row("dyno-stream, 2 workers", res["dyno"].get("two"))
    if res.get("quix"):
        row("quixstreams, validated", res["quix"].get("validated"))
        row("quixstreams, JSON only", res["quix"].get("plain"))
        v = res["quix"]["validated"]
        if v.get("ops_per_s_to_commit"):
            to_commit = f"{v['ops_per_s_to_commit']:,.0f}"
            table.add_row("  validated, to its commit", to_commit)
    row("floor: consume, answer", (res.get("floor") or {}).get("throughput"))
    lim = res["limits"]
    row("limit: consume only", lim["consume_only"])
    row("limit: produce only", lim["produce_only"])
    row("limit: plyvel write_batch", lim["plyvel"])
    row("limit: pydantic alone", lim["pydantic"])
    return table


def row_cells(res: dict[str, Any], label: str, fig: dict[str, Any]) -> list[str]:
    """One row of the throughput table: ops/s, against quixstreams and the consume-only
    limit, CPU per op, and the runs with their load."""
    quix = (res.get("quix") or {}).get("validated")
    consume = res["limits"]["consume_only"]["ops_per_s"]
    ops = fig["ops_per_s"]
    cpu = ""
    if "cpu_us_per_op" in fig:
        low, high = fig.get("spread_cpu_us_per_op") or [fig["cpu_us_per_op"]] * 2
        cpu = f"{fig['cpu_us_per_op']:.1f} ({low:.1f}-{high:.1f})"
    loads = fig.get("runs_load") or [None] * len(fig.get("runs_ops_per_s", []))
    runs = " ".join(
        f"{r / 1000:,.1f}k" + (f" ({ld[0]})" if ld else "")
        for r, ld in zip(fig.get("runs_ops_per_s", []), loads, strict=True)
    )
    return [
        label,
        f"{ops:,.0f}",
        f"{ops / quix['ops_per_s']:.2f}" if quix else "",
        f"{ops / consume:.2f}",
        cpu,
        runs,
    ]


LATENCY_LABELS = {"dyno": "dyno-stream, 1 worker", "quix": "quixstreams", "floor": "floor"}


def latency_table(res: dict[str, Any]) -> Table:
    """At each steady rate, each contender's medians: p50/p99/max, the p99 over the floor's,
    its CPU per op, with the spreads and each run's load."""
    table = Table(title="produce to visible at a steady rate: medians of the runs (spread)")
    for col in ("rate", "contender", "p50 / p99 / max ms", "p99 x floor", "p99 spread"):
        table.add_column(col, justify="right")
    for col in ("CPU us/op (spread)", "rate met", "runs: p99 ms (load average)"):
        table.add_column(col, justify="right")
    for rate, at in res["latency"].items():
        floor = at.get("floor")
        for key, label in LATENCY_LABELS.items():
            fig = at.get(key)
            if fig is None:
                continue
            p99s, cpus = fig["spread"]["p99_ms"], fig["spread"]["cpu_us_per_op"]
            table.add_row(
                f"{int(rate):,}",
                label,
                f"{fig['p50_ms']:.1f} / {fig['p99_ms']:.1f} / {fig['max_ms']:.0f}",
                f"{fig['p99_ms'] / floor['p99_ms']:.2f}x" if floor else "",
                f"{p99s[0]:.1f}-{p99s[1]:.1f}",
                f"{fig['cpu_us_per_op']:.1f} ({cpus[0]:.1f}-{cpus[1]:.1f})",
                f"{fig['rate']:,.0f}",
                " ".join(f"{r['p99_ms']:.0f} ({r['load'][0]})" for r in fig["runs"]),
            )
    return table


def print_spreads(res: dict[str, Any]) -> None:
    """The median run of each contender among its runs, and the runs too short to count."""
    quix = (res.get("quix") or {}).get("validated")
    floor = (res.get("floor") or {}).get("throughput")
    contenders = (("dyno-stream", res["dyno"]["one"]), ("quixstreams", quix), ("floor", floor))
    for label, fig in contenders:
        if fig and "spread_ops_per_s" in fig:
            low, high = fig["spread_ops_per_s"]
            out.print(
                f"{label}: median {fig['ops_per_s']:,.0f} ops/s of {len(fig['runs_ops_per_s'])} "
                f"runs, spread {low:,}-{high:,} ({(high - low) / fig['ops_per_s']:.0%}), "
                f"runs of {min(fig['runs_seconds'])}-{max(fig['runs_seconds'])} s"
            )
    if res.get("short_runs"):
        out.print(f"[bold red]runs shorter than {MIN_RUN_S:.0f} s:[/] {res['short_runs']}")


def print_same_work(res: dict[str, Any]) -> None:
    for i, check in enumerate(res.get("same_work", [])):
        verdict = "yes" if check["same"] else "[bold red]NO[/]"
        out.print(
            f"run {i + 1}, the same work: {verdict} "
            f"(ops {check['ops'][0]:,} / {check['ops'][1]:,}; dead letters "
            f"{check['dead_letters'][0]} / {check['dead_letters'][1]}; items "
            f"{check['items'][0]:,} / {check['items'][1]:,}, newest snapshot differing for "
            f"{check['items_differing']}) snapshots published {check['snapshots'][0]:,} / "
            f"{check['snapshots'][1]:,}, per item (min/median/max) "
            f"{check['snapshots_per_item_min_median_max'][0]} / "
            f"{check['snapshots_per_item_min_median_max'][1]}: dyno-stream / quixstreams",
            highlight=False,
        )


def print_memory(mem: dict[str, Any]) -> None:
    mt = Table(title=f"dyno-stream worker RSS, {mem['items']:,} distinct items")
    mt.add_column("items applied", justify="right")
    mt.add_column("RSS", justify="right")
    for point in mem["curve"]:
        mt.add_row(f"{point['items']:,}", f"{point['rss_bytes'] / 2**20:,.0f} MiB")
    mt.add_row("idle, 2 s after", f"{mem['rss_idle_after_bytes'] / 2**20:,.0f} MiB")
    out.print(mt)
    out.print(
        f"RSS grew {mem['bytes_per_item_first_quarter']:.0f} B/item over the first quarter, "
        f"{mem['bytes_per_item_last_half']:.0f} B/item over the last half; the workers' "
        f"state caches within {mem['state_cache_budget_bytes'] / 2**20:,.0f} MiB "
        f"({mem['items_per_s_while_written']:,.0f} items/s, written while it ran)"
    )


def plot(json_path: Path, png: Path, quix_python: str | None) -> None:
    """Draw the PNG with bench/plot_compare.py, with whichever Python has matplotlib."""
    script = str(BENCH / "plot_compare.py")
    for python in (sys.executable, quix_python):
        if python is None:
            continue
        probe = subprocess.run([python, "-c", "import matplotlib"], capture_output=True)
        if probe.returncode == 0:
            subprocess.run([python, script, str(json_path), str(png)], check=True)
            out.print(f"plot: {png}")
            return
    out.print("no matplotlib (pip install '.[bench]'): no plot drawn", markup=False)


# -- main ------------------------------------------------------------------------------------


def arguments() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--ops", type=int, help="ops in the throughput runs (1,000,000: >= 10 s each; quick 20,000)"
    )
    ap.add_argument("--items", type=int, default=1_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument(
        "--rates",
        default="1000,5000,10000",
        help="ops/s of the latency runs, comma-separated (quick: the first only)",
    )
    ap.add_argument("--latency-seconds", type=float, help="length of each latency run (10; 5)")
    ap.add_argument(
        "--memory-items", type=int, help="distinct items (1,000,000; 100,000; 0: no memory run)"
    )
    ap.add_argument(
        "--repeat",
        type=int,
        help="runs of each contender's throughput, alternated, median kept (5; 1)",
    )
    ap.add_argument(
        "--latency-repeat",
        type=int,
        help="runs of each contender at each rate, alternated, medians kept (5; 1)",
    )
    ap.add_argument(
        "--two-workers-repeat", type=int, help="runs of two dyno-stream workers (3; 1; 0: none)"
    )
    ap.add_argument(
        "--quix-plain",
        action=argparse.BooleanOptionalAction,
        help="one run of quixstreams without validation too (yes; quick: no)",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes, one run of each")
    ap.add_argument("--skip-quix", action="store_true")
    ap.add_argument("--quix-python", help="Python with quixstreams (default: .venv-bench's)")
    ap.add_argument("--bootstrap", help="a running broker (default: the local one, started)")
    ap.add_argument("--json", type=Path, default=RESULTS / "compare.json")
    ap.add_argument("--png", default=str(RESULTS / "compare.png"), help="'' for none")
    ap.add_argument("--report", type=Path, help="only print (and draw) this earlier JSON")
    return ap


def parse() -> argparse.Namespace:
    args = arguments().parse_args()
    if args.report:
        return args

    def pick(given: Any, quick: Any, full: Any) -> Any:
        return given if given is not None else quick if args.quick else full

    args.ops = pick(args.ops, 20_000, 1_000_000)
    args.repeat = pick(args.repeat, 1, 5)
    args.latency_repeat = pick(args.latency_repeat, 1, 5)
    args.two_workers_repeat = pick(args.two_workers_repeat, 1, 3)
    args.latency_seconds = pick(args.latency_seconds, 5.0, 10.0)
    args.quix_plain = pick(args.quix_plain, False, True)
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    args.rates = rates[:1] if args.quick else rates
    args.memory_items = pick(args.memory_items, 100_000, 1_000_000)
    args.quix_python = None if args.skip_quix else find_quix_python(args.quix_python)
    if not args.skip_quix and args.quix_python is None:
        raise SystemExit("quixstreams not found: run `make bench-compare`, or pass --skip-quix")
    return args


def run_header(args: argparse.Namespace) -> dict[str, Any]:
    """What was run, where, with which versions, and what else ran at the start."""
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "ops": args.ops,
        "items": args.items,
        "partitions": args.partitions,
        "rates": args.rates,
        "repeat": args.repeat,
        "latency_repeat": args.latency_repeat,
        "latency_seconds": args.latency_seconds,
        "two_workers_ops": args.ops * TWO_WORKER_SCALE,
        "two_workers_items": args.items * TWO_WORKER_SCALE,
        "quick": args.quick,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {
            "confluent_kafka": confluent_kafka.version(),  # a str, unlike libversion()
            "librdkafka": confluent_kafka.libversion()[0],
            "pydantic": pydantic.VERSION,
            "plyvel": plyvel.__version__,
            "quix_venv": quix_versions(args.quix_python) if args.quix_python else None,
        },
        "load_start": load(),
        "busiest_start": busiest(),
    }


class Comparison:
    """One comparison's runs on one broker, in one scratch directory, phase by phase."""

    def __init__(self, args: argparse.Namespace, bootstrap: str, tmp: Path) -> None:
        self.args, self.bootstrap, self.tmp = args, bootstrap, tmp
        self.quix_python: str | None = args.quix_python
        self.phase = Phases()
        self.payloads = make_payloads(args.ops, args.items)
        self._payloads_two: list[tuple[bytes, bytes]] = []
        self.shared = bench_settings(bootstrap, tmp / "shared", args.partitions, 0)

    def limits(self) -> dict[str, Any]:
        """The shared ops topic written, then each limit the best of three."""
        args, shared, payloads = self.args, self.shared, self.payloads
        ensure_topics(shared)
        with self.phase("writing the shared ops topic"):
            produce_all(shared, shared.topics.ops, payloads)
        with self.phase("limits"):
            to_produce = bench_settings(self.bootstrap, self.tmp / "produce", args.partitions, 0)
            return {
                "consume_only": best_of(lambda: limit_consume(shared, shared.topics.ops, args.ops)),
                "produce_only": best_of(lambda: limit_produce(to_produce, payloads)),
                "plyvel": best_of(lambda: limit_plyvel(self.tmp, payloads)),
                "pydantic": best_of(lambda: limit_pydantic(payloads)),
            }

    def payloads_two(self) -> list[tuple[bytes, bytes]]:
        """The two workers' workload, made once on first use."""
        if not self._payloads_two:
            args = self.args
            n, items = args.ops * TWO_WORKER_SCALE, args.items * TWO_WORKER_SCALE
            self._payloads_two = make_payloads(n, items, seed=2)
        return self._payloads_two

    def throughput_runs(self) -> dict[str, list[dict[str, Any]]]:
        """The contenders' runs alternate, so a change in what else runs on the machine falls
        on all of them alike; each figure is the median run."""
        args, quix_python = self.args, self.quix_python
        runs: dict[str, list[dict[str, Any]]] = {"one": [], "two": [], "quix": [], "floor": []}
        for rep in range(args.repeat):
            with self.phase(f"dyno-stream, 1 worker, run {rep + 1}"):
                runs["one"].append(
                    timed(
                        dyno_throughput, self.bootstrap, self.tmp, self.payloads, args.partitions,
                        1, check=bool(quix_python),
                    )
                )  # fmt: skip
            if quix_python:
                with self.phase(f"quixstreams, validated, run {rep + 1}"):
                    runs["quix"].append(timed(self.quix_run, True))
            with self.phase(f"floor, run {rep + 1}"):
                runs["floor"].append(
                    timed(
                        floor_throughput, self.bootstrap, self.tmp, self.shared.topics.ops,
                        args.ops, args.partitions,
                    )
                )  # fmt: skip
            if rep < args.two_workers_repeat:
                with self.phase(f"dyno-stream, 2 workers, run {rep + 1}"):
                    runs["two"].append(
                        timed(
                            dyno_throughput, self.bootstrap, self.tmp, self.payloads_two(),
                            args.partitions, 2,
                        )
                    )  # fmt: skip
        return runs

    def quix_run(self, validated: bool) -> dict[str, Any]:
        assert self.quix_python is not None
        a = self.args
        return quix_throughput(
            self.quix_python, self.bootstrap, self.tmp, self.shared.topics.ops, a.ops,
            a.partitions, validated,
        )  # fmt: skip

    def throughput(self, res: dict[str, Any]) -> None:
        """The throughput runs, the check of their work, and their medians, into ``res``."""
        runs = self.throughput_runs()
        if self.quix_python:
            res["same_work"] = [
                same_work(d, q) for d, q in zip(runs["one"], runs["quix"], strict=True)
            ]
            for r in runs["one"] + runs["quix"]:  # 1,000 items' values: checked, not kept
                if r.get("read_back"):
                    r["read_back"].pop("final")
        res["short_runs"] = [
            f"{who} run {i + 1}: {r['seconds']:.1f} s"
            for who, rs in runs.items()
            for i, r in enumerate(rs)
            if r["seconds"] < MIN_RUN_S and who != "floor"
        ]
        one = median_run(runs["one"])
        two = median_run(runs["two"]) if runs["two"] else None
        res["dyno"] = {
            "one": one,
            "two": two,
            "scaling": two["ops_per_s"] / one["ops_per_s"] if two else None,
        }
        res["floor"] = {"throughput": median_run(runs["floor"])}
        if self.quix_python:
            res["quix"] = {"validated": median_run(runs["quix"])}
            if self.args.quix_plain:
                with self.phase("quixstreams, JSON only"):
                    res["quix"]["plain"] = self.quix_run(False)

    def contenders(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(key, label, how bench_latency starts it) of each contender of the latency runs."""
        dyno = {"http_port": free_port()}
        found: list[tuple[str, str, dict[str, Any]]] = [("dyno", "dyno-stream", dyno)]
        if self.quix_python:
            launch = app_launch(quix_app(self.quix_python, True), "quix-lat")
            found.append(("quix", "quixstreams", {"launch": launch}))
        found.append(("floor", "floor", {"launch": app_launch(floor_app, "floor-lat")}))
        return found

    def latency(self) -> dict[str, Any]:
        """Each contender's latency and CPU per op at each rate, its runs alternated with the
        others' (dyno-stream, quixstreams, floor, dyno-stream, ...), the medians kept."""
        args = self.args
        found: dict[str, Any] = {}
        for rate in args.rates:
            runs: dict[str, list[dict[str, Any]]] = {}
            for rep in range(args.latency_repeat):
                for key, label, how in self.contenders():
                    where = subdir(self.tmp, f"lat-{key}-{rate}-{rep}")
                    with self.phase(f"latency at {rate:,} ops/s, {label}, run {rep + 1}"):
                        runs.setdefault(key, []).append(
                            timed(
                                bench_latency, self.bootstrap, where, rate, args.latency_seconds,
                                args.items, args.partitions, **how,
                            )
                        )  # fmt: skip
            found[str(rate)] = {key: median_latency(rs) for key, rs in runs.items()}
        return found

    def memory(self) -> dict[str, Any]:
        items = self.args.memory_items
        with self.phase(f"memory, {items:,} distinct items"):
            return dyno_memory(self.bootstrap, self.tmp, items, self.args.partitions)


def run(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"run": run_header(args)}
    with bench_broker(args.bootstrap) as bootstrap, scratch("dyno-compare-") as tmp:
        comparison = Comparison(args, bootstrap, tmp)
        res["limits"] = comparison.limits()
        comparison.throughput(res)
        res["latency"] = comparison.latency()
        if args.memory_items:
            res["memory"] = comparison.memory()
    res["run"]["load_end"] = load()
    res["run"]["busiest_end"] = busiest()
    res["run"]["phases"] = comparison.phase.log
    res["goals"] = goals(res)
    return res


def main() -> None:
    args = parse()
    if args.report:
        earlier = json.loads(args.report.read_text())
        earlier["goals"] = goals(earlier)  # held to the goals as this code states them
        print_report(earlier)
        if args.png:
            plot(args.report, Path(args.png), find_quix_python(args.quix_python))
        return
    res = run(args)
    print_report(res)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, res)
    out.print(f"results: {args.json}")
    if args.png:
        plot(args.json, Path(args.png), args.quix_python)


if __name__ == "__main__":
    main()
