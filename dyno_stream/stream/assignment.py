"""Assignment: the partitions the group gives this worker, and the state of each.

Rebalances are incremental: only the partitions that move are touched; every other partition
keeps its open store and keeps being processed. Each owned partition is RESTORING (paused,
its store readied by the restorer), RUNNING or PAUSED (Kafka is not taking snapshots), as
``/healthz`` shows. A partition starts by being assigned again at its store's offset.
The states: ``docs/design/worker.md``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from dyno_stream.core.errors import DynoError, PartitionCountError
from dyno_stream.store.partition import PartitionStore
from dyno_stream.stream.checkpoint import Checkpoint, PartitionKey
from dyno_stream.stream.clients import OpsConsumer
from dyno_stream.stream.http import Health
from dyno_stream.stream.metrics import WorkerMetrics
from dyno_stream.stream.publisher import Publisher
from dyno_stream.stream.restorer import RestoreJob, Restorer

log = logging.getLogger("dyno_stream.stream.assignment")


class PartitionState(StrEnum):
    RESTORING = "RESTORING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"


@dataclass(eq=False)
class OwnedPartition:
    topic: str
    partition: int
    state: PartitionState
    job: RestoreJob | None = None
    store: PartitionStore | None = None
    since: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> PartitionKey:
        return (self.topic, self.partition)

    @property
    def label(self) -> str:
        return f"{self.topic}/{self.partition}"

    def tp(self, offset: int | None = None) -> TopicPartition:
        if offset is None:
            return TopicPartition(self.topic, self.partition)
        return TopicPartition(self.topic, self.partition, offset)


def _labels(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}" for tp in partitions) or "none"


class Assignment:
    """Owns the partitions: the rebalance callbacks, their stores, pause and resume."""

    def __init__(
        self,
        consumer: OpsConsumer,
        restorer: Restorer,
        checkpoint: Checkpoint,
        publisher: Publisher,
        metrics: WorkerMetrics,
        health: Health,
        *,
        partition_count: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.consumer = consumer
        self.restorer = restorer
        self.checkpoint = checkpoint
        self.publisher = publisher
        self.metrics = metrics
        self.health = health
        #: the ops topic's partition count, checked against the recorded one (raises
        #: ``PartitionCountError``); None when the metadata did not come
        self._partition_count = partition_count
        self._owned: dict[PartitionKey, OwnedPartition] = {}
        #: set when the ops topic's partition count changed: the loop stops on it
        self.refusal: PartitionCountError | None = None

    # -- what the other parts read --------------------------------------------------------

    def running(self) -> dict[PartitionKey, PartitionStore]:
        """The stores of the partitions being processed."""
        return {
            key: p.store
            for key, p in self._owned.items()
            if p.state is PartitionState.RUNNING and p.store is not None
        }

    def stores(self) -> dict[PartitionKey, PartitionStore]:
        """Every open store (running or paused): for reads, compaction, republishing."""
        return {key: p.store for key, p in self._owned.items() if p.store is not None}

    def states(self) -> dict[str, str]:
        return {p.label: p.state.value for p in self._owned.values()}

    # -- rebalance callbacks (called from inside consumer.poll) ---------------------------

    def on_assign(self, consumer: object, partitions: list[TopicPartition]) -> None:
        """Take the new partitions paused, and hand each to the restorer."""
        self.metrics.rebalances.labels("assign").inc()
        self.metrics.partitions_moved.labels("assigned").inc(len(partitions))
        # Assigned paused first: whatever happens next, the partitions are this worker's
        # (leaving them unassigned would let the client assign them from the committed
        # offsets and deliver them before their stores are ready).
        self.consumer.incremental_assign(partitions)
        self.consumer.pause(partitions)
        try:
            count = self._partition_count()
        except PartitionCountError as exc:
            # Not one partition is processed: the new ones would start stores of items
            # whose history is elsewhere. The loop stops on the refusal.
            self.refusal = exc
            log.error("rebalance: refusing %s: %s", _labels(partitions), exc)
            return
        # before any new store opens: each opens with its share of the budget, divided by
        # every partition held, not by the stores opened so far
        held = self._owned.keys() | {(tp.topic, tp.partition) for tp in partitions}
        self.restorer.budget.hold(len(held))
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if key in self._owned:  # assigned twice (a lost partition given back): keep it
                continue
            job = self.restorer.start(tp.topic, tp.partition, count)
            self._owned[key] = OwnedPartition(tp.topic, tp.partition, PartitionState.RESTORING, job)
        self._changed()
        log.info(
            "rebalance: assigned %s; holding %d partitions", _labels(partitions), len(self._owned)
        )

    def on_revoke(self, consumer: object, partitions: list[TopicPartition]) -> None:
        """Let the partitions go: restores stop; running stores commit and close."""
        self.metrics.rebalances.labels("revoke").inc()
        self.metrics.partitions_moved.labels("revoked").inc(len(partitions))
        self._release(partitions, commit=True)
        log.info(
            "rebalance: revoked %s; holding %d partitions", _labels(partitions), len(self._owned)
        )

    def on_lost(self, consumer: object, partitions: list[TopicPartition]) -> None:
        """The group gave the partitions to others already (this worker missed its session):
        nothing is committed for them."""
        self.metrics.rebalances.labels("lost").inc()
        self.metrics.partitions_moved.labels("lost").inc(len(partitions))
        self._release(partitions, commit=False)
        log.warning(
            "rebalance: lost %s; holding %d partitions", _labels(partitions), len(self._owned)
        )

    def _release(self, partitions: list[TopicPartition], *, commit: bool) -> None:
        owned = [p for tp in partitions if (p := self._owned.get((tp.topic, tp.partition)))]
        for p in owned:
            if p.job is not None and p.store is None:
                self.restorer.cancel(p.job)
        with_stores = [p for p in owned if p.store is not None]
        if with_stores:
            # Batches finish before consume() is called again, but their messages may still
            # be on their way: wait for them, so the next owner does not publish them again.
            if self.checkpoint.in_flight:
                log.info(
                    "rebalance: waiting for %d batches in flight before letting go",
                    self.checkpoint.in_flight,
                )
            try:
                self.checkpoint.advance(wait=True)
            except DynoError as exc:
                # The pending rows stay, in stores the next owner may not share (separate
                # disks): commit nothing, so that its replay from the committed offset
                # publishes those snapshots again (see Restorer._note_published).
                log.error("%s; committing nothing for the partitions let go", exc)
                self.checkpoint.abandon()
                commit = False
            self.checkpoint.delete_acknowledged([p.store for p in with_stores if p.store])
        offsets = [
            p.tp(p.store.next_offset)
            for p in with_stores
            if p.store is not None and p.store.next_offset is not None
        ]
        if commit and offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                log.warning("commit on revoke failed (the stores keep the offsets): %s", exc)
        for p in owned:
            del self._owned[p.key]
            self.checkpoint.forget(p.key)
            self.metrics.consumer_lag.remove(p.topic, str(p.partition))
            if p.store is not None:
                p.store.close()
                log.info("released %s at offset %s", p.label, p.store.next_offset)
        self.consumer.incremental_unassign(partitions)
        self._changed()

    # -- between batches ------------------------------------------------------------------

    def step(self) -> None:
        """Start the partitions whose restores are done. A restore that failed stops the
        worker (raised here): a store that cannot be opened or read needs a person."""
        for p in list(self._owned.values()):
            if p.state is not PartitionState.RESTORING or p.job is None:
                continue
            if not p.job.future.done():
                continue
            ps = p.job.future.result()  # raises what the restore raised
            if ps is None:  # cancelled without a revoke: only at shutdown
                continue
            p.store, p.job = ps, None
            self.publisher.republish_pending(ps)
            self._start(p)

    def _start(self, p: OwnedPartition) -> None:
        assert p.store is not None
        offset = p.store.next_offset
        # Assigned again at the store's offset (a seek right after the first assignment can
        # fail while the fetcher is not started yet; this cannot).
        self.consumer.incremental_unassign([p.tp()])
        self.consumer.incremental_assign([p.tp(OFFSET_BEGINNING if offset is None else offset)])
        self.consumer.resume([p.tp()])
        took = time.monotonic() - p.since
        p.state, p.since = PartitionState.RUNNING, time.monotonic()
        self._changed()
        log.info(
            "started %s from offset %s (ready in %.2fs)",
            p.label,
            "beginning" if offset is None else offset,
            took,
        )

    def pause_all(self) -> None:
        """Stop processing every running partition (Kafka is not taking what is pending)."""
        running = [p for p in self._owned.values() if p.state is PartitionState.RUNNING]
        if running:
            self.consumer.pause([p.tp() for p in running])
        for p in running:
            p.state, p.since = PartitionState.PAUSED, time.monotonic()
        self._changed()

    def resume_all(self) -> None:
        for p in list(self._owned.values()):
            if p.state is PartitionState.PAUSED:
                self._start(p)

    def restoring(self) -> list[RestoreJob]:
        return [p.job for p in self._owned.values() if p.job is not None]

    def close(self) -> None:
        """At shutdown, after the consumer closed: stop restores, close what is left open."""
        for p in list(self._owned.values()):
            if p.job is not None and p.store is None:
                self.restorer.cancel(p.job)
            if p.store is not None:
                p.store.close()
        self._owned.clear()
        self._changed()

    def _changed(self) -> None:
        # before the new partitions' stores open: each opens with its share of the budget
        self.restorer.budget.hold(len(self._owned))
        self.health.partitions = sorted(p.label for p in self._owned.values())
        self.health.partition_states = self.states()
        self.metrics.assigned_partitions.set(len(self._owned))
