"""Reading topics outside any consumer group: from a chosen offset to where a topic ends now.

The snapshot topic is read this way by restores, compaction passes, views and the demo; none
of them commits offsets or joins the workers' group. A restore of ops partition p reads only
snapshot partition p when the topics are co-partitioned (``read_restore_snapshots``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from dyno_stream.config import Settings
from dyno_stream.core.errors import KafkaAdminError, KafkaServiceError
from dyno_stream.core.events import Snapshot
from dyno_stream.core.snapshots import (
    KeptSnapshot,
    NewestSnapshots,
    SnapshotDict,
    is_newer,
    parse_message,
    source_partition_test,
)

log = logging.getLogger("dyno_stream.kafka.reading")


def topic_reader(settings: Settings, purpose: str) -> Consumer:
    """A consumer outside any group (a group id of its own, never committed), starting at a
    partition's beginning unless assigned an offset. ``purpose`` names it in the broker's
    view of clients (``dyno-<purpose>-<random>``)."""
    return Consumer(
        {
            **settings.kafka.librdkafka(),
            "group.id": f"dyno-{purpose}-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )


def watermarks(consumer: Consumer, topic: str, timeout: float = 30.0) -> dict[int, tuple[int, int]]:
    """Each partition's (low, high) watermark: where the topic starts and ends now."""
    meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None:
        raise KafkaAdminError(f"topic {topic!r} not found; is a worker running?")
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        for p in meta.partitions
    }


def partition_ends(consumer: Consumer, topic: str, timeout: float = 30.0) -> dict[int, int]:
    """Where each partition of ``topic`` ends now (its high watermark)."""
    return {p: hi for p, (_lo, hi) in watermarks(consumer, topic, timeout).items()}


def read_range(
    consumer: Consumer,
    topic: str,
    ranges: dict[int, tuple[int, int]],
    *,
    batch: int = 10_000,
    timeout: float | None = None,
) -> Iterator[list[Message]]:
    """Read ``topic``'s partitions from each range's start up to its end (exclusive), and
    yield the messages of each fetch that fall in their range, until every partition is done.

    A partition is done at its end's last offset, or at the first message past it: a
    compacted topic may have lost its last offsets. Messages with an error are skipped.
    Raises ``KafkaServiceError`` when ``timeout`` passes first.
    """
    todo = {p: end for p, (start, end) in ranges.items() if end > start}
    if not todo:
        return
    consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in todo])
    deadline = None if timeout is None else time.monotonic() + timeout
    while todo:
        if deadline is not None and time.monotonic() > deadline:
            raise KafkaServiceError(f"reading {topic} did not finish within {timeout:.0f}s")
        fetched = []
        for msg in consumer.consume(batch, 0.5):
            if msg.error() is not None:
                continue
            p, off = msg.partition(), msg.offset()
            if p is None or off is None or p not in todo:
                continue
            end = todo[p]
            if off + 1 >= end:
                del todo[p]
                if off >= end:
                    continue
            fetched.append(msg)
        yield fetched


def read_snapshots(
    settings: Settings,
    advance: Callable[[int], None] = lambda n: None,
    since: dict[int, int] | None = None,
    timeout: float = 120.0,
    keep: Callable[[SnapshotDict], bool] = lambda snap: True,
) -> dict[str, SnapshotDict]:
    """Each item's newest snapshot (see ``is_newer``), reading every partition to its end.
    A deleted item's is its tombstone's (``parse_message``: ``value`` None).

    ``since`` starts partitions at those offsets instead of the beginning; ``keep`` filters.
    """
    topic = settings.topics.snapshots
    consumer = topic_reader(settings, "snapshots")
    try:
        ranges = {
            part: (max(lo, (since or {}).get(part, lo)), hi)
            for part, (lo, hi) in watermarks(consumer, topic).items()
        }
        latest: dict[str, SnapshotDict] = {}
        for msgs in read_range(consumer, topic, ranges, batch=1000, timeout=timeout):
            for msg in msgs:
                key = msg.key()
                snap = parse_message(key, msg.value(), msg.headers())
                if snap is None and msg.value() is None and key is not None:
                    latest.pop(key.decode("utf-8", "replace"), None)  # a foreign tombstone
                elif snap is None:
                    log.warning(
                        "skipping a message that is not a snapshot at %s/%s@%s",
                        topic,
                        msg.partition(),
                        msg.offset(),
                    )
                elif keep(snap) and is_newer(snap, latest.get(snap["item"])):
                    latest[snap["item"]] = snap
            advance(len(msgs))
        return latest
    finally:
        consumer.close()


#: The longest one fetch of a restore's read waits for messages, and so about the longest
#: before it sees ``cancelled()`` turn true (a revoke must stop it promptly).
_FETCH_WAIT_S = 0.1
#: Messages per fetch: 10,000 snapshots of about 300 bytes are handled in about 15 ms here.
_FETCH_BATCH = 10_000


def _never() -> bool:
    return False


def read_restore_snapshots(
    settings: Settings,
    partition: int,
    co_partitioned: bool,
    *,
    cancelled: Callable[[], bool] = _never,
    on_progress: Callable[[int], None] | None = None,
    timeout: float | None = None,
) -> dict[str, Snapshot] | None:
    """Each item's newest snapshot made by ops partition ``partition``, for its restore:
    from that snapshot partition alone when the topics are co-partitioned
    (``topics.snapshot_partitioning``), else from the whole snapshot topic. None when
    ``cancelled()`` turned true first."""
    read = read_partition_snapshots if co_partitioned else read_partition_snapshots_from_all
    return read(settings, partition, cancelled=cancelled, on_progress=on_progress, timeout=timeout)


def read_partition_snapshots(
    settings: Settings,
    partition: int,
    *,
    cancelled: Callable[[], bool] = _never,
    on_progress: Callable[[int], None] | None = None,
    timeout: float | None = None,
) -> dict[str, Snapshot] | None:
    """Each item's newest snapshot (``is_newer``) whose source is ``(ops topic,
    partition)``, reading only partition ``partition`` of a co-partitioned snapshot topic,
    from its start to its end when the read began.

    With a consumer of its own (no group, nothing committed). ``cancelled()`` is asked
    about every 0.1 s (and every 2,000 validations): once true, the read stops and returns
    None. ``on_progress`` gets the count of messages read so far after each fetch that
    brought some.
    ``timeout`` (none by default: a caller stops it with ``cancelled``) raises
    ``KafkaServiceError`` when the read takes longer.
    """
    return _read_restore(settings, [partition], partition, cancelled, on_progress, timeout)


def read_partition_snapshots_from_all(
    settings: Settings,
    partition: int,
    *,
    cancelled: Callable[[], bool] = _never,
    on_progress: Callable[[int], None] | None = None,
    timeout: float | None = None,
) -> dict[str, Snapshot] | None:
    """``read_partition_snapshots`` for a snapshot topic that is not co-partitioned: every
    partition is read and the snapshots of ops partition ``partition`` kept. Each item's
    newest snapshot is chosen first, then kept if its source is that partition."""
    return _read_restore(settings, None, partition, cancelled, on_progress, timeout)


@dataclass
class NewestRead:
    """What ``read_newest_snapshots`` found: each item's newest snapshot with its key and
    raw bytes, the messages read, and how many of them were not snapshots."""

    items: dict[str, KeptSnapshot]
    messages: int
    unreadable: int


def read_newest_snapshots(
    settings: Settings,
    topic: str,
    *,
    on_progress: Callable[[int], None] | None = None,
    cancelled: Callable[[], bool] = _never,
    timeout: float | None = None,
) -> NewestRead | None:
    """Each item's newest snapshot in every partition of ``topic``, with its key and raw
    bytes (a migration copies them as they are); None once ``cancelled()``."""
    kept = _read_newest(settings, topic, None, cancelled, on_progress, timeout)
    items = None if kept is None else kept.finish(cancelled=cancelled)
    if kept is None or items is None:
        return None
    return NewestRead(items, kept.messages, kept.unreadable)


def _read_restore(
    settings: Settings,
    partitions: list[int] | None,
    source_partition: int,
    cancelled: Callable[[], bool],
    on_progress: Callable[[int], None] | None,
    timeout: float | None,
) -> dict[str, Snapshot] | None:
    ops_topic = settings.topics.ops
    kept = _read_newest(
        settings, settings.topics.snapshots, partitions, cancelled, on_progress, timeout
    )
    if kept is None:
        return None
    started = time.monotonic()

    def ours(snap: Snapshot) -> bool:
        src = snap.source
        return src is not None and src.partition == source_partition and src.topic == ops_topic

    # reading every partition, most snapshots are of other partitions: skip their validation
    # (one partition of a co-partitioned topic holds its own: the test would only cost)
    maybe = source_partition_test(source_partition) if partitions is None else None
    # deleted items too: each is restored as its deleted marker, and the ops up to its
    # tombstone's offset are skipped, so no replay brings it back
    newest = kept.finish(ours, cancelled, maybe=maybe, deleted=True)
    if newest is None:
        return None
    if kept.unreadable:
        log.warning(
            "%d messages of %s were not snapshots; skipped",
            kept.unreadable,
            settings.topics.snapshots,
        )
    log.debug("validated %d snapshots in %.2fs", len(kept), time.monotonic() - started)
    return {name: k.snapshot for name, k in newest.items()}


def _read_newest(
    settings: Settings,
    topic: str,
    partitions: list[int] | None,
    cancelled: Callable[[], bool],
    on_progress: Callable[[int], None] | None,
    timeout: float | None,
) -> NewestSnapshots | None:
    """Feed ``partitions`` of ``topic`` (all of them for None) from their start to their end
    when the read began into a ``NewestSnapshots``; None once ``cancelled()``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    kept = NewestSnapshots()
    consumer = _snapshot_consumer(settings)
    try:
        ranges = _ranges(consumer, topic, partitions, cancelled, deadline)
        if ranges is None:
            return None
        todo = {p: end for p, (start, end) in ranges.items() if end > start}
        if not todo:
            return kept
        consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in todo])
        while todo:
            if cancelled():
                return None
            if deadline is not None and time.monotonic() > deadline:
                raise KafkaServiceError(f"reading {topic} did not finish within {timeout:.0f}s")
            msgs = consumer.consume(_FETCH_BATCH, _FETCH_WAIT_S)
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    # the partition's end with nothing more to read: compaction can leave
                    # the last offsets below the end without a message to reach it
                    if err.code() == KafkaError._PARTITION_EOF:
                        todo.pop(msg.partition(), None)  # type: ignore[arg-type]
                    continue
                p, off = msg.partition(), msg.offset()
                end = todo.get(p)  # type: ignore[arg-type]
                if end is None or off is None:
                    continue
                if off + 1 >= end:
                    del todo[p]  # type: ignore[arg-type]
                    if off >= end:
                        continue
                value = msg.value()
                # a tombstone's headers say where its item was deleted (a restore keeps it)
                kept.add(msg.key(), value, p, msg.headers() if value is None else None)
            if on_progress is not None and msgs:
                on_progress(kept.messages)
        return kept
    finally:
        consumer.close()


def _snapshot_consumer(settings: Settings) -> Consumer:
    """A consumer outside any group (a group id of its own) that reads to a partition's end
    and says when it is there, in large fetches."""
    return Consumer(
        {
            **settings.kafka.librdkafka(),
            "group.id": f"dyno-restore-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            # librdkafka's 1 MB a partition per fetch took about 4 round trips per 10,000
            # snapshots; a restore reads one partition as fast as the broker sends it
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            "fetch.max.bytes": 64 * 1024 * 1024,
        }
    )


#: How long a topic or partition the broker does not know is asked for again (the metadata
#: of a topic just created takes a moment to reach every broker) before it is an error.
_UNKNOWN_GRACE_S = 10.0


def _ranges(
    consumer: Consumer,
    topic: str,
    partitions: list[int] | None,
    cancelled: Callable[[], bool],
    deadline: float | None,
) -> dict[int, tuple[int, int]] | None:
    """Each partition's (low, high) watermark, asked in short turns so ``cancelled`` is seen
    even while the broker does not answer. A topic or partition that is still unknown after
    ``_UNKNOWN_GRACE_S`` raises ``KafkaAdminError``."""
    unknown_until = time.monotonic() + _UNKNOWN_GRACE_S
    wait = _FETCH_WAIT_S * 2
    ranges: dict[int, tuple[int, int]] = {}
    while True:
        if cancelled():
            return None
        try:
            if partitions is None:
                meta = consumer.list_topics(topic, timeout=wait).topics.get(topic)
                if meta is None or meta.error is not None:
                    raise _Unknown(f"topic {topic} not found")
                partitions = sorted(meta.partitions)
            for p in partitions:
                if p not in ranges:
                    if cancelled():
                        return None
                    ranges[p] = consumer.get_watermark_offsets(
                        TopicPartition(topic, p), timeout=wait
                    )
            return ranges
        except (KafkaException, _Unknown) as exc:
            now = time.monotonic()
            if isinstance(exc, _Unknown) or _is_unknown(exc):
                if now > unknown_until:
                    where = topic if partitions is None else f"{topic} partition(s) {partitions}"
                    raise KafkaAdminError(f"{where} not found: {exc}") from exc
            elif deadline is not None and now > deadline:
                raise KafkaServiceError(f"no watermarks of {topic}: {exc}") from exc
            log.debug("watermarks of %s not read yet: %s", topic, exc)
            time.sleep(_FETCH_WAIT_S)


class _Unknown(Exception):
    """The broker does not know the topic (yet)."""


def _is_unknown(exc: KafkaException) -> bool:
    code = exc.args[0].code() if exc.args and isinstance(exc.args[0], KafkaError) else None
    return code in (
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    )


def list_offsets(
    admin: AdminClient, partitions: list[TopicPartition], spec: OffsetSpec, timeout: float = 5
) -> dict[tuple[str, int], int]:
    """One admin request for the partitions' offsets at ``spec``; missing where the broker
    did not answer in time."""
    futures = admin.list_offsets({tp: spec for tp in partitions}, request_timeout=timeout)
    offsets: dict[tuple[str, int], int] = {}
    for tp, future in futures.items():
        try:
            offsets[(tp.topic, tp.partition)] = future.result().offset
        except KafkaException as exc:
            log.warning("offset of %s/%s unknown (%s)", tp.topic, tp.partition, exc)
    return offsets


def committed_offsets(
    settings: Settings, group: str, partitions: list[TopicPartition], timeout: float = 10.0
) -> dict[int, int]:
    """A group's committed offset of each partition (-1: none), asked by a consumer that
    joins nothing. An AdminClient's ``list_consumer_group_offsets`` crashes the process
    (librdkafka issue 5040: a NOT_COORDINATOR answer, as a broker still loading its group
    coordinator gives, reaches a group handle an admin client does not have; seen here
    1 run in 4 on a new Kafka 3.9 broker); a consumer has that handle."""
    consumer = Consumer(
        {
            **settings.kafka.librdkafka(),
            "group.id": group,
            "enable.auto.commit": False,
            "group.protocol": "classic",  # asks only: OffsetFetch serves either protocol's group
        }
    )
    try:
        answer = consumer.committed(partitions, timeout=timeout)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in answer}
