"""The worker's messages to Kafka: each batch's snapshots (or tombstones) and dead letters,
and what a crash or an outage left pending in a store, published again. Each message joins
its batch's ``Publication``; the ``Checkpoint`` follows them until Kafka has taken them.
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaException

from dyno_stream.config import Settings
from dyno_stream.core.deadletter import H_TRUNCATED, DeadLetter, KafkaHeaders
from dyno_stream.core.snapshots import H_ERASED_ROWS, tombstone_headers
from dyno_stream.store import Item
from dyno_stream.store.partition import PartitionStore, snapshot_bytes
from dyno_stream.stream.checkpoint import Checkpoint, Publication
from dyno_stream.stream.clients import MessageProducer
from dyno_stream.stream.metrics import WorkerMetrics

log = logging.getLogger("dyno_stream.stream.publisher")


class Publisher:
    """Produces snapshots, tombstones and dead letters into their batch's publication."""

    def __init__(
        self,
        settings: Settings,
        producer: MessageProducer,
        checkpoint: Checkpoint,
        metrics: WorkerMetrics,
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.checkpoint = checkpoint
        self.metrics = metrics

    # -- producing ------------------------------------------------------------------------

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        publication: Publication,
        headers: KafkaHeaders | None = None,
        partition: int = -1,
    ) -> None:
        while True:
            try:
                self.producer.produce(
                    topic,
                    value,
                    key,
                    partition=partition,
                    on_delivery=publication.delivered,
                    headers=headers,
                )
                publication.outstanding += 1
                return
            except BufferError:  # local queue full: let deliveries drain, then go on
                self.producer.poll(0.1)

    def snapshot(
        self,
        ps: PartitionStore,
        item: Item,
        offset: int,
        publication: Publication,
        erased: int | None = None,
    ) -> None:
        """Publish the item's snapshot as of ``offset`` (the last op of it applied); for an
        item whose last op deleted it, its tombstone (``tombstone``). For an item the batch
        erased, ``erased`` is the rows removed: the answer says so (``H_ERASED_ROWS``)."""
        if item.deleted and item.timestamp is not None and item.hash is not None:
            self.tombstone(ps, item, offset, publication, erased)
            return
        value = snapshot_bytes(item, ps.topic, ps.partition, offset)
        # to the ops partition that made it: a restore of partition p reads partition p only
        # (a snapshot topic with another partition count stops the worker: worker.py)
        partition = ps.partition
        try:
            self._produce(
                self.settings.topics.snapshots,
                item.name.encode(),
                value,
                publication,
                headers=None if erased is None else [(H_ERASED_ROWS, str(erased).encode())],
                partition=partition,
            )
            publication.snapshots += 1
        except KafkaException as exc:
            # The item outgrew what Kafka takes in one message. Publishing it is impossible,
            # crashing would only loop: say so loudly, and leave a dead letter naming it.
            log.error("snapshot of %r (%d bytes) refused by Kafka: %s", item.name, len(value), exc)
            self.dead_letter(
                DeadLetter(
                    ps.topic,
                    ps.partition,
                    offset,
                    item.name.encode(),
                    None,
                    [],
                    "snapshot-too-large",
                    f"snapshot of {len(value)} bytes not published: {exc}",
                ),
                publication,
            )
            self.metrics.dead_lettered.labels("snapshot-too-large").inc()

    def tombstone(
        self,
        ps: PartitionStore,
        item: Item,
        offset: int,
        publication: Publication,
        erased: int | None = None,
    ) -> None:
        """Publish the tombstone of a deleted item: key = its name, value = null, and in
        headers where it was deleted and its history's summary (no value): Kafka's log
        compaction then drops its snapshots, a view drops it, a restore keeps it deleted.
        An erased item's also says how many rows the erasure removed."""
        assert item.timestamp is not None and item.hash is not None
        headers = tombstone_headers(
            item.timestamp, item.changes, item.hash, item.count, ps.topic, ps.partition, offset
        )
        if erased is not None:
            headers.append((H_ERASED_ROWS, str(erased).encode()))
        self._produce(
            self.settings.topics.snapshots,
            item.name.encode(),
            None,
            publication,
            headers=list(headers),
            partition=ps.partition,
        )
        publication.snapshots += 1

    def dead_letter(self, letter: DeadLetter, publication: Publication) -> None:
        """Produce a dead letter; a letter with ``forward_to`` goes back to the ops topic, to
        its rule partition, as it came (key, bytes, headers)."""
        if letter.forward_to is not None:
            self._produce(
                letter.topic,
                letter.key,
                letter.value,
                publication,
                letter.forward_headers(),
                partition=letter.forward_to,
            )
            return
        topic, headers = self.settings.topics.dead_letter, letter.kafka_headers()
        try:
            self._produce(topic, letter.key, letter.value, publication, headers)
        except KafkaException:  # too large with the original bytes: keep the reason at least
            headers.append((H_TRUNCATED, str(len(letter.value or b"")).encode()))
            self._produce(topic, letter.key, None, publication, headers)

    def republish_pending(self, ps: PartitionStore) -> int:
        """Publish again what a crashed run (or a broker outage) left unacknowledged in the
        partition's store: its pending rows go once Kafka has taken it. Does not wait."""
        snapshots, keys = ps.pending_snapshots()
        erased = ps.pending_erasures() if snapshots else {}
        dead = ps.pending_dead_letters()
        if not snapshots and not dead:
            return 0
        if ps.published_through is not None:
            # Left by this worker's earlier ownership of the partition; its last owner has
            # published newer snapshots since (``Restorer._note_published``).
            ps.clear_pending([*keys, *(k for k, _ in dead)])
            return 0
        publication = self.checkpoint.begin()
        # A snapshot is read from the store as it is now, so it names the last offset the
        # store applied: a later batch whose own pending row was cleared may have changed
        # the item since, and naming the pending row's offset would claim less than the value
        # holds (a restore would then replay those ops again, as late dead letters).
        applied = (ps.next_offset or 0) - 1
        for item in ps.store.current(snapshots):
            offset = max(applied, snapshots[item.name])
            self.snapshot(ps, item, offset, publication, erased.get(item.name))
        for _, letter in dead:
            self.dead_letter(letter, publication)
        publication.clear[(ps.topic, ps.partition)] = [*keys, *(k for k, _ in dead)]
        self.metrics.pending_republished.inc(len(snapshots) + len(dead))
        log.info(
            "publishing again %d snapshots and %d dead letters left pending in %s",
            len(snapshots),
            len(dead),
            ps.label,
        )
        return len(snapshots) + len(dead)
