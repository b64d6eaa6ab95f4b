"""The ops the benchmarks produce, and producing them."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from confluent_kafka import Producer

from dyno_stream.config import Settings, producer_config
from dyno_stream.core.flake import FlakeGenerator


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


def make_payloads(n: int, items: int, seed: int = 1) -> list[tuple[bytes, bytes]]:
    """``n`` ops of the workload as (Kafka key, value): the same ops for the same seed."""
    rnd, gen = random.Random(seed), FlakeGenerator(node=7, pid=7)
    out = []
    for _ in range(n):
        name, value = op_event(rnd, gen, items)
        out.append((name.encode(), value))
    return out


def distinct_puts(n: int) -> Iterator[tuple[bytes, bytes]]:
    """``n`` putAttrs to ``n`` distinct items (about 100 bytes of change each)."""
    gen = FlakeGenerator(node=9, pid=9)
    for i in range(n):
        name = f"mem-{i:07d}"
        change = {
            "email": f"{name}@example.com",
            "city": "Wellington",
            "plan": "pro",
            "n": i,
            "note": "x" * 20,
        }
        ev = {"item": name, "op": "putAttrs", "ts": gen(), "change": change}
        yield name.encode(), orjson.dumps(ev)


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
