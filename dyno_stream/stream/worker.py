"""The stream worker: Kafka ops -> validate -> apply -> snapshot -> commit.

One worker process consumes the ops topic in a consumer group. The loop is short; each step
belongs to one part, all built in ``Worker.__init__``: ``Assignment`` (partitions and their
states), ``Restorer`` (a new partition's store, on its own thread), ``BatchProcessor``
(validate, apply in one store transaction), ``Publisher`` (snapshots and dead letters to
Kafka), ``Checkpoint`` (each batch in flight, acknowledged, committed), ``Scheduler``
(compaction, lag) and ``StoreReads`` (HTTP reads). Bad events never stop the worker: each
goes to the dead-letter topic with its reason. The parts and the commit order:
``docs/design/worker.md`` and ``docs/design/commit-order.md``.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from confluent_kafka import KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from dyno_stream.config import Settings, advertised_http, consumer_config, producer_config
from dyno_stream.core.errors import (
    DynoError,
    KafkaUnreachableError,
    PartitionCountError,
    PublishError,
    StoreWriteError,
)
from dyno_stream.core.events import Snapshot
from dyno_stream.kafka.connection import ConnectionWatch
from dyno_stream.kafka.group_protocol import (
    GroupProtocolChoice,
    check_group_error,
    resolve_group_protocol,
)
from dyno_stream.kafka.members import OwnerDirectory
from dyno_stream.kafka.partitioning import PlacementRule
from dyno_stream.kafka.reading import committed_offsets, list_offsets, read_restore_snapshots
from dyno_stream.kafka.security import AuthWatch
from dyno_stream.kafka.topics import (
    PartitionCountWatch,
    SnapshotPartitioning,
    check_partition_count,
    ensure_topics,
    ops_partition_counts,
)
from dyno_stream.store.partition import remove_stale_copies
from dyno_stream.stream.assignment import Assignment
from dyno_stream.stream.checkpoint import Checkpoint
from dyno_stream.stream.clients import GroupConsumer
from dyno_stream.stream.http import Health, HttpEndpoint, RoutedReads
from dyno_stream.stream.metrics import WorkerMetrics
from dyno_stream.stream.processing import BatchProcessor
from dyno_stream.stream.publisher import Publisher
from dyno_stream.stream.reads import StoreReads
from dyno_stream.stream.restorer import Restorer
from dyno_stream.stream.scheduler import Scheduler

log = logging.getLogger("dyno_stream.stream.worker")

#: Container objects allocated (net) between two young-generation collections.
_GC_THRESHOLD = 200_000
#: The longest wait between two attempts to publish what an outage left pending.
_OUTAGE_RETRY_MAX_S = 30.0


@dataclass
class _Outage:
    """Kafka stopped taking snapshots: every partition is paused, and what the stores hold
    pending is published again, with a growing pause between attempts, until it is taken."""

    error: PublishError
    delay: float = 0.5
    retry_at: float = field(default_factory=time.monotonic)
    attempt_in_flight: bool = False


class Worker:
    """Runs until stopped (``stop()``, SIGTERM or SIGINT); ``run()`` returns the exit status."""

    def __init__(self, settings: Settings, *, handle_signals: bool = True) -> None:
        self.settings = settings
        self.metrics = WorkerMetrics()
        self.health = Health()
        self._stop = threading.Event()
        self._handle_signals = handle_signals
        #: whether Kafka answers: said in the log, on /healthz and in dyno_kafka_connected
        self.connection = ConnectionWatch(settings.kafka)
        self._auth = AuthWatch(settings.kafka, also=self.connection.error)
        self.http: HttpEndpoint | None = None
        self._outage: _Outage | None = None
        self._refusal: PartitionCountError | None = None
        #: where each item's messages belong; the count comes with the partition checks
        self.placement = PlacementRule(settings.kafka.partitioner)
        #: where this worker's endpoint is reached, told to the group (``kafka.members``)
        self.advertised: str | None = None
        #: the group protocol in force, once ``run`` has asked the broker
        self.group_protocol = GroupProtocolChoice("classic", "not started")
        self._directory: OwnerDirectory | None = None
        self._build_parts()

    def _build_parts(self) -> None:
        """The clients and the parts of the loop (see the module's docstring). The consumer
        opens in ``run``, once the group protocol and the HTTP address are known."""
        s = self.settings
        # A refused login or TLS handshake stops the worker (see dyno_stream.kafka.security).
        self._producer = Producer({**producer_config(s), **self._auth.config()})
        # metadata and offsets for the watch, restores and compaction: a connection apart
        self._admin = AdminClient({**s.kafka.librdkafka(), **self._auth.config()})
        self._consumer = GroupConsumer()
        self.checkpoint = Checkpoint(s, self._producer, self._consumer, self.metrics)
        self.publisher = Publisher(s, self._producer, self.checkpoint, self.metrics)
        self.restorer = Restorer(
            s, self.metrics, self._read_snapshots, self._low_watermark, self._committed_offset
        )
        self.metrics.state_cache_budget_bytes.set(self.restorer.budget.state_bytes)
        self.assignment = Assignment(
            self._consumer,
            self.restorer,
            self.checkpoint,
            self.publisher,
            self.metrics,
            self.health,
            partition_count=self._check_partitions,
        )
        self.processor = BatchProcessor(
            s, self.checkpoint, self.publisher, self.metrics, self.placement
        )
        self.scheduler = Scheduler(
            s,
            self._consumer,
            self._admin,
            self.assignment,
            self.checkpoint,
            self.publisher,
            self.metrics,
        )
        #: the HTTP endpoint's reads, over whatever stores are open
        self.reads = StoreReads(
            self.assignment.stores,
            lambda: self.health.partition_states,
            topic=s.topics.ops,
            directory=lambda: self._directory,
            self_address=lambda: self.advertised,
            read_timeout_s=s.worker.read_timeout_s,
            max_page=s.worker.http_max_page,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stop.is_set():
            log.warning("second signal: exiting at once")
            os._exit(128 + signum)
        log.info("signal %s: finishing the batch, then stopping", signal.Signals(signum).name)
        self._stop.set()

    def run(self) -> int:
        s = self.settings
        log.info(
            "worker starting",
            extra={
                "kafka": s.kafka.redacted(),
                "topics": s.topics.model_dump(),
                "group": s.worker.group_id,
                "group_protocol": s.worker.group_protocol,
                "data_dir": str(s.worker.data_dir),
            },
        )
        if self._handle_signals and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        if s.topics.create_missing:
            ensure_topics(s)
        # before any member joins: a protocol the broker does not serve joins nothing and
        # says nothing, so an explicit one it lacks stops the worker here (ConfigError)
        self.group_protocol = self._resolve_group_protocol()
        log.info(
            "group protocol %s: %s",
            self.group_protocol.protocol,
            self.group_protocol.reason,
            extra={"group_protocol": self.group_protocol.protocol},
        )
        s.worker.data_dir.mkdir(parents=True, exist_ok=True)
        # stores set aside by restores a crash cut short, of partitions now anywhere
        remove_stale_copies(s.worker.data_dir / s.topics.ops)
        self._connect()
        # Everything allocated so far (modules, pydantic's validators) lives as long as the
        # process: keep the collector from walking it again and again (latency tails).
        gc.freeze()
        # A batch holds tens of thousands of young objects (messages, models, changes) until
        # it ends, and reference counting frees them then. At the default threshold (700)
        # the collector ran dozens of times per batch, promoted the whole batch into the old
        # generations and walked them again: 15-20% of the worker's time. Collect only when
        # the live objects grow by more than a few batches' worth.
        gc.set_threshold(_GC_THRESHOLD, 10, 10)
        self.health.state = "running"
        try:
            self._loop()
        except StoreWriteError as exc:  # a full disk is not one event's fault: stop, loudly
            log.error(
                "%s; stopping without committing the batch. Restart the worker once the disk "
                "is fixed: it resumes from the offset the store holds, nothing lost",
                exc,
            )
            raise
        except PartitionCountError as exc:
            self._refuse(exc)
            log.error("%s; stopping, committing nothing past what the stores hold", exc)
            raise
        finally:
            if self._refusal is None:  # a refusal stays what /healthz says
                self.health.state = "stopping"
            self._shutdown()
        log.info("worker stopped")
        return 0

    def _resolve_group_protocol(self) -> GroupProtocolChoice:
        """The group protocol the broker serves (``kafka.group_protocol``). A broker that does
        not answer yet is waited for, said as an outage is, as a running worker rides one
        out; a stop meanwhile ends the wait with the reason."""
        while True:
            try:
                return resolve_group_protocol(self.settings)
            except KafkaUnreachableError as exc:
                self.connection.lost(exc.why)
                if self._stop.wait(1.0):
                    raise
                self.connection.tick()

    def _connect(self) -> None:
        """The partition-count watch, the HTTP endpoint, then the consumer joins the group."""
        s = self.settings
        self._partition_watch = PartitionCountWatch(
            s,
            self._admin,
            stop_when=lambda: self._auth.failure is not None,
            on_counts=self._partition_counts_seen,
        ).start()
        # The endpoint first: its bound port goes into the consumer's client.id.
        self._serve_http()
        conf = consumer_config(s, self.advertised, protocol=self.group_protocol.protocol)
        consumer = self._consumer.open({**conf, **self._auth.config()})
        consumer.subscribe(
            [s.topics.ops],
            on_assign=self.assignment.on_assign,
            on_revoke=self.assignment.on_revoke,
            on_lost=self.assignment.on_lost,
        )

    def _serve_http(self) -> None:
        """/metrics, /healthz and reads, on threads of their own (``stream.http``); reads
        route by the group's description, read on a connection of their own."""
        s = self.settings
        w = s.worker
        if not w.http_port:  # a child of ``--processes``: the parent's address, if any
            self.advertised = w.advertised_http
            return
        self.http = HttpEndpoint(
            w.http_host,
            w.http_port,
            self.metrics,
            self.health,
            self.reads.item,
            self.reads.rows,
            self.routed_reads(),
        )
        self.advertised = advertised_http(w, self.http.port)
        self._directory = OwnerDirectory(s, {**s.kafka.librdkafka(), **self._auth.config()})
        self.http.start()
        log.info(
            "http endpoint at %s, advertised as %s (/metrics /healthz /items /rows)",
            self.http.address,
            self.advertised,
        )

    def routed_reads(self) -> RoutedReads:
        """What the endpoint answers for ``/items``, and how it guards reads (the token, the
        read limit)."""
        w = self.settings.worker
        return RoutedReads(
            self.reads.answer_item,
            self.reads.answer_page,
            token=w.http_token_text,
            max_reads=w.http_max_reads,
        )

    def member_reads(self) -> RoutedReads:
        """``routed_reads`` for a member process of ``worker --processes``, whose endpoint
        only its parent asks: routed by the group's description as a worker's own, with the
        parent's address (``advertised_http``) as its own, shared with its siblings
        (``StoreReads.siblings``). Ready before ``run``: the parent may ask at once."""
        s = self.settings
        self.advertised = s.worker.advertised_http
        self.reads.siblings = True
        self._directory = OwnerDirectory(s, {**s.kafka.librdkafka(), **self._auth.config()})
        return self.routed_reads()

    def _loop(self) -> None:
        """Poll -> start restored partitions -> process (or ride out an outage) -> commit ->
        scheduled work. Every turn polls, so no step keeps the worker from its group."""
        while not self._stop.is_set():
            try:
                messages = self._next_batch()  # the rebalance callbacks run in here
                self._check_refusals()
                self._auth.check()
                self._note_connection(bool(messages))
                self.health.beat()
                self.assignment.step()
                if self._outage is not None:
                    self._ride_out_outage()
                elif messages:
                    self.processor.process(messages, self.assignment.running())
                else:  # idle: settle what is in flight, delete the acknowledged rows
                    self.checkpoint.settle(self.assignment.stores().values())
                self.checkpoint.commit(self.assignment.running())
                self.scheduler.run_due()
            except PublishError as exc:  # Kafka did not take a batch's messages in time
                self._outage_begins(exc)

    def _next_batch(self) -> list[Message]:
        """Wait for one event, then take what else arrives within ``batch_linger_s``, up to
        the batch size.

        ``consume(n, timeout)`` alone would wait out its (idle) timeout whenever fewer than n
        events are waiting, adding that wait to every op's latency under light load; this
        way a batch waits for more at most ``batch_linger_s``, and a backlog fills it at once.
        """
        w = self.settings.worker
        first = self._consumer.poll(w.batch_timeout_s)
        if first is None:
            return []
        check_group_error(first.error())  # a group protocol the broker lists but refuses
        if w.batch_size == 1:
            return [first]
        return [first, *self._consumer.consume(w.batch_size - 1, w.batch_linger_s)]

    def _shutdown(self) -> None:
        try:
            try:
                self.checkpoint.settle(self.assignment.stores().values())
            except DynoError as exc:  # the pending rows stay: published again on restart
                log.error("%s", exc)
            self._consumer.close()  # revokes: every partition's store is closed
        finally:
            self.assignment.close()
            self.restorer.close()
            self._producer.flush(5)
            self._partition_watch.close()
            if self.http is not None:
                self.http.stop()

    # -- a broker that does not take snapshots -----------------------------------------------

    def _note_connection(self, answered: bool) -> None:
        """Kafka reachable or not, as the log, /healthz and the gauge say it."""
        connection = self.connection
        if answered:  # messages came: Kafka answers (a metadata answer says so too)
            connection.answered()
        connection.tick()
        connected = connection.connected
        self.metrics.kafka_connected.set(1 if connected else 0)
        self.health.degraded = (
            None
            if connected
            else f"Kafka at {connection.bootstrap} unreachable ({connection.reason})"
        )

    def _outage_begins(self, exc: PublishError) -> None:
        """A batch's snapshots were not acknowledged in time (a broker restarting, hanging,
        out of reach). The batch is in its store with its snapshots pending; exiting would
        need a restart by hand. Instead every partition pauses and the loop goes on polling
        (so the group keeps this worker) while the pending messages are published again."""
        log.warning("%s; pausing every partition until Kafka takes what is pending", exc)
        self.checkpoint.abandon()
        self.assignment.pause_all()
        self._outage = _Outage(exc)

    def _ride_out_outage(self) -> None:
        outage = self._outage
        assert outage is not None
        now = time.monotonic()
        if outage.attempt_in_flight:
            try:
                self.checkpoint.advance()
            except PublishError as again:
                self.checkpoint.abandon()
                outage.error, outage.attempt_in_flight = again, False
                outage.delay = min(outage.delay * 2, _OUTAGE_RETRY_MAX_S)
                outage.retry_at = now + outage.delay
                return
            if self.checkpoint.in_flight:
                return  # still on its way
            log.info("the pending snapshots and dead letters are published; going on")
            self._outage = None
            self.checkpoint.delete_acknowledged(self.assignment.stores().values())
            self.assignment.resume_all()
        elif now >= outage.retry_at:
            log.warning("%s; publishing again", outage.error)
            for ps in self.assignment.stores().values():
                self.publisher.republish_pending(ps)
            outage.attempt_in_flight = True

    # -- the ops topic's partition count ------------------------------------------------------

    def _check_partitions(self) -> int | None:
        """The ops topic's partition count, checked against the recorded one (see topics).

        Raises :class:`PartitionCountError`; ``None`` when the metadata did not come (the
        watch, a few seconds later, tries again).
        """
        try:
            now, recorded = ops_partition_counts(self._admin, self.settings)
        except KafkaException as exc:
            log.warning("cannot read the topics' partition counts: %s", exc)
            return None
        self._partition_counts_seen(now, recorded)
        check_partition_count(self.settings, now, recorded)
        return now

    def _partition_counts_seen(self, now: int | None, recorded: int | None) -> None:
        """The ops topic's count and the snapshot topic's (the recorded one): the watch's
        thread and each assignment report them here. When they differ the worker refuses to
        go on (``PartitionCountError``); this says what that means and how to migrate, once.
        A metadata answer also says that Kafka answers (the end of an outage)."""
        self.connection.answered()
        if now is not None:
            self.placement.count(now)
            self.metrics.ops_partitions.set(now)
        if recorded is not None:
            self.metrics.ops_partitions_recorded.set(recorded)
        problem = SnapshotPartitioning(
            self.settings.topics.ops, self.settings.topics.snapshots, now, recorded
        ).problem
        if problem is not None and problem not in self.health.warnings:
            log.error("%s", problem)
            self.health.warnings.append(problem)

    def _check_refusals(self) -> None:
        # Partitions added to the ops topic reach a running worker as a rebalance only when
        # the consumer next refreshes its metadata (every 5 minutes by default): the watch
        # asks every few seconds, on its own thread and connection.
        refusal = self.assignment.refusal or self._partition_watch.refusal
        if refusal is not None:
            raise refusal

    def _refuse(self, exc: PartitionCountError) -> None:
        self._refusal = exc
        self.health.state = "refused"
        self.health.reason = str(exc)
        self.metrics.ops_partitions.set(exc.now)
        self.metrics.ops_partitions_recorded.set(exc.was)

    # -- what the restorer reads --------------------------------------------------------------

    def _low_watermark(self, topic: str, partition: int) -> int:
        """The oldest offset of the ops partition that Kafka still keeps (0 if unknown)."""
        tp = TopicPartition(topic, partition)
        lows = list_offsets(self._admin, [tp], OffsetSpec.earliest(), timeout=10)  # type: ignore[no-untyped-call]
        return lows.get((topic, partition), 0)

    def _committed_offset(self, topic: str, partition: int) -> int | None:
        """The group's committed offset of an ops partition (None: none, or no answer)."""
        s = self.settings
        try:
            offsets = committed_offsets(
                s, s.worker.group_id, [TopicPartition(topic, partition)], timeout=10
            )
        except KafkaException as exc:
            log.warning("committed offset of %s/%s unknown: %s", topic, partition, exc)
            return None
        offset = offsets.get(partition, -1)
        return offset if offset >= 0 else None

    def _read_snapshots(
        self,
        partition: int,
        cancelled: Callable[[], bool],
        on_progress: Callable[[int], None],
    ) -> dict[str, Snapshot] | None:
        return read_restore_snapshots(
            self.settings,
            partition,
            # Always, for a running worker: a snapshot topic with another partition count
            # than the ops topic's is refused (``_partition_counts_seen``).
            co_partitioned=True,
            cancelled=cancelled,
            on_progress=on_progress,
        )
