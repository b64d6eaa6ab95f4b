"""Worker benchmarks on the local broker (issue: the stream worker). Prints a table.

1. Throughput: N ops over 1,000 items (changes of about 100 bytes, snapshots on) are produced
   first; then one worker process (``dyno-stream worker``, a real subprocess) is started and
   timed from its first consumed event until every event is applied and every snapshot of the
   last batch is acknowledged (read from its /metrics).
2. Latency: ops produced at a steady 5,000 ops/s while the worker runs; for each op, the time
   from its send to the first snapshot of its item that includes it (``changes`` >= its rank).

Run: ``make bench`` (starts the broker if needed) or ``python bench/bench_worker.py``.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import random
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from rich.console import Console
from rich.table import Table

from dyno_stream.cli.demo import start_worker
from dyno_stream.config import Settings, load_settings, producer_config
from dyno_stream.core.flake import FlakeGenerator
from dyno_stream.devtools.broker import LocalBroker
from dyno_stream.kafka.topics import ensure_topics

HTTP_PORT = 9484

#: Starts the system under test on these settings (its output is ``s.topics.snapshots``),
#: waits until it is ready, and returns the function that stops it.
Launch = Callable[[Settings, Path], Callable[[], None]]


#: (bootstrap, tag) of every ``bench_settings`` of this process: their topics go at exit
_TAGS: list[tuple[str, str]] = []


def delete_bench_topics() -> None:
    """Delete the topics this run's settings named, and quixstreams' changelogs of its groups.

    Every run makes new topics; left behind, a few dozen runs kept 9 GB and 1,600 partitions
    on the local broker.
    """
    for bootstrap in {b for b, _ in _TAGS}:
        tags = [f"bench-{t}" for b, t in _TAGS if b == bootstrap]
        try:
            admin = AdminClient({"bootstrap.servers": bootstrap})
            doomed = [n for n in admin.list_topics(timeout=10).topics if any(t in n for t in tags)]
            for future in (
                admin.delete_topics(doomed, operation_timeout=30).values() if doomed else ()
            ):
                future.result(30)
        except KafkaException as exc:  # the broker may be gone already: say so, go on
            print(f"bench topics on {bootstrap} not deleted: {exc}")
    _TAGS.clear()


def bench_settings(
    bootstrap: str, data_dir: Path, partitions: int, http_port: int = HTTP_PORT
) -> Settings:
    base = load_settings()
    tag = uuid.uuid4().hex[:6]
    if not _TAGS:
        atexit.register(delete_bench_topics)
    _TAGS.append((bootstrap, tag))
    return base.model_copy(
        update={
            "kafka": base.kafka.model_copy(update={"bootstrap_servers": bootstrap}),
            "topics": base.topics.model_copy(
                update={
                    "ops": f"bench-{tag}.ops",
                    "snapshots": f"bench-{tag}.snapshots",
                    "dead_letter": f"bench-{tag}.dead-letter",
                    "partitions": partitions,
                }
            ),
            "worker": base.worker.model_copy(
                update={
                    "group_id": f"bench-{tag}",
                    "data_dir": data_dir,
                    "http_port": http_port,
                    "log_level": "WARNING",
                }
            ),
        }
    )


def op_event(rnd: random.Random, gen: FlakeGenerator, items: int) -> tuple[str, bytes]:
    """One op of about 100 bytes of change."""
    name = f"user-{rnd.randrange(items):05d}"
    kind = rnd.randrange(4)
    if kind == 0:
        change: Any = {
            "email": f"{name}@example.com",
            "city": "Wellington",
            "plan": "pro",
            "n": rnd.randrange(10**6),
            "note": "x" * 20,
        }
        op = "putAttrs"
    elif kind == 1:
        change, op = {"field": "visits", "by": 1}, "incAttrBy"
    elif kind == 2:
        change, op = {"field": "log", "str": "event;"}, "append"
    else:
        change, op = {"field": "tags", "value": f"tag-{rnd.randrange(20)}"}, "addToSet"
    ev = {"item": name, "op": op, "ts": gen(), "change": change}
    return name, json.dumps(ev, separators=(",", ":")).encode()


def metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=2) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        base = key.split("{")[0]
        out[base] = out.get(base, 0.0) + float(value)
    return out


def wait_metrics(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited with {proc.returncode}")
        try:
            metrics(url)
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("worker did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def make_payloads(n: int, items: int, seed: int = 1) -> list[tuple[bytes, bytes]]:
    """``n`` ops of the workload as (Kafka key, value): the same ops for the same seed."""
    rnd, gen = random.Random(seed), FlakeGenerator(node=7, pid=7)
    out = []
    for _ in range(n):
        name, value = op_event(rnd, gen, items)
        out.append((name.encode(), value))
    return out


def produce_all(
    s: Settings,
    topic: str,
    payloads: Iterable[tuple[bytes, bytes]],
    conf: dict[str, Any] | None = None,
) -> float:
    """Produce every payload and wait for the acknowledgements; return the seconds it took.

    The producer is the worker's (``producer_config``) with ``conf`` on top; by default with
    large batches (``linger.ms`` 20), as the workload is written up front, as fast as the
    broker takes it, before the system under test starts.
    """
    extra = {"linger.ms": 20, "batch.size": 1_000_000} if conf is None else conf
    producer = Producer({**producer_config(s), **extra})
    t0 = time.perf_counter()
    for key, value in payloads:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
    left = producer.flush(120)
    if left:
        raise SystemExit(f"{left} ops not acknowledged by the broker")
    return time.perf_counter() - t0


def time_until_applied(
    urls: list[str], procs: list[subprocess.Popen[bytes]], n: int, timeout: float = 600
) -> tuple[float, float, dict[str, float]]:
    """Watch workers' /metrics until ``n`` ops are applied and their snapshots acknowledged.

    Returns the moment the first event was consumed, the moment all were done, and the
    workers' metrics summed. Done is every op applied and no batch in flight: every
    snapshot acknowledged by Kafka, the end of the whole pipeline.
    """
    t0 = None
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"worker exited with {proc.returncode}")
        m = _summed([metrics(u) for u in urls])
        if t0 is None and m.get("dyno_events_consumed_total", 0) > 0:
            t0 = time.monotonic()
        if m.get("dyno_ops_applied_total", 0) >= n and m.get("dyno_batches_in_flight") == 0:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"workers applied {m.get('dyno_ops_applied_total', 0):.0f} of {n}")
        time.sleep(0.02)
    t1 = time.monotonic()
    assert t0 is not None
    return t0, t1, _summed([metrics(u) for u in urls])


def _summed(ms: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in ms:
        for k, v in m.items():
            out[k] = out.get(k, 0.0) + v
    return out


def bench_throughput(
    bootstrap: str, tmp: Path, n: int, items: int, partitions: int
) -> dict[str, float]:
    s = bench_settings(bootstrap, tmp / "tp-data", partitions)
    ensure_topics(s)
    produce_all(s, s.topics.ops, make_payloads(n, items))
    url = f"http://127.0.0.1:{s.worker.http_port}"
    proc = start_worker(s, tmp / "tp-worker.log")
    try:
        wait_metrics(url, proc)
        t0, t1, m = time_until_applied([url], [proc], n)
    finally:
        stop(proc)
    return {
        "ops": n,
        "seconds": t1 - t0,
        "ops_per_s": n / (t1 - t0),
        "snapshots": m.get("dyno_snapshots_published_total", 0),
        "batches": m.get("dyno_batch_seconds_count", 0),
    }


def launch_worker(s: Settings, tmp: Path) -> Callable[[], None]:
    """A ``Launch`` of one ``dyno-stream worker`` process."""
    proc = start_worker(s, tmp / "lat-worker.log")
    try:
        wait_metrics(f"http://127.0.0.1:{s.worker.http_port}", proc)
    except BaseException:
        stop(proc)
        raise
    return lambda: stop(proc)


def bench_latency(
    bootstrap: str,
    tmp: Path,
    rate: int,
    seconds: float,
    items: int,
    partitions: int,
    launch: Launch = launch_worker,
    http_port: int = HTTP_PORT,
    warmup_s: float = 2.0,
) -> dict[str, float]:
    """Produce-to-snapshot latency of what ``launch`` starts (a dyno worker by default).

    Whatever runs must publish, for each op, a snapshot holding ``item`` and ``changes`` (the
    number of ops the item has seen) on ``s.topics.snapshots``. The load runs ``warmup_s``
    longer than ``seconds``, and the ops of that first part are not counted: the first
    quarter second after a start saw up to 250 ms (a new client's first requests to each
    partition), the steady state is what the figure is about.
    """
    s = bench_settings(bootstrap, tmp / "lat-data", partitions, http_port)
    ensure_topics(s)
    stop_it = launch(s, tmp)
    consumer = Consumer(
        {
            **s.kafka.librdkafka(),
            "group.id": f"lat-{uuid.uuid4().hex}",
            "auto.offset.reset": "latest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([s.topics.snapshots])
        producer = Producer(producer_config(s))  # as DynoClient sends: linger.ms=2
        rnd, gen = random.Random(2), FlakeGenerator(node=8, pid=8)
        # warm up: the first op pays for metadata look-ups and the group join. Until this
        # consumer has joined, it reads from "latest" and misses snapshots: send again until
        # one is seen. The warm-up item is not one of the workload's, whose counts it would
        # shift.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ev = {"item": "warm-up", "op": "putAttrs", "ts": gen(), "change": {"warm": 1}}
            producer.produce(s.topics.ops, json.dumps(ev).encode(), b"warm-up")
            producer.flush(30)
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error():
                break
        else:
            raise SystemExit("no snapshot of the warm-up op in 60 s")
        while consumer.poll(0.2) is not None:  # the other warm-up snapshots
            pass
        sent: dict[str, list[tuple[int, float]]] = {}  # item -> (op index, send time)
        total = int(rate * (seconds + warmup_s))
        counted_from = int(rate * warmup_s)  # ops before this index are the warm-up
        latencies: list[tuple[int, float]] = []  # (op index, seconds)
        seen: dict[str, int] = {}
        gc.disable()  # the harness's own collections must not count as the worker's latency
        start = time.monotonic()
        i = 0
        while i < total:
            # Send every op that is due by now, each stamped with its own send time, then
            # wait for the next one by polling the snapshot consumer. A wait shorter than
            # librdkafka's 1 ms granularity would poll without waiting: a busy loop that
            # took the harness half a core and starved the worker it measures.
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            while i < due:
                name, value = op_event(rnd, gen, items)
                sent.setdefault(name, []).append((i, time.monotonic()))
                producer.produce(s.topics.ops, value, name.encode())
                i += 1
            producer.poll(0)
            _drain(consumer, sent, seen, latencies, max(0.001, start + i / rate - time.monotonic()))
        now = time.monotonic()
        producer.flush(30)
        deadline = time.monotonic() + 30
        while len(latencies) < total and time.monotonic() < deadline:
            _drain(consumer, sent, seen, latencies, 0.1)
        achieved = total / (now - start)
    finally:
        gc.enable()
        consumer.close()
        stop_it()
    measured = sorted(lat for i, lat in latencies if i >= counted_from)
    total -= counted_from

    def pct(p: float) -> float:
        return measured[min(len(measured) - 1, int(p * len(measured)))] * 1000

    return {
        "ops": total,
        "measured": len(measured),
        "rate": achieved,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": measured[-1] * 1000,
    }


def _drain(
    consumer: Consumer,
    sent: dict[str, list[tuple[int, float]]],
    seen: dict[str, int],
    latencies: list[tuple[int, float]],
    timeout: float,
) -> None:
    msg = consumer.poll(timeout)
    now = time.monotonic()
    while msg is not None:
        if not msg.error():
            snap = json.loads(msg.value())
            name, changes = snap["item"], snap["changes"]
            times = sent.get(name, [])
            for k in range(seen.get(name, 0), min(changes, len(times))):
                i, sent_at = times[k]
                latencies.append((i, now - sent_at))
            seen[name] = max(seen.get(name, 0), changes)
        msg = consumer.poll(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ops", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=1_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rate", type=int, default=5_000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    broker = LocalBroker()
    started = not broker.is_running()
    bootstrap = broker.start()
    tmp = Path(tempfile.mkdtemp(prefix="dyno-bench-"))
    try:
        tp = bench_throughput(bootstrap, tmp, args.ops, args.items, args.partitions)
        lat = bench_latency(bootstrap, tmp, args.rate, args.seconds, args.items, args.partitions)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        delete_bench_topics()  # while the broker still runs
        if started:
            broker.stop()
    table = Table(
        title=f"dyno-stream worker (1 process, {args.partitions} partitions, "
        f"{args.items:,} items, snapshots on)"
    )
    table.add_column("benchmark")
    table.add_column("figure", justify="right")
    table.add_column("target", justify="right")
    table.add_row(
        f"throughput, {tp['ops']:,} ops", f"{tp['ops_per_s']:,.0f} ops/s", ">= 50,000 ops/s"
    )
    table.add_row("  batches / snapshots", f"{tp['batches']:,.0f} / {tp['snapshots']:,.0f}", "")
    table.add_row(f"latency at {lat['rate']:,.0f} ops/s, p50", f"{lat['p50_ms']:.1f} ms", "")
    table.add_row(
        f"latency at {lat['rate']:,.0f} ops/s, p99", f"{lat['p99_ms']:.1f} ms", "< 100 ms"
    )
    table.add_row("  ops measured / max", f"{lat['measured']:,.0f} / {lat['max_ms']:.0f} ms", "")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({"throughput": tp, "latency": lat}, indent=2))


if __name__ == "__main__":
    main()
