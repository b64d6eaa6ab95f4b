"""The floor contender of bench/bench_compare.py: a plain confluent-kafka loop, nothing of ours.

It consumes each op and produces one small message back to the output topic, keyed by the
op's key (the item): ``{"item": ..., "changes": n}``, n the count of ops of that item it has
seen, so that the latency benchmark reads its answers as it reads the contenders' snapshots.
No validation, no store, no JSON parsed: what it costs to take an op off Kafka and put an
answer back on it on this machine, in one Python process. The floor of every contender's
CPU per op and produce-to-visible latency.

Its clients keep librdkafka's defaults (a group of its own, auto-commit, acks=all) but for
``linger.ms=2``, which the worker's producer and the benchmark's own client use too.

Like bench/quix_app.py it writes ``<status>.started`` before its loop and ``<status>.first``
(``time.monotonic()``, comparable across processes on Linux) once it has answered its first
op. SIGTERM ends the loop; the answers queued are flushed first.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path
from types import FrameType

from confluent_kafka import Consumer, Message, Producer


def _touch(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    ap.add_argument("--input", required=True, help="the ops topic")
    ap.add_argument("--output", required=True, help="the topic of the answers")
    ap.add_argument("--group", required=True, help="consumer group")
    ap.add_argument("--status", type=Path, required=True, help="prefix of the status files")
    return ap.parse_args()


def take(consumer: Consumer) -> list[Message]:
    """The ops there are, up to 1,000, waiting up to 0.1 s for the first only: ``consume(n,
    timeout)`` alone would wait for n messages or the whole timeout, at a low rate a wait
    per batch that is no part of a floor."""
    first = consumer.poll(0.1)
    if first is None:
        return []
    return [first, *consumer.consume(999, 0)]


def answer_all(consumer: Consumer, producer: Producer, output: str, status: Path) -> None:
    """Until SIGTERM: each op consumed is answered by one message to ``output``."""
    running = [True]

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        running[0] = False

    signal.signal(signal.SIGTERM, on_term)
    counts: dict[bytes, int] = {}
    first = True
    while running[0]:
        for msg in take(consumer):
            if msg.error():
                continue
            key = msg.key() or b""
            n = counts.get(key, 0) + 1
            counts[key] = n
            value = b'{"item":"%s","changes":%d}' % (key, n)
            while True:
                try:
                    producer.produce(output, value, key)
                    break
                except BufferError:  # its queue is full: let it send
                    producer.poll(0.05)
            if first:
                first = False
                _touch(status.with_suffix(".first"), repr(time.monotonic()))
        producer.poll(0)


def main() -> None:
    args = parse()
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
        }
    )
    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 2})
    consumer.subscribe([args.input])
    _touch(args.status.with_suffix(".started"), repr(time.monotonic()))
    try:
        answer_all(consumer, producer, args.output, args.status)
    finally:
        producer.flush(30)
        consumer.close()


if __name__ == "__main__":
    main()
