"""Reading topics outside any consumer group: from a chosen offset to where a topic ends now.

The snapshot topic is read this way by restores, compaction passes, views and the demo; none
of them commits offsets or joins the workers' group.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator

from confluent_kafka import Consumer, Message, TopicPartition

from dyno_stream.config import Settings
from dyno_stream.core.errors import KafkaAdminError, KafkaServiceError
from dyno_stream.core.snapshots import SnapshotDict, is_newer, parse_snapshot

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
                snap = parse_snapshot(msg.value())
                if snap is None:
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
