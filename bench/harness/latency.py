"""Produce-to-snapshot latency of a running system under test, at a steady rate."""

from __future__ import annotations

import gc
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, Producer

from dyno_stream.config import Settings, producer_config
from dyno_stream.core.flake import FlakeGenerator
from dyno_stream.kafka.topics import ensure_topics
from harness.machine import cpu_seconds
from harness.settings import bench_settings
from harness.workers import Launch, launch_worker
from harness.workload import op_event


@dataclass
class Tally:
    """The ops sent and the snapshots seen so far, and the latencies they make."""

    #: item -> (op index, send time) of each op sent to it
    sent: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    #: item -> the highest ``changes`` seen in its snapshots
    seen: dict[str, int] = field(default_factory=dict)
    #: (op index, seconds from send to the first snapshot that includes it)
    latencies: list[tuple[int, float]] = field(default_factory=list)
    #: the index of the first op counted (those before are the warm-up)
    counted_from: int = 0
    #: the CPU seconds the system under test has used so far
    cpu_probe: Callable[[], float] = lambda: 0.0
    #: its CPU seconds when the first op counted was sent and once the last was answered
    cpu: list[float] = field(default_factory=list)


#: Reads snapshots for up to ``timeout`` seconds into the tally; a caller may wrap it.
Drain = Callable[[Consumer, Tally, float], None]


def drain(consumer: Consumer, tally: Tally, timeout: float) -> None:
    """Read the snapshots there are (waiting up to ``timeout`` for the first): each op of an
    item up to its snapshot's ``changes`` gets its latency."""
    msg = consumer.poll(timeout)
    now = time.monotonic()
    while msg is not None:
        if not msg.error():
            snap = json.loads(msg.value())
            name, changes = snap["item"], snap["changes"]
            times = tally.sent.get(name, [])
            for k in range(tally.seen.get(name, 0), min(changes, len(times))):
                i, sent_at = times[k]
                tally.latencies.append((i, now - sent_at))
            tally.seen[name] = max(tally.seen.get(name, 0), changes)
        msg = consumer.poll(0)


def bench_latency(
    bootstrap: str,
    tmp: Path,
    rate: int,
    seconds: float,
    items: int,
    partitions: int,
    launch: Launch = launch_worker,
    http_port: int | None = None,
    warmup_s: float = 2.0,
    drain: Drain = drain,
) -> dict[str, float]:
    """Produce-to-snapshot latency of what ``launch`` starts (a dyno worker by default), and
    the CPU its processes use per op counted (``cpu_us_per_op``).

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
    total = int(rate * (seconds + warmup_s))
    tally = Tally(counted_from=int(rate * warmup_s), cpu_probe=lambda: cpu_seconds(stop_it.pids))
    try:
        consumer.subscribe([s.topics.snapshots])
        producer = Producer(producer_config(s))  # as DynoClient sends: linger.ms=2
        gen = FlakeGenerator(node=8, pid=8)
        _warm_up(s, consumer, producer, gen)
        achieved = _steady_load(s, consumer, producer, gen, rate, total, items, tally, drain)
    finally:
        gc.enable()
        consumer.close()
        stop_it()
    return _figures(tally, total, achieved)


def _warm_up(s: Settings, consumer: Consumer, producer: Producer, gen: FlakeGenerator) -> None:
    """The first op pays for metadata look-ups and the group join. Until this consumer has
    joined, it reads from "latest" and misses snapshots: send again until one is seen. The
    warm-up item is not one of the workload's, whose counts it would shift."""
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


def _steady_load(
    s: Settings,
    consumer: Consumer,
    producer: Producer,
    gen: FlakeGenerator,
    rate: int,
    total: int,
    items: int,
    tally: Tally,
    drain: Drain,
) -> float:
    """Send ``total`` ops at ``rate``, reading snapshots between sends; return the rate met."""
    rnd = random.Random(2)
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
            if i == tally.counted_from:
                tally.cpu.append(tally.cpu_probe())
            name, value = op_event(rnd, gen, items)
            tally.sent.setdefault(name, []).append((i, time.monotonic()))
            producer.produce(s.topics.ops, value, name.encode())
            i += 1
        producer.poll(0)
        drain(consumer, tally, max(0.001, start + i / rate - time.monotonic()))
    now = time.monotonic()
    producer.flush(30)
    deadline = time.monotonic() + 30
    while len(tally.latencies) < total and time.monotonic() < deadline:
        drain(consumer, tally, 0.1)
    tally.cpu.append(tally.cpu_probe())
    return total / (now - start)


def _figures(tally: Tally, total: int, achieved: float) -> dict[str, float]:
    """p50, p99 and max of the ops counted, and the CPU per op they cost (in microseconds)."""
    counted_from = tally.counted_from
    measured = sorted(lat for i, lat in tally.latencies if i >= counted_from)

    def pct(p: float) -> float:
        return measured[min(len(measured) - 1, int(p * len(measured)))] * 1000

    return {
        "ops": total - counted_from,
        "measured": len(measured),
        "rate": achieved,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": measured[-1] * 1000,
        "cpu_us_per_op": (tally.cpu[-1] - tally.cpu[0]) / (total - counted_from) * 1e6,
    }
