"""Reading topics outside any consumer group: from a chosen offset to where a topic ends now.

The snapshot topic is read this way by restores, compaction passes, views and the demo; none
of them commits offsets or joins the workers' group.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from dyno_stream.config import Settings
from dyno_stream.core.errors import KafkaAdminError, KafkaServiceError
from dyno_stream.core.snapshots import Snapshot, is_newer, parse_snapshot

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


def read_snapshots(
    settings: Settings,
    advance: Callable[[int], None] = lambda n: None,
    since: dict[int, int] | None = None,
    timeout: float = 120.0,
    keep: Callable[[Snapshot], bool] = lambda snap: True,
) -> dict[str, Snapshot]:
    """Each item's newest snapshot (see ``is_newer``), reading every partition to its end.

    ``since`` starts partitions at those offsets instead of the beginning; ``keep`` filters.
    """
    topic = settings.topics.snapshots
    consumer = topic_reader(settings, "snapshots")
    try:
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for part, (lo, hi) in watermarks(consumer, topic).items():
            start = max(lo, (since or {}).get(part, lo))
            if hi > start:
                ends[part] = hi
                starts.append(TopicPartition(topic, part, start))
        latest: dict[str, Snapshot] = {}
        if not ends:
            return latest
        consumer.assign(starts)
        deadline = time.monotonic() + timeout
        while ends:
            if time.monotonic() > deadline:
                raise KafkaServiceError(f"reading {topic} did not finish within {timeout:.0f}s")
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    continue
                p, off = msg.partition(), msg.offset()
                assert p is not None and off is not None
                snap = parse_snapshot(msg.value())
                if snap is None:
                    log.warning(
                        "skipping a message that is not a snapshot at %s/%s@%s", topic, p, off
                    )
                elif keep(snap) and is_newer(snap, latest.get(snap["item"])):
                    latest[snap["item"]] = snap
                advance(1)
                if p in ends and off + 1 >= ends[p]:
                    del ends[p]
        return latest
    finally:
        consumer.close()
