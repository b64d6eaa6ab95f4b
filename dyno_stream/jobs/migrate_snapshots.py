"""Moving to a co-partitioned snapshot topic (``dyno-stream migrate-snapshots --to TOPIC``).

A snapshot topic with another partition count than the ops topic (made by hand, or by an
older version) works, but slowly: its snapshots sit where their key hashes, so restoring one
ops partition reads the whole topic (``topics.SnapshotPartitioning`` says so at start-up).
This job copies the newest snapshot of every item, unchanged (key and bytes), into a new
topic created with the ops topic's partition count, each into the partition of the ops that
made it (its ``source.partition``). Then every worker, client and view is pointed at the new
topic.

The workers must be stopped while it runs: a snapshot they published to the old topic during
the copy would be missing from the new one. It refuses to start while the workers' consumer
group has members (``force`` overrides). Run again, it copies everything again: each item's
copies are the same snapshot, and a reader keeps one (``is_newer``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from dyno_stream.config import Settings, producer_config
from dyno_stream.core.errors import ConfigError, KafkaAdminError, PublishError
from dyno_stream.jobs.progress import Reporter
from dyno_stream.kafka.partitioning import rule_partition
from dyno_stream.kafka.reading import (
    NewestRead,
    read_newest_snapshots,
    topic_reader,
    watermarks,
)
from dyno_stream.kafka.topics import ensure_topics, ops_partition_counts

log = logging.getLogger(__name__)

#: Answers of a group coordinator that is not ready yet (a broker that has just started)
_COORDINATOR_BUSY = {
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
}


@dataclass
class MigrationReport:
    old_topic: str
    new_topic: str
    old_partitions: int
    partitions: int
    items: int = 0
    #: snapshots whose source is not a partition of this ops topic: placed by key hash
    by_key: int = 0
    #: messages of the old topic that were not snapshots (skipped)
    unreadable: int = 0
    per_partition: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"copied {self.items:,} items' newest snapshots from {self.old_topic} "
            f"({self.old_partitions} partitions) to {self.new_topic} ({self.partitions} "
            f"partitions, each in its ops partition) in {self.seconds:.1f}s"
        )

    def details(self) -> list[str]:
        lines = []
        if self.by_key:
            lines.append(
                f"{self.by_key:,} snapshots name no partition of the ops topic as their "
                "source: placed by their key's hash"
            )
        if self.unreadable:
            lines.append(f"{self.unreadable:,} messages were not snapshots: not copied")
        return lines

    def settings_lines(self) -> list[str]:
        return [f"DYNO_TOPICS__SNAPSHOTS={self.new_topic}"]


def migrate_snapshots(
    settings: Settings, new_topic: str, reporter: Reporter, *, force: bool = False
) -> MigrationReport:
    """Copy each item's newest snapshot from ``settings.topics.snapshots`` into
    ``new_topic``, created co-partitioned with the ops topic, at its source partition."""
    t = settings.topics
    if new_topic in (t.snapshots, t.ops, t.dead_letter):
        raise ConfigError(f"--to must name a new topic, not {new_topic}")
    started = time.monotonic()
    admin = AdminClient(settings.kafka.librdkafka())
    ops_count, old_count = ops_partition_counts(admin, settings, timeout=30)
    if ops_count is None:
        raise KafkaAdminError(f"ops topic {t.ops} not found")
    if old_count is None:
        raise KafkaAdminError(f"snapshot topic {t.snapshots} not found: nothing to migrate")
    if not force:
        _refuse_running_workers(admin, settings.worker.group_id)
    _make_new_topic(admin, settings, new_topic, ops_count)
    report = MigrationReport(t.snapshots, new_topic, old_count, ops_count)
    newest = _read(settings, reporter)
    producer = Producer({**producer_config(settings), "linger.ms": 20})
    errors: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(str(err))

    placed: Counter[int] = Counter()
    with reporter.task(f"copying snapshots to {new_topic}", len(newest.items)) as advance:
        for i, kept in enumerate(newest.items.values(), 1):
            src = kept.snapshot.source
            if src is not None and src.topic == t.ops and 0 <= src.partition < ops_count:
                partition = src.partition
            else:
                partition = rule_partition(kept.key, ops_count, settings.kafka.partitioner)
                report.by_key += 1
            placed[partition] += 1
            while True:
                try:
                    producer.produce(
                        new_topic, kept.raw, kept.key, partition=partition, on_delivery=delivered
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain
                    producer.poll(0.1)
            if i % 1000 == 0:
                producer.poll(0)
                advance(1000)
        advance(len(newest.items) % 1000)
        while producer.flush(30):
            log.warning("waiting for Kafka to acknowledge the snapshots sent")
    if errors:
        raise PublishError(f"{len(errors)} snapshots refused: {'; '.join(errors[:3])}")
    report.items, report.unreadable = len(newest.items), newest.unreadable
    report.per_partition = dict(sorted(placed.items()))
    report.seconds = time.monotonic() - started
    return report


def _make_new_topic(admin: AdminClient, settings: Settings, new_topic: str, ops_count: int) -> None:
    """``new_topic`` created co-partitioned with the ops topic; refused when it exists with
    another partition count."""
    t = settings.topics
    new_settings = settings.model_copy(
        update={"topics": t.model_copy(update={"snapshots": new_topic})}
    )
    ensure_topics(new_settings)
    _, new_count = ops_partition_counts(admin, new_settings, timeout=30)
    if new_count != ops_count:
        raise ConfigError(
            f"{new_topic} exists with {new_count} partitions, not the {ops_count} of "
            f"{t.ops}: choose another name"
        )


@dataclass
class PlacementCheck:
    """Whether the snapshot topic can be restored from one partition at a time: the same
    partition count as the ops topic, and each item's newest snapshot in the partition of
    the ops that made it."""

    topic: str
    ops_partitions: int
    partitions: int
    items: int
    #: items whose newest snapshot is not in its source partition
    misplaced: int
    examples: list[str] = field(default_factory=list)

    @property
    def needs_migration(self) -> bool:
        return self.partitions != self.ops_partitions or self.misplaced > 0

    def lines(self) -> list[str]:
        if self.partitions != self.ops_partitions:
            return [
                f"{self.topic} has {self.partitions} partitions, the ops topic "
                f"{self.ops_partitions}: not co-partitioned; migrate (see --help)"
            ]
        if self.misplaced:
            return [
                f"{self.misplaced:,} of {self.items:,} items' newest snapshots in {self.topic} "
                "are not in the partition of their ops (e.g. "
                f"{', '.join(self.examples)}): a restore reading its own partition would "
                "miss them; migrate (see --help)"
            ]
        return [
            f"{self.topic}: {self.items:,} items, each newest snapshot in its ops partition "
            f"of {self.ops_partitions}: co-partitioned, nothing to migrate"
        ]


def check_placement(settings: Settings, reporter: Reporter) -> PlacementCheck:
    """Read the snapshot topic and count the items whose newest snapshot is not in its
    source partition: a topic written before snapshots were placed explicitly holds each
    where its key hashes, which is its ops partition only when every producer of ops placed
    by the placement rule."""
    t = settings.topics
    admin = AdminClient(settings.kafka.librdkafka())
    ops_count, count = ops_partition_counts(admin, settings, timeout=30)
    if ops_count is None or count is None:
        raise KafkaAdminError(f"{t.ops} or {t.snapshots} not found: nothing to check")
    newest = _read(settings, reporter)
    misplaced = [
        name
        for name, kept in newest.items.items()
        if (src := kept.snapshot.source) is None
        or src.topic != t.ops
        or src.partition != kept.partition
    ]
    return PlacementCheck(
        t.snapshots, ops_count, count, len(newest.items), len(misplaced), misplaced[:3]
    )


def _read(settings: Settings, reporter: Reporter) -> NewestRead:
    topic = settings.topics.snapshots
    consumer = topic_reader(settings, "migrate")
    try:
        total = sum(hi - lo for lo, hi in watermarks(consumer, topic).values())
    finally:
        consumer.close()
    with reporter.task(f"reading {topic}", total) as advance:
        done = [0]

        def progress(read: int) -> None:
            advance(read - done[0])
            done[0] = read

        newest = read_newest_snapshots(settings, topic, on_progress=progress)
    assert newest is not None  # never cancelled
    return newest


def _refuse_running_workers(admin: AdminClient, group_id: str, timeout: float = 30.0) -> None:
    """Raise while the workers' consumer group has members: they could publish snapshots
    to the old topic during the copy."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            future = admin.describe_consumer_groups([group_id])[group_id]
            members = future.result(timeout).members
            break
        except KafkaException as exc:
            # a broker that has just started answers COORDINATOR_LOAD_IN_PROGRESS a while
            err = exc.args[0]
            if (err.retriable() or err.code() in _COORDINATOR_BUSY) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.5)
                continue
            raise KafkaAdminError(
                f"cannot tell whether workers of group {group_id} run ({exc}); stop them and "
                "run again with --force"
            ) from exc
    if members:
        raise ConfigError(
            f"consumer group {group_id} has {len(members)} members: stop the workers first "
            "(a snapshot they publish during the copy would be missing from the new topic), "
            "or pass --force"
        )
