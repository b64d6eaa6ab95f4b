"""The copying phases of ``repartition``: each item's newest snapshot read from the old topic
and copied into the new one, then every op no copied snapshot holds forwarded to the new ops
topic. Both resume from the state file after a crash."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer

from dyno_stream.config import Settings, producer_config
from dyno_stream.core import ops
from dyno_stream.core.errors import PublishError
from dyno_stream.core.snapshots import tombstone_headers, tombstone_snapshot
from dyno_stream.jobs.progress import Reporter
from dyno_stream.jobs.repartition_state import State
from dyno_stream.kafka.partitioning import rule_partition, snapshot_partition
from dyno_stream.kafka.reading import read_range, topic_reader, watermarks
from dyno_stream.kafka.topics import SnapshotPartitioning

log = logging.getLogger("dyno_stream.jobs.repartition")

#: The key of the message that proves the fence holds (skipped if it ever got through).
PROBE_KEY = b"\x00dyno-repartition-probe"
#: Forwarded ops between two flushes and cursor saves in the state file.
_CHUNK = 5_000
#: A fault hook for the tests: ``<phase>:<n>`` SIGKILLs the process after n items copied
#: (``copy``) or n ops forwarded (``forward``), the way a crash would stop it.
_KILL_ENV = "DYNO_REPARTITION_KILL_AFTER"


def kill_point(phase: str) -> int | None:
    spec = os.environ.get(_KILL_ENV, "")
    name, _, n = spec.partition(":")
    return int(n) if name == phase and n else None


def watermark_ends(
    consumer: Consumer, topic: str, partitions: int
) -> tuple[dict[int, int], dict[int, int]]:
    """The low and high watermarks of the topic's first ``partitions`` partitions."""
    marks = watermarks(consumer, topic)
    return (
        {p: marks[p][0] for p in range(partitions)},
        {p: marks[p][1] for p in range(partitions)},
    )


@dataclass(slots=True)
class Newest:
    """An item's newest snapshot in the old topic: what decides, and its bytes."""

    changes: int
    count: int
    partition: int
    offset: int
    raw: bytes
    #: a tombstone's (``raw`` is then its deleted item's snapshot, value null)
    deleted: bool = False


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:  # NaN and the like, which Python's json takes
        return json.loads(raw)


def read_snapshots(
    settings: Settings, state: State, reporter: Reporter | None
) -> dict[bytes, Newest]:
    """Each item's newest snapshot of the old ops topic, up to the ends noted by ``_drain``
    (the ends now, for a dry run)."""
    consumer = topic_reader(settings, "repartition")
    topic = state.old_snapshots
    try:
        meta = consumer.list_topics(timeout=30).topics.get(topic)
        if meta is None or meta.error is not None:
            return {}
        lows, highs = watermark_ends(consumer, topic, len(meta.partitions))
        ends = state.snapshot_ends or highs
        ranges = {p: (lows[p], hi) for p, hi in ends.items()}
        newest: dict[bytes, Newest] = {}
        total = sum(max(0, hi - lo) for lo, hi in ranges.values())
        task = (
            reporter.task("reading the snapshots", total)
            if reporter
            else contextlib.nullcontext(lambda n: None)
        )
        with task as advance:
            for msgs in read_range(consumer, topic, ranges):
                for msg in msgs:
                    raw = msg.value()
                    deleted = raw is None
                    if raw is None:  # a tombstone: its item deleted at an op's offset
                        tomb = tombstone_snapshot(msg.key(), msg.headers())
                        if tomb is None:  # not a worker's: its key's snapshot is gone
                            newest.pop(msg.key() or b"", None)
                            continue
                        raw = orjson.dumps(tomb)
                    snap = _snapshot_fields(raw, state.old_ops)
                    if snap is None:
                        continue
                    key = snap[0]
                    held = newest.get(key)
                    changes, count = snap[1], snap[2]
                    if (
                        held is None
                        or changes > held.changes
                        or (changes == held.changes and count < held.count)
                    ):
                        newest[key] = Newest(changes, count, snap[3], snap[4], raw, deleted)
                advance(len(msgs))
        return newest
    finally:
        consumer.close()


def _snapshot_fields(raw: bytes | None, ops_topic: str) -> tuple[bytes, int, int, int, int] | None:
    if raw is None:
        return None
    try:
        d = _loads(raw)
        src = d["source"]
        if src["topic"] != ops_topic:
            return None
        return (
            d["item"].encode(),
            int(d["changes"]),
            int(d["count"]),
            int(src["partition"]),
            int(src["offset"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("skipping a message of %s that is not a snapshot", ops_topic)
        return None


def _producer(settings: Settings) -> Producer:
    return Producer({**producer_config(settings), "linger.ms": 20})


def _flush(producer: Producer, errors: list[str]) -> None:
    while producer.flush(30):
        log.warning("waiting for Kafka to acknowledge the messages sent")
    if errors:
        raise PublishError(f"{len(errors)} messages refused: {'; '.join(errors[:3])}")


def copy_snapshots(
    settings: Settings,
    state: State,
    newest: dict[bytes, Newest],
    reporter: Reporter,
    placing: SnapshotPartitioning,
) -> int:
    """Each item's newest snapshot into the new snapshot topic, its source pointing at the
    start of the new ops topic at its key's partition there; the snapshot goes to that same
    partition of the new snapshot topic (co-partitioned, as ``ensure_topics`` makes it;
    by key hash in one that exists with another count)."""
    producer = _producer(settings)
    errors: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(str(err))

    kill_at = kill_point("copy")
    n = state.partitions
    snapshot_count = placing.snapshot_partitions or n
    with reporter.task(f"copying snapshots to {state.new_snapshots}", len(newest)) as advance:
        for i, (key, snap) in enumerate(newest.items(), 1):
            q = rule_partition(key, n, settings.kafka.partitioner)
            d = _loads(snap.raw)
            d["source"] = {"topic": state.new_ops, "partition": q, "offset": -1}
            to = snapshot_partition(key, q, snapshot_count, placing.co_partitioned)
            value: bytes | None = None
            headers: list[tuple[str, str | bytes | None]] | None = None
            if snap.deleted:  # a tombstone again, so no restore brings it back
                headers = list(
                    tombstone_headers(
                        d["timestamp"], d["changes"], d["hash"], d["count"], state.new_ops, q, -1
                    )
                )
            else:
                value = ops.dumps_internal(d)
            while True:
                try:
                    producer.produce(
                        state.new_snapshots,
                        value,
                        key,
                        partition=to,
                        headers=headers,
                        on_delivery=delivered,
                    )
                    break
                except BufferError:
                    producer.poll(0.1)
            if i % 1000 == 0:
                producer.poll(0)
                advance(1000)
                if kill_at is not None and i >= kill_at:
                    producer.flush(30)
                    os.kill(os.getpid(), signal.SIGKILL)
        advance(len(newest) % 1000)
        _flush(producer, errors)
    return len(newest)


def forward_ops(
    settings: Settings,
    state: State,
    newest: dict[bytes, Newest],
    reporter: Reporter,
    path: Path,
) -> None:
    """Every op of the old topic that no copied snapshot holds, to the new ops topic."""
    consumer = topic_reader(settings, "repartition")
    producer = _producer(settings)
    errors: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(str(err))

    topic = state.old_ops
    try:
        lows = watermark_ends(consumer, topic, len(state.ends))[0]
        ranges = {
            part: (max(lows[part], state.cursor.get(part, 0)), end)
            for part, end in state.ends.items()
        }
        total = sum(max(0, end - start) for start, end in ranges.values())
        position = {part: start for part, (start, _end) in ranges.items()}
        kill_at = kill_point("forward")
        since_save = 0
        with reporter.task(f"forwarding ops to {state.new_ops}", total) as advance:
            for msgs in read_range(consumer, topic, ranges):
                for msg in msgs:
                    p, off = msg.partition(), msg.offset()
                    assert p is not None and off is not None
                    position[p] = off + 1
                    if not _forward_one(producer, state, newest, msg, delivered):
                        continue
                    state.forwarded += 1
                    since_save += 1
                    if kill_at is not None and state.forwarded >= kill_at:
                        producer.flush(30)
                        os.kill(os.getpid(), signal.SIGKILL)
                advance(len(msgs))
                if since_save >= _CHUNK:
                    _save_forwarded(producer, errors, state, position, path)
                    since_save = 0
            _save_forwarded(producer, errors, state, position, path)
    finally:
        consumer.close()
    if errors:
        raise PublishError(f"{len(errors)} ops not forwarded: {'; '.join(errors[:3])}")


def _forward_one(
    producer: Producer,
    state: State,
    newest: dict[bytes, Newest],
    msg: Message,
    delivered: Callable[[KafkaError | None, Message], None],
) -> bool:
    """Send one op of the old topic on to the new one, unless the old workers applied or
    dead-lettered it, or a copied snapshot holds it: then False."""
    p, off, key = msg.partition(), msg.offset(), msg.key()
    assert p is not None and off is not None
    if key == PROBE_KEY or off < state.committed.get(p, 0):
        return False  # applied or dead-lettered by the old workers
    snap = newest.get(key) if key is not None else None
    if snap is not None and snap.partition == p and off <= snap.offset:
        return False  # in the item's snapshot
    raw_headers = msg.headers()
    while True:
        try:
            producer.produce(
                state.new_ops,
                msg.value(),
                key,
                headers=raw_headers,
                on_delivery=delivered,
            )
            return True
        except BufferError:
            producer.poll(0.1)


def _save_forwarded(
    producer: Producer, errors: list[str], state: State, position: dict[int, int], path: Path
) -> None:
    """Once Kafka holds every op sent, the cursor moves past them in the state file."""
    _flush(producer, errors)
    state.cursor.update(position)
    state.save(path)
