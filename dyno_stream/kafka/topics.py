"""Topic administration: create the ops, snapshot and dead-letter topics when missing.

The snapshot topic is created compacted and co-partitioned with the ops topic (a snapshot goes
to the partition of the ops that made it); the ops topic with ``LogAppendTime``. The snapshot
topic's partition count is also the record of the count the deployment was built with, which
every worker and client can read (``ops_partition_counts``). Why: ``docs/design/topics.md``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from dyno_stream.config import MAX_MESSAGE_BYTES, Settings
from dyno_stream.core.errors import KafkaAdminError, PartitionCountError
from dyno_stream.kafka.security import AuthWatch, list_topics_checked

log = logging.getLogger(__name__)


class _HasMetadata(Protocol):
    def list_topics(self, topic: str | None = ..., timeout: float = ...) -> Any: ...


def ops_partition_counts(
    client: _HasMetadata, settings: Settings, timeout: float = 10.0
) -> tuple[int | None, int | None]:
    """The ops topic's partition count now, and the count recorded for it: the snapshot
    topic's (``None`` for a topic that does not exist).

    One metadata request for all topics: asking for one topic by name lets a producer
    create it with the broker's default count when it is missing.
    """
    topics = client.list_topics(timeout=timeout).topics

    def count(name: str) -> int | None:
        meta = topics.get(name)
        return None if meta is None or meta.error is not None else len(meta.partitions)

    return count(settings.topics.ops), count(settings.topics.snapshots)


def check_partition_count(settings: Settings, now: int | None, recorded: int | None) -> None:
    """Raise :class:`PartitionCountError` when the ops topic no longer has the recorded count."""
    if now is not None and recorded is not None and now != recorded:
        raise PartitionCountError(settings.topics.ops, now, recorded)


class PartitionCountWatch:
    """Checks the ops topic's partition count against the recorded one every few seconds,
    on a thread of its own.

    A metadata request can block for its whole timeout (a hung or unreachable broker, a
    refused login): run on a worker's loop it stalled the loop for 10 s in every 5 s while
    the broker hung, and on a client's delivery thread it held back every future. The
    owner reads ``refusal`` when it likes; ``checked`` is set once a first answer (or
    failure) came.
    """

    def __init__(
        self,
        settings: Settings,
        client: _HasMetadata,
        *,
        every_s: float = 5.0,
        timeout_s: float = 5.0,
        stop_when: Callable[[], bool] = lambda: False,
        on_counts: Callable[[int | None, int | None], None] = lambda now, recorded: None,
    ) -> None:
        self.settings = settings
        self.refusal: PartitionCountError | None = None
        self.checked = threading.Event()
        self._client = client
        self._every_s, self._timeout_s = every_s, timeout_s
        self._stop_when, self._on_counts = stop_when, on_counts
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dyno-partitions", daemon=True)

    def start(self) -> PartitionCountWatch:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()

    def _run(self) -> None:
        while not self._closed.is_set() and not self._stop_when():
            self.check()
            self._closed.wait(self._every_s)

    def check(self) -> None:
        """One look now (the thread's turn; callable directly too)."""
        try:
            now, recorded = ops_partition_counts(self._client, self.settings, self._timeout_s)
            self._on_counts(now, recorded)
            check_partition_count(self.settings, now, recorded)
            self.refusal = None
        except PartitionCountError as exc:
            if self.refusal is None:
                log.error("%s", exc)
            self.refusal = exc
        except KafkaException as exc:  # no metadata now: the next turn asks again
            log.debug("partition count not checked: %s", exc)
        finally:
            self.checked.set()


@dataclass(frozen=True)
class SnapshotPartitioning:
    """Whether the snapshot topic is co-partitioned with the ops topic: the same partition
    count, so that snapshot partition p holds the snapshots of ops partition p.

    ``problem`` is the start-up message for a pair that is not (None when it is, or when a
    topic does not exist yet: ``ensure_topics`` creates the snapshot topic co-partitioned).
    """

    ops_topic: str
    snapshot_topic: str
    ops_partitions: int | None
    snapshot_partitions: int | None

    @property
    def co_partitioned(self) -> bool:
        return self.ops_partitions is not None and self.ops_partitions == self.snapshot_partitions

    @property
    def problem(self) -> str | None:
        ops, snaps = self.ops_partitions, self.snapshot_partitions
        if ops is None or snaps is None or ops == snaps:
            return None
        return (
            f"snapshot topic {self.snapshot_topic} has {snaps} partitions and ops topic "
            f"{self.ops_topic} {ops}: they are not co-partitioned. Snapshots are placed by "
            "their item's key hash, not in the partition of the ops that made them, so "
            "restoring a partition reads the whole snapshot topic and keeps that partition's "
            "snapshots (slow: every restore reads every item's snapshot). If the ops topic "
            "was resized in place, see 'dyno-stream repartition'. Otherwise migrate: stop "
            f"the workers, run 'dyno-stream migrate-snapshots --to NEW_TOPIC' (it copies "
            f"each item's newest snapshot into a new topic of {ops} partitions, each in its "
            "ops partition), set [topics] snapshots = NEW_TOPIC (DYNO_TOPICS__SNAPSHOTS) "
            "everywhere, and start the workers"
        )


def snapshot_partitioning(
    settings: Settings, client: _HasMetadata, timeout: float = 10.0
) -> SnapshotPartitioning:
    """Look up both topics' partition counts (one metadata request; raises
    ``KafkaException`` when none comes): log ``problem`` at ERROR, show it on /healthz,
    and pass ``co_partitioned`` to ``reading.read_restore_snapshots``."""
    ops, snaps = ops_partition_counts(client, settings, timeout)
    return SnapshotPartitioning(settings.topics.ops, settings.topics.snapshots, ops, snaps)


def topic_specs(settings: Settings, ops_partitions: int | None = None) -> list[NewTopic]:
    """The three topics as ``ensure_topics`` creates them; the snapshot topic gets
    ``ops_partitions`` (the existing ops topic's count) or else the configured count."""
    t = settings.topics
    rf = t.replication_factor
    return [
        NewTopic(
            t.ops,
            num_partitions=t.partitions,
            replication_factor=rf,
            config={"message.timestamp.type": "LogAppendTime"},
        ),
        NewTopic(
            t.snapshots,
            num_partitions=ops_partitions or t.partitions,
            replication_factor=rf,
            config={"cleanup.policy": "compact", "max.message.bytes": str(MAX_MESSAGE_BYTES)},
        ),
        NewTopic(
            t.dead_letter,
            num_partitions=1,
            replication_factor=rf,
            config={"max.message.bytes": str(MAX_MESSAGE_BYTES)},
        ),
    ]


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create whichever of the three topics are missing; return the names created. The
    snapshot topic gets the ops topic's partition count (see ``topic_specs``).

    A refused login or TLS handshake raises :class:`~dyno_stream.core.errors.KafkaAuthError` at
    once instead of a "cannot reach" after the whole timeout.
    """
    watch = AuthWatch(settings.kafka)
    admin = AdminClient({**settings.kafka.librdkafka(), **watch.config()})
    metadata = list_topics_checked(admin, watch, timeout, settings.kafka.bootstrap_servers)
    existing = set(metadata.topics)
    ops = metadata.topics.get(settings.topics.ops)
    # co-partitioned with the ops topic as it is, whatever the configured count says
    ops_partitions = len(ops.partitions) if ops is not None and ops.partitions else None
    wanted = [spec for spec in topic_specs(settings, ops_partitions) if spec.topic not in existing]
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            created.append(name)
            log.info("created topic %s", name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another worker won
                raise KafkaAdminError(f"cannot create topic {name}: {exc}") from exc
    names = [spec.topic for spec in wanted]
    _wait(admin, lambda topics: _ready(topics, names), timeout, "ready")
    return created


def delete_topics(settings: Settings, names: list[str], timeout: float = 30.0) -> None:
    """Delete topics (the demo starts from clean ones); missing ones are fine."""
    admin = AdminClient(settings.kafka.librdkafka())
    existing = set(admin.list_topics(timeout=timeout).topics)
    doomed = [n for n in names if n in existing]
    if not doomed:
        return
    for _name, future in admin.delete_topics(doomed, operation_timeout=timeout).items():
        future.result(timeout)
    # deletion completes in the background: a topic created again under the same name
    # before it is gone leaves clients with stale metadata
    _wait(admin, lambda topics: not any(n in topics for n in doomed), timeout, "deleted")


def _wait(
    admin: AdminClient, done: Callable[[dict[str, Any]], bool], timeout: float, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done(admin.list_topics(timeout=timeout).topics):
            return
        time.sleep(0.2)
    raise KafkaAdminError(f"topics not {what} within {timeout:.0f}s")


def _ready(topics: dict[str, Any], names: list[str]) -> bool:
    """Every partition of every topic has a leader."""
    for name in names:
        meta = topics.get(name)
        if meta is None or meta.error is not None or not meta.partitions:
            return False
        if any(p.leader < 0 for p in meta.partitions.values()):
            return False
    return True
