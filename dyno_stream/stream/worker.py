"""The stream worker: Kafka ops -> validate -> apply -> snapshot -> commit.

One worker process consumes the ops topic in a consumer group. For every assigned partition it
opens that partition's store (``store.partition``), seeks to the store's own recorded offset,
and then processes batches, each in the commit order written down in ``store.partition``. Bad
events never stop it: each goes to the dead-letter topic with its reason and is counted.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import operator
import os
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import plyvel
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec
from croniter import croniter

from dyno_stream.config import Settings, consumer_config, producer_config
from dyno_stream.core.deadletter import H_TRUNCATED, DeadLetter, KafkaHeaders
from dyno_stream.core.errors import (
    DynoError,
    InvalidChangeError,
    KeyMismatchError,
    OversizedEventError,
    PartitionCountError,
    PublishError,
    StoreError,
    StoreWriteError,
    ValidationError,
)
from dyno_stream.core.events import EventModel, Flatten, Snapshot, parse_event
from dyno_stream.core.limits import Limits
from dyno_stream.kafka.clock import TIMESTAMP_TYPES, flake_ms, too_far_ahead
from dyno_stream.kafka.reading import read_snapshots
from dyno_stream.kafka.security import AuthWatch
from dyno_stream.kafka.topics import (
    PartitionCountWatch,
    check_partition_count,
    ensure_topics,
    ops_partition_counts,
)
from dyno_stream.store import Item
from dyno_stream.store.compaction_policy import choose, fold_before, fold_cutoff, summaries
from dyno_stream.store.partition import PartitionStore, snapshot_bytes
from dyno_stream.stream.http import Health, HttpEndpoint
from dyno_stream.stream.metrics import WorkerMetrics

log = logging.getLogger("dyno_stream.stream.worker")

_LAG_EVERY_S = 5.0
_OPEN_RETRY_S = 30.0
#: Batches whose messages may be on their way to Kafka while the next one is processed.
_MAX_IN_FLIGHT = 3
#: Container objects allocated (net) between two young-generation collections.
_GC_THRESHOLD = 200_000
# per-event look-ups that run in C (a batch calls them thousands of times)
_item_of = operator.attrgetter("item")
_op_of = operator.attrgetter("op")


@dataclass
class _PartitionShare:
    """The events of one batch that belong to one partition, in offset order."""

    ps: PartitionStore
    events: list[EventModel] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    last_offset: int = -1
    #: Kafka timestamp (ms) of the partition's last message in the batch, if it has one
    consumed_ms: int | None = None
    touched: dict[str, int] = field(default_factory=dict)
    #: items named by flatten commands: each gets a snapshot, folded or not, which is how an
    #: online compaction pass learns that its command was processed
    flattened: list[str] = field(default_factory=list)
    #: its rows pending publication, written with its ops
    pending: list[bytes] = field(default_factory=list)


@dataclass(eq=False)
class _Publication:
    """One batch's snapshots and dead letters on their way to Kafka, and what becomes true
    once every one of them is acknowledged: its pending rows can go, its offsets be committed."""

    outstanding: int = 0
    snapshots: int = 0
    errors: list[str] = field(default_factory=list)
    clear: dict[tuple[str, int], list[bytes]] = field(default_factory=dict)
    commit: list[TopicPartition] = field(default_factory=list)

    def delivered(self, err: KafkaError | None, msg: Message) -> None:
        self.outstanding -= 1
        if err is not None:
            self.errors.append(f"{msg.topic()}: {err}")


class Worker:
    """Runs until stopped (``stop()``, SIGTERM or SIGINT); ``run()`` returns the exit status."""

    def __init__(self, settings: Settings, *, handle_signals: bool = True) -> None:
        self.settings = settings
        self._limits = Limits.from_settings(settings.worker)
        self._max_skew_ms = settings.worker.max_clock_skew_s * 1000
        self._said_create_time = False
        self.metrics = WorkerMetrics()
        self.health = Health()
        self._parts: dict[tuple[str, int], PartitionStore] = {}
        self._stop = threading.Event()
        self._handle_signals = handle_signals
        self._in_flight: deque[_Publication] = deque()
        #: a publish that failed inside a rebalance callback, handled by the main loop
        self._assign_publish_error: PublishError | None = None
        self._last_lag = 0.0
        #: acknowledged offsets not yet committed to Kafka (``_commit_acknowledged``)
        self._to_commit: dict[tuple[str, int], TopicPartition] = {}
        self._committed_at = time.monotonic()
        self._next_compaction: float | None = None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._partition_watch: PartitionCountWatch | None = None
        self._admin: AdminClient | None = None
        self.http: HttpEndpoint | None = None
        self._auth = AuthWatch(settings.kafka)
        #: set when the ops topic's partition count changed: the main loop stops on it
        self._refusal: PartitionCountError | None = None

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
                "data_dir": str(s.worker.data_dir),
            },
        )
        if self._handle_signals and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        if s.topics.create_missing:
            ensure_topics(s)
        s.worker.data_dir.mkdir(parents=True, exist_ok=True)
        if s.worker.http_port:
            self.http = HttpEndpoint(
                s.worker.http_host,
                s.worker.http_port,
                self.metrics,
                self.health,
                self.read_item,
                self.read_rows,
            )
            self.http.start()
            log.info(
                "http endpoint at %s (/metrics /healthz /items/<name> /rows)", self.http.address
            )
        # A refused login or TLS handshake stops the worker (see dyno_stream.kafka.security).
        self._producer = Producer({**producer_config(s), **self._auth.config()})
        # metadata and end offsets for the watch and compaction: a connection of their own
        self._admin = AdminClient({**s.kafka.librdkafka(), **self._auth.config()})
        self._partition_watch = PartitionCountWatch(
            s,
            self._admin,
            stop_when=lambda: self._auth.failure is not None,
            on_counts=self._partition_counts_seen,
        ).start()
        self._consumer = Consumer({**consumer_config(s), **self._auth.config()})
        self._consumer.subscribe(
            [s.topics.ops],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
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
            while not self._stop.is_set():
                try:
                    messages = self._next_batch()
                    if self._refusal is not None:  # see _on_assign: nothing is assigned
                        raise self._refusal
                    self._auth.check()
                    self.health.beat()
                    # The batch is processed even when an assignment's republish failed in
                    # that same call (raised below): the consumer has moved past these
                    # messages, and dropping them would let the next batch move the store's
                    # offset past them too.
                    if messages:
                        self._process(messages)
                    else:
                        self._drain_publications()
                    if self._assign_publish_error is not None:  # see _on_assign
                        exc, self._assign_publish_error = self._assign_publish_error, None
                        raise exc
                    self._punctuate()
                except PublishError as exc:  # Kafka did not take a batch's messages in time
                    self._publish_pending_until_acknowledged(exc)
        except StoreWriteError as exc:  # a full disk is not one event's fault: stop, loudly
            log.error(
                "%s; stopping without committing the batch. Restart the worker once the disk "
                "is fixed: it resumes from the offset the store holds, nothing lost",
                exc,
            )
            raise
        except PartitionCountError as exc:
            log.error("%s; stopping, committing nothing past what the stores hold", exc)
            raise
        finally:
            if self._refusal is None:  # a refusal stays what /healthz says
                self.health.state = "stopping"
            self._shutdown()
        log.info("worker stopped")
        return 0

    def _next_batch(self) -> list[Message]:
        """Wait for one event, then take whatever else has arrived, up to the batch size.

        ``consume(n, timeout)`` alone would wait out its timeout whenever fewer than n events
        are waiting, adding that wait to every op's latency under light load; this way a
        batch is as large as the backlog and never waits for more.
        """
        assert self._consumer is not None
        w = self.settings.worker
        first = self._consumer.poll(w.batch_timeout_s)
        if first is None:
            return []
        return (
            [first, *self._consumer.consume(w.batch_size - 1, 0)] if w.batch_size > 1 else [first]
        )

    def _shutdown(self) -> None:
        try:
            try:
                self._drain_publications()
            except DynoError as exc:  # the pending rows stay: published again on restart
                log.error("%s", exc)
            if self._consumer is not None:
                self._consumer.close()  # revokes, so every partition store is closed
        finally:
            for ps in list(self._parts.values()):
                ps.close()
            self._parts.clear()
            if self._producer is not None:
                self._producer.flush(5)
            if self._partition_watch is not None:
                self._partition_watch.close()
            if self.http is not None:
                self.http.stop()

    # -- rebalancing -------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self._assign(consumer, partitions)
        except PartitionCountError as exc:
            # Not one partition is processed: the new ones would start stores of items whose
            # history is elsewhere. The run loop stops on the refusal (raising here would
            # leave librdkafka to assign the partitions itself).
            self._refuse(exc)
            self._release([tp for tp in partitions if (tp.topic, tp.partition) in self._parts])
            consumer.assign([])

    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        now = self._check_partitions(consumer)
        for tp in partitions:
            ps = self._open_partition(tp.topic, tp.partition)
            try:
                if now is not None:
                    ps.check_partitions(now)
                ps = self._restore_if_needed(consumer, ps)
                try:
                    self._republish_pending(ps)
                except PublishError as exc:
                    # Keep the partition: its pending rows stay in its store, and the main
                    # loop publishes them again until Kafka takes them. Raising here would
                    # come out of poll() and end the worker.
                    self._assign_publish_error = exc
            except BaseException:
                ps.close()  # release its LevelDB lock for the next owner
                raise
            self._parts[(tp.topic, tp.partition)] = ps
            tp.offset = OFFSET_BEGINNING if ps.next_offset is None else ps.next_offset
            log.info(
                "assigned %s from offset %s",
                ps.label,
                "beginning" if ps.next_offset is None else ps.next_offset,
            )
        consumer.assign(partitions)
        self._partitions_changed()

    def _check_partitions(self, client: Consumer) -> int | None:
        """The ops topic's partition count, checked against the recorded one (see topics).

        Raises :class:`PartitionCountError`; ``None`` when the metadata did not come (the
        next check, a few seconds later, tries again).
        """
        try:
            now, recorded = ops_partition_counts(client, self.settings)
        except KafkaException as exc:
            log.warning("cannot read the topics' partition counts: %s", exc)
            return None
        self._partition_counts_seen(now, recorded)
        check_partition_count(self.settings, now, recorded)
        return now

    def _partition_counts_seen(self, now: int | None, recorded: int | None) -> None:
        if now is not None:
            self.metrics.ops_partitions.set(now)
        if recorded is not None:
            self.metrics.ops_partitions_recorded.set(recorded)

    def _refuse(self, exc: PartitionCountError) -> None:
        self._refusal = exc
        self.health.state = "refused"
        self.health.reason = str(exc)
        self.metrics.ops_partitions.set(exc.now)
        self.metrics.ops_partitions_recorded.set(exc.was)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Batches finish before consume() is called again; their messages may still be on
        # their way: wait for them, then commit what the stores hold and let the partitions go.
        try:
            self._drain_publications()
        except DynoError as exc:  # the pending rows stay: the next owner publishes them
            log.error("%s", exc)
        offsets = [
            TopicPartition(tp.topic, tp.partition, ps.next_offset)
            for tp in partitions
            if (ps := self._parts.get((tp.topic, tp.partition))) and ps.next_offset is not None
        ]
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                log.warning("commit on revoke failed (the stores keep the offsets): %s", exc)
        self._release(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("partitions lost: %s", [f"{p.topic}/{p.partition}" for p in partitions])
        self._release(partitions)

    def _release(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            ps = self._parts.pop((tp.topic, tp.partition), None)
            if ps is not None:
                ps.close()
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
                log.info("released %s at offset %s", ps.label, ps.next_offset)
        self._partitions_changed()

    def _partitions_changed(self) -> None:
        self.health.partitions = sorted(ps.label for ps in self._parts.values())
        self.metrics.assigned_partitions.set(len(self._parts))

    def _open_partition(self, topic: str, partition: int) -> PartitionStore:
        """Open the partition's store, waiting while another worker still holds its lock."""
        deadline = time.monotonic() + _OPEN_RETRY_S
        while True:
            try:
                return PartitionStore.open(
                    self.settings.worker.data_dir,
                    topic,
                    partition,
                    self.settings.worker.sync_writes,
                    self.settings.worker.max_attrs,
                )
            except DynoError as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                log.info("store of %s/%s is still locked; retrying", topic, partition)
                time.sleep(0.5)

    def _restore_if_needed(self, consumer: Consumer, ps: PartitionStore) -> PartitionStore:
        """Restore a partition whose store is missing, or behind what the ops topic keeps.

        First from the snapshot topic (each item's newest snapshot becomes its history row),
        then the ops after each snapshot's source offset are replayed as usual. With no
        snapshot of this partition, the ops are replayed from the beginning.
        """
        try:
            low, _high = consumer.get_watermark_offsets(
                TopicPartition(ps.topic, ps.partition), timeout=10
            )
        except KafkaException:
            low = 0
        if ps.next_offset is not None and ps.next_offset >= low:
            return ps  # current: the ops from its offset on are all still in Kafka
        if ps.next_offset is not None:
            stale = ps.store.path.with_name(f"{ps.store.path.name}.stale-{int(time.time())}")
            log.warning(
                "store of %s is at offset %s but the ops topic starts at %s: moving "
                "it to %s and restoring",
                ps.label,
                ps.next_offset,
                low,
                stale,
            )
            ps.close()
            ps.store.path.rename(stale)
            ps = self._open_partition(ps.topic, ps.partition)
        started = time.monotonic()
        ops_topic, part = ps.topic, ps.partition
        raw = read_snapshots(
            self.settings,
            keep=lambda snap: (
                (src := snap.get("source")) is not None
                and src.get("topic") == ops_topic
                and src.get("partition") == part
            ),
        )
        if not raw:
            log.info("restoring %s: no snapshots, replaying the ops from the beginning", ps.label)
            return ps
        snapshots = [Snapshot.model_validate(v) for v in raw.values()]
        n = ps.restore_from(snapshots, low)
        self.metrics.restored_items.inc(n)
        log.info(
            "restored %s: %d items from snapshots in %.2fs; replaying ops from offset %s",
            ps.label,
            n,
            time.monotonic() - started,
            ps.next_offset,
        )
        return ps

    def _republish_pending(self, ps: PartitionStore) -> None:
        """Publish again what a crashed run left unacknowledged (its pending rows)."""
        snapshots, keys = ps.pending_snapshots()
        dead = ps.pending_dead_letters()
        if not snapshots and not dead:
            return
        publication = _Publication()
        # A snapshot is read from the store as it is now, so it names the last offset the
        # store applied: a later batch whose own pending row was cleared may have changed
        # the item since, and naming the pending row's offset would claim less than the value
        # holds (a restore would then replay those ops again, as late dead letters).
        applied = (ps.next_offset or 0) - 1
        for item in ps.store.current(snapshots):
            self._produce_snapshot(ps, item, max(applied, snapshots[item.name]), publication)
        for _, letter in dead:
            self._produce_dead_letter(letter, publication)
        self._in_flight.append(publication)
        self._complete_publications(wait=True)
        ps.clear_pending([*keys, *(k for k, _ in dead)])
        self.metrics.pending_republished.inc(len(snapshots) + len(dead))
        log.info(
            "republished %d snapshots and %d dead letters left pending in %s",
            len(snapshots),
            len(dead),
            ps.label,
        )

    def _publish_pending_until_acknowledged(self, exc: PublishError) -> None:
        """Publish what the stores hold pending again and again until Kafka takes it.

        A batch whose snapshots Kafka did not acknowledge in time (a broker restarting,
        hanging, out of reach) is already in the stores, with its snapshots and dead letters
        pending. Exiting would need a restart by hand or by a supervisor; waiting here instead,
        with no new batch started meanwhile, rides the outage out. A stop request ends the
        wait: what is pending is published on the next start.
        """
        delay = 0.5
        while self._in_flight:  # the batches after the one that failed: let them settle
            # one Kafka refuses stays pending in its store like the first: published below
            with contextlib.suppress(PublishError):
                self._complete_publications(wait=True)
        while not self._stop.is_set():
            log.warning("%s; publishing again in %.1fs", exc, delay)
            self._stop.wait(delay)
            try:
                for ps in list(self._parts.values()):
                    self._republish_pending(ps)
            except PublishError as again:
                exc, delay = again, min(delay * 2, 30.0)
                continue
            log.info("the pending snapshots and dead letters are published; going on")
            return

    # -- one batch ---------------------------------------------------------------------------

    def _validate(self, msg: Message) -> EventModel:
        raw = msg.value()
        if raw is None:
            raise InvalidChangeError("event", "empty message (a tombstone is not an op)")
        limit = self._limits.max_event_bytes
        if len(raw) > limit:
            raise OversizedEventError("event", f"{len(raw)} bytes; the limit is {limit}")
        try:
            event = parse_event(raw)
        except ValidationError as exc:  # beyond a limit? then that is the reason (limits.py)
            raise self._limits.explain(exc, raw) from None
        self._limits.check(event)
        key = msg.key()
        if key != event.item.encode():
            raise KeyMismatchError(
                "key",
                f"Kafka key {key!r} is not the item name {event.item!r}; produce ops "
                "keyed by item so each item's ops share a partition",
            )
        return event

    @staticmethod
    def _dead_letter(msg: Message, exc: DynoError) -> DeadLetter:
        topic, partition, offset = _where(msg)
        raw = msg.headers() or []
        pairs = raw.items() if isinstance(raw, dict) else raw
        headers = [(k, _as_bytes(v)) for k, v in pairs]
        return DeadLetter(
            topic,
            partition,
            offset,
            msg.key(),
            msg.value(),
            headers,
            exc.reason,
            str(exc),
            getattr(exc, "field", None),
            exc.headers(),
        )

    def _process(self, messages: list[Message]) -> None:
        started = time.perf_counter()
        # Each partition's events are validated, applied and published before the next
        # partition's are looked at: a partition's share of a batch stays in the CPU's caches
        # from one step to the next, where validating the whole batch first had the store
        # read it back from memory.
        shares: dict[tuple[str, int], _PartitionShare] = {}
        applied: Counter[str] = Counter()
        publication = _Publication()
        self._in_flight.append(publication)  # completed even if a later step fails
        for tp, (ps, msgs) in self._by_partition(messages).items():
            share = shares[tp] = self._validated(ps, msgs)  # validate
            self._apply(share, applied)  # one atomic LevelDB batch per partition
            # publish, without waiting (acknowledgements complete it, oldest batch first)
            for item in ps.store.current(share.touched):
                self._produce_snapshot(ps, item, share.touched[item.name], publication)
            for letter in share.dead:
                self._produce_dead_letter(letter, publication)
            publication.clear[tp] = share.pending
            publication.commit.append(TopicPartition(tp[0], tp[1], share.last_offset + 1))
        self.metrics.events_consumed.inc(len(messages))
        self._complete_publications()

        for op, n in applied.items():
            self.metrics.ops_applied.labels(op).inc(n)
        for share in shares.values():
            for letter in share.dead:
                self.metrics.dead_lettered.labels(letter.reason).inc()
                log.warning(
                    "dead letter",
                    extra={
                        "reason": letter.reason,
                        "error": letter.message,
                        "source": f"{letter.topic}/{letter.partition}@{letter.offset}",
                    },
                )
        self.metrics.batch_size.observe(len(messages))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    def _by_partition(
        self, messages: list[Message]
    ) -> dict[tuple[str, int], tuple[PartitionStore, list[Message]]]:
        """The batch's messages by partition, without those this worker must not apply: not
        its partition any more, or already in its store."""
        out: dict[tuple[str, int], tuple[PartitionStore, list[Message]]] = {}
        parts = self._parts
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consumer error: %s", err)
                continue
            topic, partition, offset = _where(msg)
            tp = (topic, partition)
            ps = parts.get(tp)
            if ps is None or (ps.next_offset is not None and offset < ps.next_offset):
                continue  # not ours any more, or already applied
            group = out.get(tp)
            if group is None:
                group = out[tp] = (ps, [])
            group[1].append(msg)
        return out

    def _validated(self, ps: PartitionStore, messages: list[Message]) -> _PartitionShare:
        """One partition's messages as events to apply, and dead letters for the others."""
        share = _PartitionShare(ps)
        events, offsets, kept, dead = share.events, share.offsets, share.messages, share.dead
        restored = ps.restored
        max_ahead_ms = self._max_skew_ms
        skews: list[int] = []  # flake time minus message time, ms, per op (the histogram)
        if messages[0].timestamp()[0] == TIMESTAMP_CREATE_TIME and not self._said_create_time:
            self._said_create_time = True
            log.warning(
                "%s uses CreateTime: the clock-skew bound is measured against each producer's "
                "own clock, so a producer whose whole clock is wrong passes; create the ops "
                "topic with message.timestamp.type=LogAppendTime to bound it by the broker's",
                ps.label,
            )
        for msg in messages:
            offset = msg.offset()
            assert offset is not None  # always set on a consumed message
            try:
                event = self._validate(msg)
                # The clock-skew bound (dyno_stream.kafka.clock), inline: it runs for every op.
                # With the histogram it costs about 0.5 us an op (this method over 10,000
                # events, paired runs); isinstance() on a pydantic model alone cost 0.15 us,
                # hence type() and the ignore.
                kind, message_ms = msg.timestamp()
                if kind:  # 0 is TIMESTAMP_NOT_AVAILABLE: no time to compare with, no check
                    if type(event) is Flatten:
                        self._check_flatten_clock(event, kind, message_ms)
                    else:
                        ts: str = event.ts  # type: ignore[union-attr]  # an op, not a flatten
                        skew = int(ts[:12], 16) - message_ms
                        skews.append(skew)
                        if skew > max_ahead_ms:
                            raise self._too_far_ahead("ts", ts, kind, message_ms)
            except DynoError as exc:
                dead.append(self._dead_letter(msg, exc))
                continue
            if restored and offset <= restored.get(event.item, -1):
                continue  # already in the item's snapshot we restored from
            if type(event) is Flatten:
                share.flattened.append(event.item)
            events.append(event)
            offsets.append(offset)
            kept.append(msg)
        last = messages[-1].offset()  # the partition's last message, applied or dead-lettered
        assert last is not None
        share.last_offset = last
        share.consumed_ms = _consumed_ms(messages[-1])
        self.metrics.clock_skew.observe_many(skews)
        return share

    def _too_far_ahead(self, field: str, flake: str, kind: int, message_ms: int) -> DynoError:
        against = f"the message's {TIMESTAMP_TYPES.get(kind, 'timestamp')}"
        return too_far_ahead(
            field, flake_ms(flake), message_ms, self.settings.worker.max_clock_skew_s, against
        )

    def _check_flatten_clock(self, command: Flatten, kind: int, message_ms: int) -> None:
        """A flatten command's ``before`` far ahead would fold rows that honest ops may
        still be placed among: bounded like an op's flake (not observed: ``before`` lies a
        lateness behind by design, which would only blur the histogram)."""
        if command.before is not None and flake_ms(command.before) - message_ms > (
            self._max_skew_ms
        ):
            raise self._too_far_ahead("before", command.before, kind, message_ms)

    def _apply(self, share: _PartitionShare, applied: Counter[str]) -> None:
        ps = share.ps
        failed: set[int] = set()

        def on_error(i: int, _event: EventModel, exc: DynoError) -> None:
            failed.add(i)
            share.dead.append(self._dead_letter(share.messages[i], exc))

        def bookkeeping_rows(touched: list[str]) -> dict[bytes, bytes | None]:
            events, offsets = share.events, share.offsets
            if failed:
                events = [e for i, e in enumerate(events) if i not in failed]
                offsets = [o for i, o in enumerate(offsets) if i not in failed]
            last = dict(zip(map(_item_of, events), offsets, strict=True))  # the last op wins
            share.touched = {name: last[name] for name in touched}
            for name in share.flattened:
                if name in last:  # not when its command failed (it is a dead letter then)
                    share.touched.setdefault(name, last[name])
            share.dead.sort(key=lambda d: d.offset)
            rows, share.pending = ps.batch_rows(
                share.last_offset + 1, share.touched, share.dead, share.consumed_ms
            )
            return rows

        try:
            ps.store.apply(share.events, internal_rows=bookkeeping_rows, on_error=on_error)
        except plyvel.Error as exc:
            raise StoreError(f"LevelDB write to {ps.label} failed: {exc}") from exc
        ps.next_offset = share.last_offset + 1
        if share.consumed_ms is not None:
            ps.consumed_ms = share.consumed_ms
        if ps.restored and ps.next_offset > max(ps.restored.values()):
            ps.restore_done()
        applied.update(map(_op_of, share.events))  # a flatten's op is "flatten"
        for i in failed:
            applied[share.events[i].op] -= 1

    # -- publishing --------------------------------------------------------------------------

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        publication: _Publication,
        headers: KafkaHeaders | None = None,
    ) -> None:
        assert self._producer is not None
        while True:
            try:
                self._producer.produce(
                    topic, value, key, headers=headers, on_delivery=publication.delivered
                )
                publication.outstanding += 1
                return
            except BufferError:  # local queue full: let deliveries drain, then go on
                self._producer.poll(0.1)

    def _produce_snapshot(
        self, ps: PartitionStore, item: Item, offset: int, publication: _Publication
    ) -> None:
        value = snapshot_bytes(item, ps.topic, ps.partition, offset)
        try:
            self._produce(self.settings.topics.snapshots, item.name.encode(), value, publication)
            publication.snapshots += 1
        except KafkaException as exc:
            # The item outgrew what Kafka takes in one message. Publishing it is impossible,
            # crashing would only loop: say so loudly, and leave a dead letter naming it.
            log.error("snapshot of %r (%d bytes) refused by Kafka: %s", item.name, len(value), exc)
            self._produce_dead_letter(
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

    def _produce_dead_letter(self, letter: DeadLetter, publication: _Publication) -> None:
        topic, headers = self.settings.topics.dead_letter, letter.kafka_headers()
        try:
            self._produce(topic, letter.key, letter.value, publication, headers)
        except KafkaException:  # too large with the original bytes: keep the reason at least
            headers.append((H_TRUNCATED, str(len(letter.value or b"")).encode()))
            self._produce(topic, letter.key, None, publication, headers)

    def _complete_publications(self, wait: bool = False) -> None:
        """Complete every batch, oldest first, whose messages are all acknowledged: its pending
        rows are deleted with the partition's next write, its offsets queued for committing.

        With ``wait``, wait for all of them; otherwise only for the oldest ones beyond
        ``_MAX_IN_FLIGHT``. A delivery that failed raises ``PublishError``: that batch's
        pending rows stay, and its messages are published again (``run`` waits the broker
        out, see ``_publish_pending_until_acknowledged``; or the next start does).
        """
        assert self._producer is not None
        self._producer.poll(0)  # run the delivery callbacks that are due
        timeout = self.settings.worker.publish_timeout_s
        while self._in_flight:
            oldest = self._in_flight[0]
            if oldest.outstanding and not oldest.errors:
                if not wait and len(self._in_flight) <= _MAX_IN_FLIGHT:
                    break  # still on its way, and the pipeline has room
                deadline = time.monotonic() + timeout
                while oldest.outstanding and not oldest.errors and time.monotonic() < deadline:
                    self._producer.poll(0.1)
            if oldest.outstanding or oldest.errors:
                self._in_flight.popleft()
                self.metrics.batches_in_flight.set(len(self._in_flight))
                raise PublishError(
                    f"{oldest.outstanding} messages unacknowledged after {timeout:.0f}s, "
                    f"{len(oldest.errors)} failed ({'; '.join(oldest.errors[:3])}); the batch "
                    "stays pending and is published again"
                )
            self._in_flight.popleft()
            for tp, keys in oldest.clear.items():
                ps = self._parts.get(tp)
                if ps is not None:
                    ps.to_clear.extend(keys)  # deleted with the partition's next write
            for offset in oldest.commit:
                self._to_commit[(offset.topic, offset.partition)] = offset
            if oldest.snapshots:
                self.metrics.snapshots_published.inc(oldest.snapshots)
        self.metrics.batches_in_flight.set(len(self._in_flight))
        self._commit_acknowledged()

    def _commit_acknowledged(self) -> None:
        """Commit acknowledged offsets, at most every ``commit_interval_s``: one asynchronous
        commit of the newest acknowledged offset of each partition this worker still holds
        (a released partition's offsets are its new owner's to commit). A revoke commits what
        the stores hold."""
        now = time.monotonic()
        if not self._to_commit or now - self._committed_at < self.settings.worker.commit_interval_s:
            return
        held = [offset for tp, offset in self._to_commit.items() if tp in self._parts]
        if held and self._consumer is not None:
            self._consumer.commit(offsets=held, asynchronous=True)
        self._to_commit.clear()
        self._committed_at = now

    def _drain_publications(self) -> None:
        """Wait for every message in flight, then delete the acknowledged pending rows."""
        if self._producer is None:
            return
        self._complete_publications(wait=True)
        for ps in self._parts.values():
            if ps.to_clear:
                ps.clear_pending()

    # -- scheduled work ----------------------------------------------------------------------

    def _punctuate(self) -> None:
        """Scheduled work between batches: compaction when due, lag every few seconds."""
        if self._compaction_due():
            try:
                self._compact_partitions()
            except PublishError:
                raise  # in-flight batches failed too: the main loop publishes them again
            except DynoError as exc:  # scheduled work must not stop the worker
                log.error("scheduled compaction failed: %s", exc)
        now = time.monotonic()
        if now - self._last_lag < _LAG_EVERY_S or self._consumer is None:
            return
        self._last_lag = now
        # Partitions added to the ops topic reach a running worker as a rebalance only
        # when the consumer next refreshes its metadata (every 5 minutes by default): a
        # watch asks every few seconds, on its own thread and connection.
        if self._partition_watch is not None and self._partition_watch.refusal is not None:
            self._refuse(self._partition_watch.refusal)
            raise self._partition_watch.refusal
        for (topic, partition), ps in list(self._parts.items()):
            try:
                # cached: the high watermark that came with the last fetch, no round trip
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
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

    def _compact_partitions(self) -> None:
        """Flatten long histories in this worker's own stores, between two batches.

        The worker owns these stores, so it folds directly and publishes the items' new
        snapshots (only ``count`` changes). Each partition folds only rows older than its own
        cut-off (``fold_cutoff``): a partition behind its backlog may still have on-time ops
        waiting in Kafka, and those must find their rows unfolded.
        """
        c = self.settings.compaction
        started = time.monotonic()
        now = time.time()  # before asking for the ends: an op appended after came later
        cutoffs = {
            label: fold_cutoff(through, now, c.lateness_s)
            for label, through in self._consumed_through(now).items()
        }
        stores = [ps for ps in self._parts.values() if ps.label in cutoffs]
        owner: dict[str, PartitionStore] = {}
        seen = []
        for ps in stores:
            for summary in summaries(ps.store, c.min_rows):
                owner[summary["item"]] = ps
                seen.append(summary)
        chosen, _ = choose(seen, c)  # the policy of a pass: prefix, longest first, the cap
        by_store: dict[str, list[str]] = {}
        for cand in chosen:
            by_store.setdefault(owner[cand.name].label, []).append(cand.name)
        changed = {
            ps.label: fold_before(ps.store, by_store.get(ps.label, []), cutoffs[ps.label])
            for ps in stores
        }
        folded = sum(map(len, changed.values()))
        publication = _Publication()
        for ps in stores:
            for item in ps.store.current(changed.get(ps.label, [])):
                self._produce_snapshot(ps, item, (ps.next_offset or 1) - 1, publication)
        self._in_flight.append(publication)
        self._complete_publications(wait=True)
        self.metrics.compacted.inc(folded)
        log.info(
            "scheduled compaction: %d items flattened in %.2fs", folded, time.monotonic() - started
        )

    def _consumed_through(self, now: float) -> dict[str, float]:
        """For each partition, a time up to which every op of it has been consumed (none for
        a partition behind its backlog that has consumed nothing since it was opened).

        ``now`` for a partition whose store holds everything up to its end; otherwise the
        Kafka timestamp of the newest message consumed. A partition that the last fetch
        already showed behind is behind; the others' ends are asked of the broker in one
        request (the fetch's cached figure misses what was appended since: an op still
        unconsumed). Asking the consumer instead, one partition at a time, waited behind its
        fetches: about 0.5 s a partition, the whole pass on the main loop.
        """
        assert self._consumer is not None
        maybe_caught_up = []
        for ps in self._parts.values():
            tp = TopicPartition(ps.topic, ps.partition)
            try:
                _low, cached_high = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                cached_high = -1
            if cached_high <= (ps.next_offset or 0):  # unknown (negative) or at the end
                maybe_caught_up.append(tp)
        ends = self._partition_ends(maybe_caught_up)
        out: dict[str, float] = {}
        for ps in self._parts.values():
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
        assert self._admin is not None
        futures = self._admin.list_offsets(
            {tp: OffsetSpec.latest() for tp in partitions},  # type: ignore[no-untyped-call]
            request_timeout=5,
        )
        ends: dict[tuple[str, int], int] = {}
        for tp, future in futures.items():
            try:
                ends[(tp.topic, tp.partition)] = future.result().offset
            except KafkaException as exc:
                log.warning("end of %s/%s unknown (%s)", tp.topic, tp.partition, exc)
        return ends

    # -- reads for the HTTP endpoint ------------------------------------------------------------

    def _stores(self) -> list[PartitionStore]:
        return list(self._parts.values())

    def read_item(self, name: str) -> dict[str, Any] | None:
        for ps in self._stores():
            try:
                item = ps.store.get_item(name)
            except DynoError:
                continue
            if item.count:
                return item.as_dict(partition=ps.label)
        return None

    def read_rows(self, name: str | None) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = []
        for ps in self._stores():
            try:
                rows.extend(ps.store.rows(name))
            except DynoError:
                continue
        return sorted(rows)


def _where(msg: Message) -> tuple[str, int, int]:
    """A consumed message's topic, partition and offset (always set on consumed messages)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


def _consumed_ms(msg: Message) -> int | None:
    """The message's Kafka timestamp in ms, capped at this machine's clock; None if it has
    none. On a CreateTime topic a producer's clock far ahead would otherwise put the
    partition's consumed time in the future for good; capped, it can still make a lagging
    partition look further along than it is (one reason the ops topic is LogAppendTime)."""
    kind, ms = msg.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE or ms < 0:
        return None
    return min(ms, int(time.time() * 1000))


def _as_bytes(v: str | bytes | None) -> bytes:
    return b"" if v is None else v.encode() if isinstance(v, str) else v
