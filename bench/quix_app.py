"""The quixstreams contender of bench/bench_compare.py: the same work, written as a quixstreams app.

What a user would write to keep materialized items from the ops topic with quixstreams:
one ``Application`` in a consumer group, at-least-once, a stateful ``apply`` that keeps each
item in the app's RocksDB state store (per partition, backed by a changelog topic), and the
item's snapshot produced to an output topic for every message. The op semantics are
dyno-stream's own (``dyno_stream.core.ops.apply_op``), so both contenders compute the same values.

- ``--validate`` (the default): the value is read as bytes and validated with the same
  pydantic model as the worker (``dyno_stream.core.events.parse_event``), as dyno-stream does;
- ``--no-validate``: quixstreams' own JSON deserializer (orjson), no validation at all.

Each snapshot is ``{"item", "value", "timestamp", "changes"}`` keyed by the item name, so the
latency benchmark reads both contenders' snapshots alike. quixstreams' defaults are kept
(commit every 5 s, its producer's defaults): this is the app as a user would first write it.

The app writes ``<status>.started`` when it enters its run loop and ``<status>.first`` (the
``time.monotonic()`` of the moment, comparable across processes on Linux) when it has
processed its first message. The harness knows it is done from the output topic (see
bench_compare.py). Runs in the benchmark's own virtualenv (``.venv-bench``), because
quixstreams pins older confluent-kafka and pydantic than dyno-stream's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from quixstreams import Application, State

from dyno_stream.core.events import Flatten, parse_event
from dyno_stream.core.ops import apply_op


def _empty() -> dict[str, Any]:
    return {"value": {}, "timestamp": None, "changes": 0}


def apply_validated(raw: bytes, state: State) -> dict[str, Any]:
    """One op, validated with dyno-stream's model, applied to the item kept in state."""
    event = parse_event(raw)
    if isinstance(event, Flatten):  # no history here to fold: nothing changes
        cur = state.get("item") or _empty()
        return {"item": event.item, **cur}
    return _apply(state, event.item, event.op, event.change_value, event.ts)


def apply_plain(event: dict[str, Any], state: State) -> dict[str, Any]:
    """One op as quixstreams' JSON deserializer gives it, without validation."""
    return _apply(state, event["item"], event["op"], event["change"], event["ts"])


def _apply(state: State, item: str, op: str, change: Any, ts: str) -> dict[str, Any]:
    cur = state.get("item") or _empty()  # a fresh copy: the state store keeps it serialized
    cur["value"] = apply_op(cur["value"], op, change)
    cur["timestamp"] = ts
    cur["changes"] += 1
    state.set("item", cur)
    return {"item": item, **cur}


def _touch(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", help="Kafka bootstrap servers")
    ap.add_argument("--input", help="the ops topic")
    ap.add_argument("--output", help="the snapshot topic")
    ap.add_argument("--group", help="consumer group")
    ap.add_argument("--state-dir", type=Path)
    ap.add_argument("--status", type=Path, help="prefix of the status files")
    ap.add_argument("--validate", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--versions", action="store_true", help="print library versions, exit")
    args = ap.parse_args()
    if args.versions:
        import confluent_kafka
        import pydantic
        import quixstreams

        print(
            json.dumps(
                {
                    "quixstreams": quixstreams.__version__,
                    "confluent_kafka": confluent_kafka.version(),  # a str, unlike libversion()
                    "librdkafka": confluent_kafka.libversion()[0],
                    "pydantic": pydantic.VERSION,
                }
            )
        )
        return

    first = [True]

    def on_processed(_topic: str, _partition: int, _offset: int) -> None:
        if first[0]:
            first[0] = False
            _touch(args.status.with_suffix(".first"), repr(time.monotonic()))

    logging.getLogger("quixstreams").setLevel(logging.WARNING)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        state_dir=args.state_dir,
        loglevel="WARNING",
        on_message_processed=on_processed,
    )
    source = app.topic(args.input, value_deserializer="bytes" if args.validate else "json")
    output = app.topic(args.output, value_serializer="json", key_serializer="bytes")
    sdf = app.dataframe(source)
    sdf = sdf.apply(apply_validated if args.validate else apply_plain, stateful=True)
    sdf.to_topic(output)
    _touch(args.status.with_suffix(".started"), repr(time.monotonic()))
    app.run()


if __name__ == "__main__":
    main()
