"""Batch processing: a batch of raw Kafka messages -> validated events -> one store
transaction per partition -> snapshots and dead letters handed to the publisher.

Bad events never stop it: each becomes a dead letter with its reason, written with the batch
(pending until Kafka takes it) and counted. A message off its item's partition (a producer
with another partitioner than ``[kafka] partitioner``) is never applied where it landed, so
no item splits across stores: it is forwarded to its rule partition the same way, counted,
and said once per partitioner that placed it.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
import time
from collections import Counter
from collections.abc import Mapping

import plyvel
from confluent_kafka import (
    TIMESTAMP_CREATE_TIME,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from prometheus_client import Counter as PromCounter

from dyno_stream.config import Settings
from dyno_stream.core.deadletter import (
    H_FORWARDED_PARTITIONER,
    DeadLetter,
)
from dyno_stream.core.errors import (
    DynoError,
    InvalidChangeError,
    KeyMismatchError,
    OversizedEventError,
    StoreError,
    ValidationError,
    WrongPartitionError,
)
from dyno_stream.core.events import (
    DelItem,
    Erase,
    EventModel,
    Flatten,
    parse_event,
)
from dyno_stream.core.expectations import Expectation
from dyno_stream.core.limits import Limits
from dyno_stream.kafka.clock import TIMESTAMP_TYPES, flake_ms, too_far_ahead
from dyno_stream.kafka.partitioning import PlacementRule, evident_partitioner
from dyno_stream.store.partition import PartitionStore
from dyno_stream.stream.checkpoint import Checkpoint, PartitionKey
from dyno_stream.stream.messages import (
    consumed_ms,
    dead_letter,
    expiry_condition,
    header_pairs,
    topic_partition_offset,
)
from dyno_stream.stream.metrics import WorkerMetrics
from dyno_stream.stream.publisher import Publisher
from dyno_stream.stream.shares import (
    PartitionShare,
    drop_changed_expiries,
    say_erased,
    touched_items,
)

log = logging.getLogger("dyno_stream.stream.processing")

# per-event look-ups that run in C (a batch calls them thousands of times)
_op_of = operator.attrgetter("op")
#: events that are commands, not ops: each is answered with its item's snapshot (or tombstone)
_COMMANDS = (Flatten, Erase)


class BatchProcessor:
    """Validates and applies batches; what to publish goes to ``publisher``, into a
    publication the ``checkpoint`` follows."""

    def __init__(
        self,
        settings: Settings,
        checkpoint: Checkpoint,
        publisher: Publisher,
        metrics: WorkerMetrics,
        placement: PlacementRule,
    ) -> None:
        self.settings = settings
        self.checkpoint = checkpoint
        self.publisher = publisher
        self.metrics = metrics
        self.placement = placement
        self._limits = Limits.from_settings(settings.worker)
        self._max_skew_ms = settings.worker.max_clock_skew_s * 1000
        self._said_create_time = False
        #: the partitioners already said to place messages off the rule (one line each)
        self._said_misplaced: set[str] = set()
        self._said_unchecked = False
        #: ``ops_applied`` per op, its child looked up once (``labels`` costs 2 us a call)
        self._applied_counters: dict[str, PromCounter] = {}

    def process(
        self, messages: list[Message], running: Mapping[PartitionKey, PartitionStore]
    ) -> None:
        """Apply the batch's messages of the partitions in ``running``; the others (not
        this worker's, restoring, paused) are dropped here and consumed again once their
        partition runs (it is started from its store's offset)."""
        started = time.perf_counter()
        # Each partition's events are validated, applied and published before the next
        # partition's are looked at: a partition's share of a batch stays in the CPU's caches
        # from one step to the next, where validating the whole batch first had the store
        # read it back from memory.
        shares: list[PartitionShare] = []
        applied: Counter[str] = Counter()
        # completed even if a later step fails
        publication = self.checkpoint.begin(events=len(messages))
        for tp, (ps, msgs) in self._by_partition(messages, running).items():
            share = self._validated(ps, msgs)
            shares.append(share)
            touched = self._apply(share, applied, self.checkpoint.take_acknowledged(tp))
            # publish, without waiting (acknowledgements complete it, oldest batch first)
            for item in ps.store.current(touched):
                erased = share.erased_rows.get(item.name)
                self.publisher.snapshot(ps, item, touched[item.name], publication, erased)
            for letter in share.dead:
                self.publisher.dead_letter(letter, publication)
            publication.clear[tp] = share.pending
            publication.commit.append(TopicPartition(tp[0], tp[1], share.last_offset + 1))
        self.metrics.events_consumed.inc(len(messages))
        self.checkpoint.advance()

        counters = self._applied_counters
        for op, n in applied.items():
            counter = counters.get(op)
            if counter is None:
                counter = counters[op] = self.metrics.ops_applied.labels(op)
            counter.inc(n)
        for share in shares:
            for letter in share.dead:
                if letter.forward_to is not None:
                    self._forwarded(letter)
                    continue
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

    @staticmethod
    def _by_partition(
        messages: list[Message], running: Mapping[PartitionKey, PartitionStore]
    ) -> dict[PartitionKey, tuple[PartitionStore, list[Message]]]:
        """The batch's messages by partition, without those this worker must not apply: of a
        partition that is not running here, or already in its store."""
        out: dict[PartitionKey, tuple[PartitionStore, list[Message]]] = {}
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consumer error: %s", err)
                continue
            topic, partition, offset = topic_partition_offset(msg)
            tp = (topic, partition)
            ps = running.get(tp)
            if ps is None or (ps.next_offset is not None and offset < ps.next_offset):
                continue  # not running here, or already applied
            group = out.get(tp)
            if group is None:
                group = out[tp] = (ps, [])
            group[1].append(msg)
        return out

    # -- validating -----------------------------------------------------------------------

    def _validate(self, msg: Message, skews: list[int]) -> EventModel:
        """The message's event, within the limits, keyed by its item and not too far ahead of
        the message's time (its skew appended to ``skews``); else the error that says why."""
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
        # The clock-skew bound (dyno_stream.kafka.clock), inline: it runs for every op. With
        # the histogram it costs about 0.5 us an op (``_validated`` over 10,000 events,
        # paired runs); isinstance() on a pydantic model alone cost 0.15 us, hence type()
        # and the ignore.
        kind, message_ms = msg.timestamp()
        if kind:  # 0 is TIMESTAMP_NOT_AVAILABLE: no time to compare with, no check
            if type(event) is Flatten:
                self._check_flatten_clock(event, kind, message_ms)
            else:
                ts: str = event.ts  # type: ignore[union-attr]  # an op, not a flatten
                skew = int(ts[:12], 16) - message_ms
                skews.append(skew)
                if skew > self._max_skew_ms:
                    raise self._too_far_ahead("ts", ts, kind, message_ms)
        return event

    def _validated(self, ps: PartitionStore, messages: list[Message]) -> PartitionShare:
        """One partition's messages as events to apply, and dead letters for the others."""
        share = PartitionShare(ps)
        events, offsets, kept, dead = share.events, share.offsets, share.messages, share.dead
        restored = ps.restored
        expiring: list[tuple[int, str]] = []  # (index in events, the hash it expires at)
        skews: list[int] = []  # flake time minus message time, ms, per op (the histogram)
        self._say_if_create_time(ps, messages[0])
        placement, partition = self.placement, ps.partition
        for msg in messages:
            offset = msg.offset()
            assert offset is not None  # always set on a consumed message
            key = msg.key()
            if key is not None:
                home = placement.home(key)
                if home is not None and home != partition:
                    dead.append(self._forward(msg, key, home))
                    continue
                if home is None:
                    self._unchecked(ps)
            try:
                event = self._validate(msg, skews)
            except DynoError as exc:
                dead.append(dead_letter(msg, exc))
                continue
            if restored and offset <= restored.get(event.item, -1):
                continue  # already in the item's snapshot we restored from
            if type(event) in _COMMANDS:  # each command is answered with its item's snapshot
                share.flattened.append(event.item)
                if type(event) is Erase:
                    share.erased.append(len(events))
            elif msg.headers():
                try:
                    expectation = Expectation.from_headers(header_pairs(msg))
                except DynoError as exc:
                    dead.append(dead_letter(msg, exc))
                    continue
                if expectation is not None:
                    share.expectations[len(events)] = expectation
                elif type(event) is DelItem:
                    if_hash = expiry_condition(msg)
                    if if_hash is not None:
                        expiring.append((len(events), if_hash))
            events.append(event)
            offsets.append(offset)
            kept.append(msg)
        self._close_share(share, messages, expiring, skews)
        return share

    def _close_share(
        self,
        share: PartitionShare,
        messages: list[Message],
        expiring: list[tuple[int, str]],
        skews: list[int],
    ) -> None:
        """After the loop: the expiries dropped whose item changed, the offsets and time the
        share covers, and the batch's skews observed."""
        if expiring:
            drop_changed_expiries(share, expiring)
        last = messages[-1].offset()  # the partition's last message, applied or dead-lettered
        assert last is not None
        share.last_offset = last
        share.first_offset = messages[0].offset() or 0
        share.consumed_ms = consumed_ms(messages[-1])
        self.metrics.clock_skew.observe_many(skews)

    def _say_if_create_time(self, ps: PartitionStore, first: Message) -> None:
        """Once: a CreateTime ops topic bounds skew by each producer's own clock only."""
        if first.timestamp()[0] == TIMESTAMP_CREATE_TIME and not self._said_create_time:
            self._said_create_time = True
            log.warning(
                "%s uses CreateTime: the clock-skew bound is measured against each producer's "
                "own clock, so a producer whose whole clock is wrong passes; create the ops "
                "topic with message.timestamp.type=LogAppendTime to bound it by the broker's",
                ps.label,
            )

    def _forward(self, msg: Message, key: bytes, home: int) -> DeadLetter:
        """The letter that forwards a misplaced message to its rule partition."""
        partitions = self.placement.partitions
        assert partitions is not None  # ``home`` came from it
        _topic, partition, _offset = topic_partition_offset(msg)
        placed_by = evident_partitioner(key, partition, partitions)
        letter = dead_letter(
            msg,
            WrongPartitionError(
                f"key {key[:100]!r} belongs on partition {home} by the placement rule "
                f"({self.placement.partitioner}), not {partition} (placed by {placed_by})"
            ),
        )
        return dataclasses.replace(
            letter,
            details=[(H_FORWARDED_PARTITIONER, placed_by.encode())],
            forward_to=home,
        )

    def _forwarded(self, letter: DeadLetter) -> None:
        """Count a forwarded message, and say once per partitioner what to change."""
        placed_by = dict(letter.details).get(H_FORWARDED_PARTITIONER, b"unknown").decode()
        self.metrics.forwarded.labels(placed_by).inc()
        if placed_by in self._said_misplaced:
            return
        self._said_misplaced.add(placed_by)
        rule = self.placement.partitioner
        log.warning(
            "ops arrive on partitions placed by %s, not by the placement rule ([kafka] "
            "partitioner = %r): each is forwarded to its rule partition (%s, first at "
            "%s/%d@%d), which costs a second trip through Kafka. Set the producers' "
            "partitioner to %s, or the rule to match them (crc32 is librdkafka's default: "
            "kcat, confluent-kafka); dyno_events_forwarded_total counts them",
            placed_by,
            rule,
            letter.message,
            letter.topic,
            letter.partition,
            letter.offset,
            "murmur2_random" if rule == "murmur2" else "consistent_random",
        )

    def _unchecked(self, ps: PartitionStore) -> None:
        if not self._said_unchecked:
            self._said_unchecked = True
            log.warning(
                "%s: the ops topic's partition count is not known yet, so messages are applied "
                "without checking their placement until it is",
                ps.label,
            )

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

    # -- applying -------------------------------------------------------------------------

    def _apply(
        self, share: PartitionShare, applied: Counter[str], acknowledged: list[bytes]
    ) -> dict[str, int]:
        """One transaction: the share's ops, its offset, its pending snapshots and dead
        letters, and the deletion of earlier batches' acknowledged pending rows. Returns the
        items to publish, each with the offset of its last op."""
        ps = share.ps
        failed: set[int] = set()

        def on_error(i: int, _event: EventModel, exc: DynoError) -> None:
            failed.add(i)
            share.dead.append(dead_letter(share.messages[i], exc))

        try:
            with ps.transaction() as tx:
                changed = tx.apply(share.events, on_error, share.expectations)
                touched = touched_items(share, changed, failed)
                share.dead.sort(key=lambda d: d.offset)
                refused = share.dead  # every refusal is recorded, published or not
                quiet = ps.published_through
                if quiet is not None:  # the last owner published these (restorer.py)
                    if share.last_offset + 1 <= quiet:
                        touched = {}
                    share.dead = [d for d in share.dead if d.offset >= quiet]
                removed = tx.erased  # the rows each erase command removed
                for i in share.erased:
                    if i in removed and share.events[i].item in touched:
                        name = share.events[i].item
                        share.erased_rows[name] = share.erased_rows.get(name, 0) + removed[i]
                share.pending = tx.track(
                    share.last_offset + 1,
                    snapshots=touched,
                    dead=share.dead,
                    refused=refused,
                    acknowledged=acknowledged,
                    consumed_ms=share.consumed_ms,
                    erased=share.erased_rows,
                    first_offset=share.first_offset,
                )
        except plyvel.Error as exc:
            raise StoreError(f"LevelDB write to {ps.label} failed: {exc}") from exc
        say_erased(share, removed)
        applied.update(map(_op_of, share.events))  # a flatten's op is "flatten"
        for i in failed:
            applied[share.events[i].op] -= 1
        return touched
