"""The worker's Prometheus metrics (served at ``/metrics`` by ``stream.http``).

Each worker has its own registry, so two workers in one process (the tests) do not clash.

A worker of several processes (``[worker] processes``) runs each member with
prometheus-client's multiprocess mode on (``PROMETHEUS_MULTIPROC_DIR``): every value is also
written to a file of its process, and the parent's one ``/metrics`` sums them. Each gauge
says how its processes' values combine (``multiprocess_mode``; ignored in one process):
"livesum" for what each member holds (partitions, batches, lag), "livemax" for what they all
see alike (the topic's partition count); "live" drops a member's value once it has exited.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

#: Upper bounds of ``dyno_clock_skew_seconds``: behind (replays, late ops) and ahead, finest
#: near the default bound of 60 s, where drifting producers show before they are refused.
SKEW_BUCKETS_S = (
    -3600.0, -60.0, -10.0, -1.0, -0.1, 0.0, 0.1, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
    86400.0,
)  # fmt: skip

#: Up to this many values, ``observe_many`` bisects each one: sorting them and bisecting once
#: per bound cost 7 us a batch whatever its size.
_FEW_SKEWS = 12
_SKEW_HELP = "Flake time minus the Kafka message's timestamp of each op (positive: ahead)"


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        # registered in this order, which /metrics keeps
        r = self.registry
        self._event_metrics(r)
        self._batch_metrics(r)
        self._restore_metrics(r)
        self._kafka_metrics(r)

    def _event_metrics(self, r: CollectorRegistry) -> None:
        """Events consumed, applied, dead-lettered, forwarded; snapshots published."""
        self.ops_applied = Counter(
            "dyno_ops_applied", "Op events applied to the store", ["op"], registry=r
        )
        self.events_consumed = Counter(
            "dyno_events_consumed", "Events read from the ops topic", registry=r
        )
        self.dead_lettered = Counter(
            "dyno_events_dead_lettered",
            "Events sent to the dead-letter topic",
            ["reason"],
            registry=r,
        )
        self.forwarded = Counter(
            "dyno_events_forwarded",
            "Events found off their placement rule's partition and forwarded to it, by the "
            "partitioner that evidently placed them",
            ["partitioner"],
            registry=r,
        )
        self.snapshots_published = Counter(
            "dyno_snapshots_published", "Item snapshots acknowledged by Kafka", registry=r
        )

    def _batch_metrics(self, r: CollectorRegistry) -> None:
        """Batches in flight and their time and size; lag, partitions held, caches."""
        self.batches_in_flight = Gauge(
            "dyno_batches_in_flight",
            "Batches applied whose snapshots and dead letters Kafka has not all acknowledged",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.batch_seconds = Histogram(
            "dyno_batch_seconds",
            # what BatchProcessor.process times: no Kafka acknowledgement or commit is awaited,
            # except an older batch's when the batches in flight are past their bound
            "Seconds to validate, apply and produce one consumed batch (its snapshots and dead"
            " letters handed to the producer, not yet acknowledged)",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.batch_size = Histogram(
            "dyno_batch_events",
            "Events per batch",
            registry=r,
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
        )
        self.consumer_lag = PartitionGauge(
            "dyno_consumer_lag",
            "High watermark minus next offset",
            ["topic", "partition"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.assigned_partitions = Gauge(
            "dyno_assigned_partitions",
            "Partitions this worker holds",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.state_cache_bytes = Gauge(
            "dyno_state_cache_bytes",
            "Estimated bytes of the item states every partition store caches (within "
            "dyno_state_cache_budget_bytes, one batch's states aside)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.state_cache_budget_bytes = Gauge(
            "dyno_state_cache_budget_bytes",
            "The state caches' part of worker.memory_mb",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.compacted = Counter(
            "dyno_items_compacted",
            "Items flattened by the worker's scheduled compaction",
            registry=r,
        )

    def _restore_metrics(self, r: CollectorRegistry) -> None:
        """Restores from the snapshot topic, rebalances and partitions moved."""
        self.restored_items = Counter(
            "dyno_restored_items", "Items restored from the snapshot topic", registry=r
        )
        self.restoring_partitions = Gauge(
            "dyno_restoring_partitions",
            "Partitions being restored from the snapshot topic now",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.restore_seconds = Histogram(
            "dyno_restore_seconds",
            "Time from a partition's assignment to its restored store",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800),
            registry=r,
        )
        self.rebalances = Counter(
            "dyno_rebalances", "Rebalance callbacks, by kind", ["kind"], registry=r
        )
        self.partitions_moved = Counter(
            "dyno_partitions_moved",
            "Partitions assigned to, revoked from or lost by this worker",
            ["change"],
            registry=r,
        )

    def _kafka_metrics(self, r: CollectorRegistry) -> None:
        """Kafka's reachability, the ops topic's partitions, republished rows, skew."""
        self.kafka_connected = Gauge(
            "dyno_kafka_connected",
            "1 while Kafka's brokers answer, 0 during an outage (see /healthz's reason)",
            registry=r,
        )
        self.kafka_connected.set(1)
        self.ops_partitions = Gauge(
            "dyno_ops_partitions",
            "Partitions the ops topic has now",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.ops_partitions_recorded = Gauge(
            "dyno_ops_partitions_recorded",
            "Partitions the ops topic had when its stores were built (the snapshot topic's "
            "count); a worker seeing another count stops (see dyno-stream repartition)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.pending_republished = Counter(
            "dyno_pending_republished",
            "Snapshots and dead letters published again after a restart",
            registry=r,
        )
        self.clock_skew = SkewHistogram(r, SKEW_BUCKETS_S)


class PartitionGauge(Gauge):
    """A gauge per partition whose ``remove`` also holds in multiprocess mode.

    There a removed series would stay in its process's file with its last value, and the
    parent would go on summing it with the value of the partition's new owner: it is set to
    0 instead (prometheus-client cannot remove it from the file, and warns if asked to).
    """

    def remove(self, *labelvalues: Any) -> None:
        if values.ValueClass._multiprocess:
            self.labels(*labelvalues).set(0)
        else:
            super().remove(*labelvalues)


class SkewHistogram(Collector):
    """``dyno_clock_skew_seconds``: flake time minus Kafka message time, one value per op.

    The worker measures every op (about 50,000 a second), and prometheus-client's
    ``Histogram.observe`` costs about 1 us a call here: 5% of the worker. So a batch's skews
    are handed over in one call (``observe_many``), sorted once and counted per bucket by
    bisection: 0.03-0.07 us per value, measured (see the README's clock-skew section).
    """

    name = "dyno_clock_skew_seconds"

    def __init__(self, registry: CollectorRegistry, buckets_s: tuple[float, ...]) -> None:
        self._bounds_ms = [b * 1000 for b in buckets_s]
        self._labels = [repr(float(b)) for b in buckets_s]  # "60.0", as Histogram writes it
        #: observations per bucket: above the bound before, at or below its own ("+Inf" last)
        self._counts = [0] * (len(buckets_s) + 1)
        self._lock = threading.Lock()
        # In multiprocess mode the counts go to this process's file too, one value per bucket
        # as prometheus-client's Histogram keeps them there (not cumulative; "+Inf" last), so
        # the parent's /metrics sums them; a collector alone is seen by its own process only.
        self._shared = (
            [
                values.ValueClass(
                    "histogram",
                    self.name,
                    f"{self.name}_bucket",
                    ("le",),
                    (label,),
                    _SKEW_HELP,
                )
                for label in (*self._labels, "+Inf")
            ]
            if values.ValueClass._multiprocess
            else []
        )
        registry.register(self)

    def observe_many(self, skews_ms: list[int]) -> None:
        if not skews_ms:
            return
        bounds, counts = self._bounds_ms, self._counts
        if len(skews_ms) <= _FEW_SKEWS:  # a moderate load's batch: a bisection per value
            with self._lock:
                for skew in skews_ms:
                    counts[bisect.bisect_left(bounds, skew)] += 1
            for skew in skews_ms if self._shared else ():
                self._shared[bisect.bisect_left(bounds, skew)].inc(1)
            return
        ordered = sorted(skews_ms)  # then a bisection per bound
        at_or_below = [*(bisect.bisect_right(ordered, bound) for bound in bounds), len(ordered)]
        added = [n - below for n, below in zip(at_or_below, [0, *at_or_below], strict=False)]
        with self._lock:
            for i, n in enumerate(added):
                counts[i] += n
        for value, n in zip(self._shared, added, strict=False):  # none unless multiprocess
            if n:
                value.inc(n)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            cumulative = list(itertools.accumulate(self._counts))
        count = cumulative.pop()
        family = HistogramMetricFamily(self.name, _SKEW_HELP, labels=[])
        # As prometheus-client's Histogram writes one with negative buckets: _count but no
        # _sum (a sum that can fall is no counter). The family alone would drop both.
        family.add_metric([], [*zip(self._labels, cumulative, strict=True), ("+Inf", count)], None)
        family.add_sample(f"{self.name}_count", {}, count)
        yield family
