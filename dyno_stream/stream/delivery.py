"""Delivery: the snapshots and dead letters of each batch on their way to Kafka, and what
becomes true once Kafka has taken them (steps 3 and 4 of the commit order in
``store.partition``): the batch's pending rows can go, its offsets be committed.

Batches are not waited for one by one: while the next is processed, earlier ones are on
their way, up to ``MAX_IN_FLIGHT`` full batches' worth of events (``batch_size`` each) and
``MAX_IN_FLIGHT_BATCHES`` batches (waiting for the acknowledgements after every batch left
the worker idle for a round trip per batch). They complete in batch order.

The bound counts events, not batches: under a moderate load a batch holds a few events, and a
bound of 3 batches made the loop wait for an acknowledgement every few milliseconds; each
slow acknowledgement (the broker busy for a moment) then stopped the loop, and the ops that
arrived meanwhile were processed only once it came (issue 14: the latency tail).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from dyno_stream.config import Settings
from dyno_stream.core.deadletter import H_TRUNCATED, DeadLetter, KafkaHeaders
from dyno_stream.core.errors import PublishError
from dyno_stream.core.snapshots import H_ERASED_ROWS, tombstone_headers
from dyno_stream.store import Item
from dyno_stream.store.partition import PartitionStore, snapshot_bytes
from dyno_stream.stream.clients import MessageProducer, OpsConsumer
from dyno_stream.stream.metrics import WorkerMetrics

log = logging.getLogger("dyno_stream.stream.delivery")

#: Full batches (``batch_size`` events each) whose messages may be on their way to Kafka
#: while the next one is processed.
MAX_IN_FLIGHT = 3
#: Batches of any size on their way: their bookkeeping (pending keys, offsets) stays bounded
#: when batches hold a few events each.
MAX_IN_FLIGHT_BATCHES = 256

PartitionKey = tuple[str, int]


@dataclass(eq=False)
class Publication:
    """One batch's messages on their way to Kafka, and what their acknowledgement settles:
    the pending rows to delete (``clear``) and the offsets to commit (``commit``)."""

    started: float = field(default_factory=time.monotonic)
    #: the batch's consumed events (what ``MAX_IN_FLIGHT`` counts)
    events: int = 0
    outstanding: int = 0
    snapshots: int = 0
    errors: list[str] = field(default_factory=list)
    clear: dict[PartitionKey, list[bytes]] = field(default_factory=dict)
    commit: list[TopicPartition] = field(default_factory=list)

    def delivered(self, err: KafkaError | None, msg: Message) -> None:
        self.outstanding -= 1
        if err is not None:
            self.errors.append(f"{msg.topic()}: {err}")


class Delivery:
    """Produces snapshots and dead letters, completes batches in order, commits offsets."""

    def __init__(
        self,
        settings: Settings,
        producer: MessageProducer,
        metrics: WorkerMetrics,
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.metrics = metrics
        self._in_flight: deque[Publication] = deque()
        self._events_in_flight = 0
        self._max_events_in_flight = MAX_IN_FLIGHT * settings.worker.batch_size
        #: per partition: pending rows whose messages Kafka has taken, not yet deleted
        self._acknowledged: dict[PartitionKey, list[bytes]] = {}
        #: acknowledged offsets not yet committed to Kafka
        self._to_commit: dict[PartitionKey, TopicPartition] = {}
        self._committed_at = time.monotonic()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def publication(self, events: int = 0) -> Publication:
        """A new batch's publication (of ``events`` consumed events), completed after those
        before it."""
        publication = Publication(events=events)
        self._in_flight.append(publication)
        self._events_in_flight += events
        self.metrics.batches_in_flight.set(len(self._in_flight))
        return publication

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
        publication = self.publication()
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

    # -- completing -----------------------------------------------------------------------

    def complete(self, wait: bool = False) -> None:
        """Complete every batch, oldest first, whose messages are all acknowledged: its
        pending rows are deleted with the partition's next write, its offsets queued for
        committing.

        With ``wait``, wait for all of them; otherwise only for the oldest ones beyond the
        bounds (``room``). A batch not acknowledged within ``publish_timeout_s`` of its
        start, or with a failed delivery, raises ``PublishError``: its pending rows stay,
        and its messages are published again (``republish_pending``).
        """
        self.producer.poll(0)  # run the delivery callbacks that are due
        timeout = self.settings.worker.publish_timeout_s
        try:
            while self._in_flight:
                oldest = self._in_flight[0]
                deadline = oldest.started + timeout
                if oldest.outstanding and not oldest.errors:
                    if not wait and self.room() and time.monotonic() < deadline:
                        break  # still on its way, and the pipeline has room
                    while oldest.outstanding and not oldest.errors and time.monotonic() < deadline:
                        self.producer.poll(0.1)
                self._in_flight.popleft()
                self._events_in_flight -= oldest.events
                if oldest.outstanding or oldest.errors:
                    raise PublishError(
                        f"{oldest.outstanding} messages unacknowledged after {timeout:.0f}s, "
                        f"{len(oldest.errors)} failed ({'; '.join(oldest.errors[:3])}); the "
                        "batch stays pending and is published again"
                    )
                for tp, keys in oldest.clear.items():
                    self._acknowledged.setdefault(tp, []).extend(keys)
                for offset in oldest.commit:
                    self._to_commit[(offset.topic, offset.partition)] = offset
                if oldest.snapshots:
                    self.metrics.snapshots_published.inc(oldest.snapshots)
        finally:
            self.metrics.batches_in_flight.set(len(self._in_flight))

    def room(self) -> bool:
        """Whether the batches in flight are within the bounds: ``MAX_IN_FLIGHT`` full
        batches' worth of events and ``MAX_IN_FLIGHT_BATCHES`` batches."""
        return (
            self._events_in_flight <= self._max_events_in_flight
            and len(self._in_flight) <= MAX_IN_FLIGHT_BATCHES
        )

    def abandon(self) -> None:
        """Forget the batches in flight after a failed one: their pending rows stay in the
        stores and are published again with the rest."""
        self._in_flight.clear()
        self._events_in_flight = 0
        self.metrics.batches_in_flight.set(0)

    def acknowledged(self, tp: PartitionKey) -> list[bytes]:
        """The partition's acknowledged pending rows, handed over to be deleted by the
        partition's next write (they are forgotten here)."""
        return self._acknowledged.pop(tp, [])

    def clear_acknowledged(self, stores: Collection[PartitionStore]) -> None:
        """Delete acknowledged pending rows on a write of their own (when idle, or before a
        partition is let go, so that its next owner does not publish them again)."""
        for ps in stores:
            keys = self.acknowledged((ps.topic, ps.partition))
            if keys:
                ps.clear_pending(keys)

    def forget(self, tp: PartitionKey) -> None:
        """A partition let go: its acknowledged rows and offsets are its next owner's now."""
        self._acknowledged.pop(tp, None)
        self._to_commit.pop(tp, None)

    def commit_acknowledged(self, consumer: OpsConsumer, held: Collection[PartitionKey]) -> None:
        """Commit acknowledged offsets, at most every ``commit_interval_s``: one asynchronous
        commit of the newest acknowledged offset of each partition this worker still holds.

        Only lag tools read them (the stores keep the offsets that count); a commit per batch
        cost the broker as much work as the batch's snapshots.
        """
        now = time.monotonic()
        if not self._to_commit or now - self._committed_at < self.settings.worker.commit_interval_s:
            return
        offsets = [offset for tp, offset in self._to_commit.items() if tp in held]
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=True)
            except KafkaException as exc:  # e.g. no coordinator for a moment: next time
                log.warning("commit failed (the stores keep the offsets): %s", exc)
                return
        self._to_commit.clear()
        self._committed_at = now
