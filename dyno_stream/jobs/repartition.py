"""Moving a deployment to new topics with another partition count (``dyno-stream repartition``).

Adding partitions in place moves items' later ops to stores that know nothing of them, so the
workers refuse it; this tool moves the deployment to new topics named after the count
(``dyno.ops`` -> ``dyno.ops.p8``) in five steps: fence the old ops topic, drain, read the
newest snapshots, copy them co-partitioned into the new snapshot topic, forward the ops no
snapshot holds. Each step's outcome is saved in a state file, so a crashed run resumes.
The steps in detail: ``docs/design/repartition.md``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from dyno_stream.config import Settings, producer_config
from dyno_stream.core import ops
from dyno_stream.core.errors import ConfigError, KafkaAdminError, PublishError
from dyno_stream.core.snapshots import tombstone_headers, tombstone_snapshot
from dyno_stream.jobs.progress import Reporter
from dyno_stream.kafka.partitioning import rule_partition, snapshot_partition
from dyno_stream.kafka.reading import read_range, topic_reader, watermarks
from dyno_stream.kafka.topics import SnapshotPartitioning, ensure_topics, snapshot_partitioning

log = logging.getLogger(__name__)

#: The key of the message that proves the fence holds (skipped if it ever got through).
PROBE_KEY = b"\x00dyno-repartition-probe"
#: Forwarded ops between two flushes and cursor saves in the state file.
_CHUNK = 5_000
#: A fault hook for the tests: ``<phase>:<n>`` SIGKILLs the process after n items copied
#: (``copy``) or n ops forwarded (``forward``), the way a crash would stop it.
_KILL_ENV = "DYNO_REPARTITION_KILL_AFTER"


def new_topic_names(settings: Settings, partitions: int) -> tuple[str, str]:
    """``dyno.ops`` -> ``dyno.ops.p8``; ``dyno.ops.p8`` -> ``dyno.ops.p16`` (no ``.p8.p16``)."""
    t = settings.topics

    def named(topic: str) -> str:
        return f"{re.sub(r'[.]p[0-9]+$', '', topic)}.p{partitions}"

    return named(t.ops), named(t.snapshots)


@dataclass
class State:
    """What a run has done so far; saved after each step, so a crashed run resumes."""

    old_ops: str
    old_snapshots: str
    new_ops: str
    new_snapshots: str
    partitions: int
    recorded: int
    fenced: bool = False
    #: the old ops topic's ends once fenced (no op gets past them)
    ends: dict[int, int] = field(default_factory=dict)
    #: the workers' committed offsets, read before the snapshots
    committed: dict[int, int] = field(default_factory=dict)
    #: the old snapshot topic's ends when read: a resumed run reads the same snapshots
    snapshot_ends: dict[int, int] = field(default_factory=dict)
    items: int | None = None  # set once every snapshot is copied
    #: per old partition, the next offset to forward from (after the last flush)
    cursor: dict[int, int] = field(default_factory=dict)
    forwarded: int = 0
    done: bool = False
    seconds: float = 0.0
    runs: int = 0

    @classmethod
    def load(cls, path: Path) -> State | None:
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        for name in ("ends", "committed", "snapshot_ends", "cursor"):
            raw[name] = {int(k): v for k, v in raw[name].items()}
        return cls(**raw)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)  # never half a state file, whenever the process dies


@dataclass
class Report:
    old_ops: str
    new_ops: str
    new_snapshots: str
    partitions_before: int
    partitions: int
    items: int
    forwarded: int
    seconds: float
    runs: int
    dry_run: bool = False
    details: list[str] = field(default_factory=list)

    def settings_lines(self) -> list[str]:
        return [
            f"DYNO_TOPICS__OPS={self.new_ops}",
            f"DYNO_TOPICS__SNAPSHOTS={self.new_snapshots}",
            f"DYNO_TOPICS__PARTITIONS={self.partitions}",
        ]

    def summary(self) -> str:
        if self.dry_run:
            return (
                f"dry run: {self.old_ops} ({self.partitions_before} partitions) would move to "
                f"{self.new_ops} ({self.partitions} partitions): {self.items:,} items"
            )
        runs = f" over {self.runs} runs" if self.runs > 1 else ""
        return (
            f"repartitioned {self.old_ops} ({self.partitions_before} partitions) -> "
            f"{self.new_ops} ({self.partitions} partitions): {self.items:,} items moved, "
            f"{self.forwarded:,} ops forwarded in {self.seconds:.1f}s{runs}"
        )


def _kill_point(phase: str) -> int | None:
    spec = os.environ.get(_KILL_ENV, "")
    name, _, n = spec.partition(":")
    return int(n) if name == phase and n else None


def _admin(settings: Settings) -> AdminClient:
    return AdminClient(settings.kafka.librdkafka())


def _topic_partitions(admin: AdminClient, topic: str) -> int | None:
    meta = admin.list_topics(timeout=30).topics.get(topic)
    return None if meta is None or meta.error is not None else len(meta.partitions)


def _ends(consumer: Consumer, topic: str, partitions: int) -> tuple[dict[int, int], dict[int, int]]:
    """The low and high watermarks of the topic's first ``partitions`` partitions."""
    marks = watermarks(consumer, topic)
    return (
        {p: marks[p][0] for p in range(partitions)},
        {p: marks[p][1] for p in range(partitions)},
    )


def repartition(
    settings: Settings,
    partitions: int,
    reporter: Reporter,
    *,
    dry_run: bool = False,
    drain_timeout: float = 60.0,
    state_path: Path | None = None,
) -> Report:
    """Move the deployment in ``settings`` to new topics with ``partitions`` partitions."""
    if partitions < 1:
        raise ConfigError(f"--partitions must be at least 1, not {partitions}")
    t = settings.topics
    new_ops, new_snapshots = new_topic_names(settings, partitions)
    admin = _admin(settings)
    now = _topic_partitions(admin, t.ops)
    recorded = _topic_partitions(admin, t.snapshots)
    if now is None:
        raise KafkaAdminError(f"ops topic {t.ops} not found: nothing to repartition")
    recorded = recorded if recorded is not None else now
    if new_ops == t.ops:
        raise ConfigError(f"{t.ops} is already the topic for {partitions} partitions")
    path = state_path or settings.worker.data_dir / "repartition" / f"{t.ops}-to-{new_ops}.json"
    state = State.load(path)
    if state is None:
        state = State(t.ops, t.snapshots, new_ops, new_snapshots, partitions, recorded)
    report = Report(t.ops, new_ops, new_snapshots, recorded, partitions, 0, 0, 0.0, 0)
    if dry_run:
        return _dry_run(settings, state, now, report)
    if state.done:
        report.items, report.forwarded = state.items or 0, state.forwarded
        report.seconds, report.runs = state.seconds, state.runs
        report.details.append(f"already done (state in {path})")
        return report
    started = time.monotonic()
    state.runs += 1
    if state.runs > 1:
        report.details.append(f"resuming the run recorded in {path}")
    try:
        if not state.fenced:
            _fence(settings, admin, t.ops, now, state)
            state.save(path)
        if not state.snapshot_ends:
            _drain(settings, state, drain_timeout, reporter)
            state.save(path)
        newest = _read_snapshots(settings, state, reporter)
        if state.items is None:
            new = _new_settings(settings, state)
            ensure_topics(new)
            placing = snapshot_partitioning(new, admin)
            if placing.problem is not None:
                log.error("%s", placing.problem)
            state.items = _copy(settings, state, newest, reporter, placing)
            state.save(path)
        _forward(settings, state, newest, reporter, path)
        state.done = True
    finally:
        state.seconds += time.monotonic() - started
        state.save(path)
    report.items, report.forwarded = state.items or 0, state.forwarded
    report.seconds, report.runs = state.seconds, state.runs
    return report


def _new_settings(settings: Settings, state: State) -> Settings:
    topics = settings.topics.model_copy(
        update={
            "ops": state.new_ops,
            "snapshots": state.new_snapshots,
            "partitions": state.partitions,
        }
    )
    return settings.model_copy(update={"topics": topics})


def _dry_run(settings: Settings, state: State, now: int, report: Report) -> Report:
    consumer = topic_reader(settings, "repartition")
    try:
        lows, highs = _ends(consumer, state.old_ops, now)
    finally:
        consumer.close()
    ops_held = sum(highs[p] - lows[p] for p in highs)
    newest = _read_snapshots(settings, state, None)
    report.items = len(newest)
    report.dry_run = True
    report.details += [
        f"would fence {state.old_ops} (max.message.bytes=0: every client's send fails from then)",
        f"would wait for the workers to apply the {ops_held:,} ops it holds, then forward "
        "those no snapshot holds",
        f"would create {state.new_ops} and {state.new_snapshots} ({state.partitions} "
        f"partitions) and copy {len(newest):,} snapshots",
    ]
    if state.partitions < state.recorded:
        report.details.append(f"shrinks {state.recorded} -> {state.partitions} partitions")
    return report


def _fence(settings: Settings, admin: AdminClient, topic: str, now: int, state: State) -> None:
    """Make the broker refuse every op sent to the old topic, and prove that it does."""
    entry = ConfigEntry("max.message.bytes", "0", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)
    probe = Producer({**settings.kafka.librdkafka(), "acks": "all", "message.timeout.ms": 10_000})
    outcome: list[KafkaError | None] = []
    deadline = time.monotonic() + 30
    while True:
        outcome.clear()
        probe.produce(
            topic, None, PROBE_KEY, partition=0, on_delivery=lambda e, _m: outcome.append(e)
        )
        probe.flush(15)
        err = outcome[0] if outcome else None
        if err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            break
        if time.monotonic() > deadline:
            raise KafkaAdminError(f"{topic} still takes messages after it was fenced ({err})")
        time.sleep(0.5)
    consumer = topic_reader(settings, "repartition")
    try:
        _lows, state.ends = _ends(consumer, topic, now)
    finally:
        consumer.close()
    state.fenced = True
    log.info("fenced %s at %s", topic, state.ends)


def _drain(settings: Settings, state: State, timeout: float, reporter: Reporter) -> None:
    """Wait for the workers to commit every op of the old topic; then note their offsets
    and the snapshot topic's ends (the snapshots are read after the offsets)."""
    group = Consumer(
        {
            **settings.kafka.librdkafka(),
            "group.id": settings.worker.group_id,
            "enable.auto.commit": False,
        }
    )
    try:
        tps = [TopicPartition(state.old_ops, p) for p in range(state.recorded)]
        total = sum(state.ends.get(p, 0) for p in range(state.recorded))
        deadline = time.monotonic() + timeout
        committed: dict[int, int] = {}
        with reporter.task("waiting for the workers to apply the old topic", total) as advance:
            done = 0
            while True:
                got = group.committed(tps, timeout=10)
                committed = {tp.partition: max(tp.offset, 0) for tp in got}
                now = sum(min(committed[p], state.ends.get(p, 0)) for p in committed)
                advance(now - done)
                done = now
                behind = [p for p in committed if committed[p] < state.ends.get(p, 0)]
                if not behind or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        if behind:
            log.warning(
                "the workers have not applied partitions %s of %s within %.0fs: their ops are "
                "forwarded instead",
                behind,
                state.old_ops,
                timeout,
            )
    finally:
        group.close()
    state.committed = committed
    consumer = topic_reader(settings, "repartition")
    try:
        _lows, state.snapshot_ends = _ends(consumer, state.old_snapshots, state.recorded)
    finally:
        consumer.close()


@dataclass(slots=True)
class _Newest:
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


def _read_snapshots(
    settings: Settings, state: State, reporter: Reporter | None
) -> dict[bytes, _Newest]:
    """Each item's newest snapshot of the old ops topic, up to the ends noted by ``_drain``
    (the ends now, for a dry run)."""
    consumer = topic_reader(settings, "repartition")
    topic = state.old_snapshots
    try:
        meta = consumer.list_topics(timeout=30).topics.get(topic)
        if meta is None or meta.error is not None:
            return {}
        lows, highs = _ends(consumer, topic, len(meta.partitions))
        ends = state.snapshot_ends or highs
        ranges = {p: (lows[p], hi) for p, hi in ends.items()}
        newest: dict[bytes, _Newest] = {}
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
                        newest[key] = _Newest(changes, count, snap[3], snap[4], raw, deleted)
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


def _copy(
    settings: Settings,
    state: State,
    newest: dict[bytes, _Newest],
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

    kill_at = _kill_point("copy")
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


def _forward(
    settings: Settings,
    state: State,
    newest: dict[bytes, _Newest],
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
        lows = _ends(consumer, topic, len(state.ends))[0]
        ranges = {
            part: (max(lows[part], state.cursor.get(part, 0)), end)
            for part, end in state.ends.items()
        }
        total = sum(max(0, end - start) for start, end in ranges.values())
        position = {part: start for part, (start, _end) in ranges.items()}
        kill_at = _kill_point("forward")
        since_save = 0
        with reporter.task(f"forwarding ops to {state.new_ops}", total) as advance:
            for msgs in read_range(consumer, topic, ranges):
                for msg in msgs:
                    p, off = msg.partition(), msg.offset()
                    assert p is not None and off is not None
                    position[p] = off + 1
                    key = msg.key()
                    if key == PROBE_KEY or off < state.committed.get(p, 0):
                        continue  # applied or dead-lettered by the old workers
                    snap = newest.get(key) if key is not None else None
                    if snap is not None and snap.partition == p and off <= snap.offset:
                        continue  # in the item's snapshot
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
                            break
                        except BufferError:
                            producer.poll(0.1)
                    state.forwarded += 1
                    since_save += 1
                    if kill_at is not None and state.forwarded >= kill_at:
                        producer.flush(30)
                        os.kill(os.getpid(), signal.SIGKILL)
                advance(len(msgs))
                if since_save >= _CHUNK:
                    _flush(producer, errors)
                    state.cursor.update(position)
                    state.save(path)
                    since_save = 0
            _flush(producer, errors)
            state.cursor.update(position)
            state.save(path)
    finally:
        consumer.close()
    if errors:
        raise PublishError(f"{len(errors)} ops not forwarded: {'; '.join(errors[:3])}")
