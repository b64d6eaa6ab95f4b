"""Moving a deployment to new topics with another partition count (``dyno-stream repartition``).

Adding partitions in place moves items' later ops to stores that know nothing of them, so the
workers refuse it; this tool moves the deployment to new topics named after the count
(``dyno.ops`` -> ``dyno.ops.p8``) in five steps: fence the old ops topic, drain, read the
newest snapshots, copy them co-partitioned into the new snapshot topic, forward the ops no
snapshot holds. Each step's outcome is saved in a state file, so a crashed run resumes.
The steps in detail: ``docs/design/repartition.md``.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from dyno_stream.config import Settings
from dyno_stream.core.errors import ConfigError, KafkaAdminError
from dyno_stream.jobs.progress import Reporter
from dyno_stream.jobs.repartition_copy import (
    PROBE_KEY,
    Newest,
    copy_snapshots,
    forward_ops,
    read_snapshots,
    watermark_ends,
)
from dyno_stream.jobs.repartition_state import State
from dyno_stream.kafka.reading import topic_reader
from dyno_stream.kafka.topics import ensure_topics, snapshot_partitioning

log = logging.getLogger(__name__)


def new_topic_names(settings: Settings, partitions: int) -> tuple[str, str]:
    """``dyno.ops`` -> ``dyno.ops.p8``; ``dyno.ops.p8`` -> ``dyno.ops.p16`` (no ``.p8.p16``)."""
    t = settings.topics

    def named(topic: str) -> str:
        return f"{re.sub(r'[.]p[0-9]+$', '', topic)}.p{partitions}"

    return named(t.ops), named(t.snapshots)


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


def _admin(settings: Settings) -> AdminClient:
    return AdminClient(settings.kafka.librdkafka())


def _topic_partitions(admin: AdminClient, topic: str) -> int | None:
    meta = admin.list_topics(timeout=30).topics.get(topic)
    return None if meta is None or meta.error is not None else len(meta.partitions)


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
        report.details.append(f"already done (state in {path})")
        return _reported(report, state)
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
        newest = read_snapshots(settings, state, reporter)
        if state.items is None:
            state.items = _make_topics_and_copy(settings, admin, state, newest, reporter)
            state.save(path)
        forward_ops(settings, state, newest, reporter, path)
        state.done = True
    finally:
        state.seconds += time.monotonic() - started
        state.save(path)
    return _reported(report, state)


def _reported(report: Report, state: State) -> Report:
    """The report with what the state file says was done, over every run."""
    report.items, report.forwarded = state.items or 0, state.forwarded
    report.seconds, report.runs = state.seconds, state.runs
    return report


def _make_topics_and_copy(
    settings: Settings,
    admin: AdminClient,
    state: State,
    newest: dict[bytes, Newest],
    reporter: Reporter,
) -> int:
    """The new topics made, then each item's newest snapshot copied into them."""
    new = _new_settings(settings, state)
    ensure_topics(new)
    placing = snapshot_partitioning(new, admin)
    if placing.problem is not None:
        log.error("%s", placing.problem)
    return copy_snapshots(settings, state, newest, reporter, placing)


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
        lows, highs = watermark_ends(consumer, state.old_ops, now)
    finally:
        consumer.close()
    ops_held = sum(highs[p] - lows[p] for p in highs)
    newest = read_snapshots(settings, state, None)
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
        _lows, state.ends = watermark_ends(consumer, topic, now)
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
        _lows, state.snapshot_ends = watermark_ends(consumer, state.old_snapshots, state.recorded)
    finally:
        consumer.close()
