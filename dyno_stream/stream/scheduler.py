"""Scheduled work between batches: compaction when due, lag every few seconds."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from croniter import croniter

from dyno_stream.config import Settings
from dyno_stream.core.errors import DynoError, PublishError
from dyno_stream.kafka.reading import list_offsets
from dyno_stream.store.compaction_policy import (
    fold_before,
    fold_cutoff,
    items_to_flatten,
    summaries,
)
from dyno_stream.store.partition import PartitionStore
from dyno_stream.stream.assignment import Assignment
from dyno_stream.stream.checkpoint import Checkpoint
from dyno_stream.stream.clients import OpsConsumer
from dyno_stream.stream.metrics import WorkerMetrics
from dyno_stream.stream.publisher import Publisher

log = logging.getLogger("dyno_stream.stream.scheduler")

_LAG_EVERY_S = 5.0


class Scheduler:
    """What runs on the loop between batches, each at its own pace."""

    def __init__(
        self,
        settings: Settings,
        consumer: OpsConsumer,
        admin: AdminClient,
        assignment: Assignment,
        checkpoint: Checkpoint,
        publisher: Publisher,
        metrics: WorkerMetrics,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.admin = admin
        self.assignment = assignment
        self.checkpoint = checkpoint
        self.publisher = publisher
        self.metrics = metrics
        self._next_compaction: float | None = None
        self._last_lag = 0.0

    def run_due(self) -> None:
        """What is due between two batches: the state cache's gauge, compaction on its
        schedule, lag every few seconds."""
        # set each turn, not read at scrape time (``set_function``): with --processes the
        # children's gauges reach /metrics only through the values they set
        self.metrics.state_cache_bytes.set(self.assignment.restorer.budget.used_state_bytes())
        if self._compaction_due():
            try:
                self.compact()
            except PublishError:
                raise  # in-flight batches failed too: the loop publishes them again
            except DynoError as exc:  # scheduled work must not stop the worker
                log.error("scheduled compaction failed: %s", exc)
        now = time.monotonic()
        if now - self._last_lag >= _LAG_EVERY_S:
            self._last_lag = now
            self._update_lag()

    def _update_lag(self) -> None:
        for (topic, partition), ps in self.assignment.stores().items():
            try:
                # cached: the high watermark that came with the last fetch, no round trip
                _low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
            if high < 0:
                continue  # nothing fetched yet
            lag = max(0, high - (ps.next_offset or 0))
            self.metrics.consumer_lag.labels(topic, str(partition)).set(lag)

    def _compaction_due(self) -> bool:
        c = self.settings.compaction
        now = time.time()
        if self._next_compaction is None:
            if c.cron:
                self._next_compaction = croniter(c.cron, now).get_next(float)
            elif c.interval_s:
                self._next_compaction = now + c.interval_s
            else:
                return False
            return False
        if now < self._next_compaction:
            return False
        self._next_compaction = None  # scheduled again on the next turn
        return True

    def compact(self) -> None:
        """Flatten long histories in this worker's running stores, between two batches.

        The worker owns these stores, so it folds directly and publishes the items' new
        snapshots (only ``count`` changes). Each partition folds only rows older than its own
        cut-off (``fold_cutoff``): a partition behind its backlog may still have on-time ops
        waiting in Kafka, and those must find their rows unfolded.
        """
        c = self.settings.compaction
        started = time.monotonic()
        now = time.time()  # before asking for the ends: an op appended after came later
        running = list(self.assignment.running().values())
        cutoffs = {
            label: fold_cutoff(through, now, c.fold_after_s)
            for label, through in self._consumed_through(running, now).items()
        }
        stores = [ps for ps in running if ps.label in cutoffs]
        owner: dict[str, PartitionStore] = {}
        seen = []
        for ps in stores:
            for summary in summaries(ps.store, c.min_rows):
                owner[summary["item"]] = ps
                seen.append(summary)
        # the policy of a pass: prefix, longest first, the cap; deleted items whose deletion
        # is older than the lowest cut-off (each partition folds by its own below)
        chosen, _ = items_to_flatten(seen, c, min(cutoffs.values(), default=None))
        by_store: dict[str, list[str]] = {}
        for cand in chosen:
            by_store.setdefault(owner[cand.name].label, []).append(cand.name)
        changed = {
            ps.label: fold_before(ps.store, by_store.get(ps.label, []), cutoffs[ps.label])
            for ps in stores
        }
        folded = sum(map(len, changed.values()))
        publication = self.checkpoint.begin()
        for ps in stores:
            for item in ps.store.current(changed.get(ps.label, [])):
                self.publisher.snapshot(ps, item, (ps.next_offset or 1) - 1, publication)
        self.checkpoint.advance(wait=True)
        self.metrics.compacted.inc(folded)
        log.info(
            "scheduled compaction: %d items flattened in %.2fs", folded, time.monotonic() - started
        )

    def _consumed_through(self, stores: list[PartitionStore], now: float) -> dict[str, float]:
        """For each partition, a time up to which every op of it has been consumed (none for
        a partition behind its backlog that has consumed nothing since it was opened).

        ``now`` for a partition whose store holds everything up to its end; otherwise the
        Kafka timestamp of the newest message consumed. A partition that the last fetch
        already showed behind is behind; the others' ends are asked of the broker in one
        request (the fetch's cached figure misses what was appended since: an op still
        unconsumed). Asking the consumer instead, one partition at a time, waited behind its
        fetches: about 0.5 s a partition, the whole pass on the main loop.
        """
        maybe_caught_up = []
        for ps in stores:
            tp = TopicPartition(ps.topic, ps.partition)
            try:
                _low, cached_high = self.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                cached_high = -1
            if cached_high <= (ps.next_offset or 0):  # unknown (negative) or at the end
                maybe_caught_up.append(tp)
        ends = self._partition_ends(maybe_caught_up)
        out: dict[str, float] = {}
        for ps in stores:
            end = ends.get((ps.topic, ps.partition))
            if end is not None and (ps.next_offset or 0) >= end:
                out[ps.label] = now
            elif ps.consumed_ms is not None:
                out[ps.label] = ps.consumed_ms / 1000
        return out

    def _partition_ends(self, partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
        """The partitions' high watermarks as the broker has them now; those it did not give
        within a few seconds are missing (and fold by their consumed time)."""
        if not partitions:
            return {}
        return list_offsets(self.admin, partitions, OffsetSpec.latest())  # type: ignore[no-untyped-call]
