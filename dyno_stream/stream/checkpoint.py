"""The commit protocol's bookkeeping, in one place: each batch's messages in flight, then
acknowledged (its pending rows can go), then committed (its offsets told to Kafka). Steps 3
and 4 of the commit order in ``store.partition``; ``docs/design/commit-order.md`` has it all.

Batches are not waited for one by one: while the next is processed, earlier ones are on
their way, up to ``MAX_IN_FLIGHT`` full batches' worth of events and
``MAX_IN_FLIGHT_BATCHES`` batches. The bound counts events, not batches: under a moderate
load a batch holds a few events, and a bound of a few batches stopped the loop at each
slow acknowledgement. Batches complete in batch order.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from dyno_stream.config import Settings
from dyno_stream.core.errors import PublishError
from dyno_stream.store.partition import PartitionStore
from dyno_stream.stream.clients import MessageProducer, OpsConsumer
from dyno_stream.stream.metrics import WorkerMetrics

log = logging.getLogger("dyno_stream.stream.checkpoint")

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


class Checkpoint:
    """In flight -> acknowledged -> committed, for every batch, oldest first."""

    def __init__(
        self,
        settings: Settings,
        producer: MessageProducer,
        consumer: OpsConsumer,
        metrics: WorkerMetrics,
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.consumer = consumer
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

    def begin(self, events: int = 0) -> Publication:
        """A new batch's publication (of ``events`` consumed events), completed after those
        before it."""
        publication = Publication(events=events)
        self._in_flight.append(publication)
        self._events_in_flight += events
        self.metrics.batches_in_flight.set(len(self._in_flight))
        return publication

    # -- in flight -> acknowledged ------------------------------------------------------------

    def advance(self, wait: bool = False) -> None:
        """Move every batch, oldest first, whose messages are all acknowledged on: its
        pending rows are deleted with the partition's next write, its offsets queued for
        committing.

        With ``wait``, wait for all of them; otherwise only for the oldest ones beyond the
        bounds (``within_bounds``). A batch not acknowledged within ``publish_timeout_s`` of
        its start, or with a failed delivery, raises ``PublishError``: its pending rows stay,
        and its messages are published again (``Publisher.republish_pending``).
        """
        self.producer.poll(0)  # run the delivery callbacks that are due
        timeout = self.settings.worker.publish_timeout_s
        try:
            while self._in_flight:
                oldest = self._in_flight[0]
                deadline = oldest.started + timeout
                if oldest.outstanding and not oldest.errors:
                    if not wait and self.within_bounds() and time.monotonic() < deadline:
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

    def within_bounds(self) -> bool:
        """Whether the batches in flight are within the bounds: ``MAX_IN_FLIGHT`` full
        batches' worth of events and ``MAX_IN_FLIGHT_BATCHES`` batches."""
        return (
            self._events_in_flight <= self._max_events_in_flight
            and len(self._in_flight) <= MAX_IN_FLIGHT_BATCHES
        )

    def settle(self, stores: Collection[PartitionStore]) -> None:
        """Wait for every batch in flight, then delete the acknowledged pending rows of
        ``stores`` on a write of their own (when idle, before a partition is let go, at a
        stop)."""
        self.advance(wait=True)
        self.delete_acknowledged(stores)

    def abandon(self) -> None:
        """Forget the batches in flight after a failed one: their pending rows stay in the
        stores and are published again with the rest."""
        self._in_flight.clear()
        self._events_in_flight = 0
        self.metrics.batches_in_flight.set(0)

    # -- acknowledged -> deleted ----------------------------------------------------------------

    def take_acknowledged(self, tp: PartitionKey) -> list[bytes]:
        """The partition's acknowledged pending rows, handed over to be deleted by the
        partition's next write (they are forgotten here)."""
        return self._acknowledged.pop(tp, [])

    def delete_acknowledged(self, stores: Collection[PartitionStore]) -> None:
        """Delete acknowledged pending rows on a write of their own (so that a partition's
        next owner does not publish them again)."""
        for ps in stores:
            keys = self.take_acknowledged((ps.topic, ps.partition))
            if keys:
                ps.clear_pending(keys)

    def forget(self, tp: PartitionKey) -> None:
        """A partition let go: its acknowledged rows and offsets are its next owner's now."""
        self._acknowledged.pop(tp, None)
        self._to_commit.pop(tp, None)

    # -- acknowledged -> committed --------------------------------------------------------------

    def commit(self, held: Collection[PartitionKey]) -> None:
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
                self.consumer.commit(offsets=offsets, asynchronous=True)
            except KafkaException as exc:  # e.g. no coordinator for a moment: next time
                log.warning("commit failed (the stores keep the offsets): %s", exc)
                return
        self._to_commit.clear()
        self._committed_at = now
