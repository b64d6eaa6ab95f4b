"""Producing ops: the seed's methods, sent to the ops topic as validated events.

Each method stamps a flake, validates the op with the worker's own models (a bad op fails
here, with the field named), and sends it keyed by the item name under the placement rule
(``[kafka] partitioner``), returning a Future of its :class:`Receipt`. The client refuses to
send when the ops topic's partition count changed (``PartitionCountError``) or an explicit
``ts`` is too far ahead (``ClockSkewError``). Why: ``docs/design/producer.md``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, TypedDict, Unpack

from confluent_kafka import KafkaError, Message, Producer

from dyno_stream.client.reads import ItemReads
from dyno_stream.config import Settings, load_settings, producer_config
from dyno_stream.core import ops
from dyno_stream.core.deadletter import KafkaHeaders
from dyno_stream.core.errors import (
    KafkaAuthError,
    OpRefusedError,
    PublishError,
    ValidationError,
)
from dyno_stream.core.events import Erase, EventModel, Flatten, make_op
from dyno_stream.core.expectations import Expectation
from dyno_stream.core.flake import new_flake
from dyno_stream.core.keys import check_name
from dyno_stream.kafka.clock import BrokerClockWatch, check_explicit_ts
from dyno_stream.kafka.connection import ConnectionWatch
from dyno_stream.kafka.security import AuthWatch
from dyno_stream.kafka.topics import PartitionCountWatch

log = logging.getLogger(__name__)

#: How often the client checks the ops topic's partition count (one metadata request).
_CHECK_EVERY_S = 5.0
#: How long a first send waits for the first check (an unreachable broker does not block
#: sends for longer: they are buffered as before, and the check runs again).
_FIRST_CHECK_WAIT_S = 10.0


@dataclass(frozen=True)
class Receipt:
    """Where Kafka put an op: its item, op and ``ts``, and its topic, partition and offset
    (what ``get(after=...)`` and ``outcome`` name the op by)."""

    item: str
    op: str
    ts: str | None
    topic: str
    partition: int
    offset: int


def epoch_ms(when: datetime | float) -> int:
    """Milliseconds since the epoch of a datetime (naive: local time) or of seconds."""
    seconds = when.timestamp() if isinstance(when, datetime) else when
    return int(seconds * 1000)


class Expect(TypedDict, total=False):
    """What a conditional op expects of its item (``core.expectations``): its chain hash,
    its changes count (0: absent), or both."""

    expect_hash: str
    expect_changes: int


@dataclass(frozen=True)
class Outcome:
    """What the owning worker made of an op (``DynoClient.outcome``)."""

    applied: bool
    #: the item as the op left it (None: deleted, or refused)
    item: dict[str, Any] | None = None
    #: the refusal's reason, e.g. ``expectation-failed``
    refused: str | None = None
    #: for ``expectation-failed``: the item's ``hash`` and ``changes`` when it was refused
    actual: dict[str, Any] = field(default_factory=dict)
    message: str = ""


class DynoClient:
    """A producer of op events. Thread-safe; use as a context manager or call ``close()``."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        **producer_overrides: Any,
    ) -> None:
        """``clock`` (seconds since the epoch) is this machine's clock as the skew checks read
        it; tests set it off to play a machine whose clock is wrong."""
        self.settings = settings or load_settings()
        self.topic = self.settings.topics.ops
        self._clock = clock
        self.clock_watch = BrokerClockWatch(self.topic)
        # A refused login or TLS handshake fails sends at once (see dyno_stream.kafka.security)
        # instead of after message.timeout.ms with "Message timed out".
        # An outage is logged once (and every 30 s while it lasts), not once per failed op.
        self.connection = ConnectionWatch(self.settings.kafka)
        self._auth = AuthWatch(self.settings.kafka, also=self.connection.error)
        self._producer = Producer(
            {**producer_config(self.settings), **self._auth.config(), **producer_overrides}
        )
        self._closed = threading.Event()
        self._reads: ItemReads | None = None
        self._reads_lock = threading.Lock()
        # deliveries resolve futures from librdkafka's callbacks, which run inside poll()
        self._poller = threading.Thread(target=self._poll, name="dyno-client", daemon=True)
        self._poller.start()
        self._partitions = PartitionCountWatch(
            self.settings,
            self._producer,
            every_s=_CHECK_EVERY_S,
            stop_when=lambda: self._auth.failure is not None,
        ).start()

    def _poll(self) -> None:
        purged = False
        while not self._closed.is_set():
            self._producer.poll(0.05)
            self.connection.tick()
            if self._auth.failure is not None and not purged:
                # nothing will get through: fail what waits now (their callbacks say why)
                self._producer.purge(in_queue=True, in_flight=False, blocking=False)
                purged = True

    def send(self, event: EventModel, headers: KafkaHeaders | None = None) -> Future[Receipt]:
        """Send one validated event (op, flatten or erase command), with ``headers`` if
        given (an expiry's condition, ``events.H_EXPIRE_IF_HASH``).

        Raises :class:`~dyno_stream.core.errors.ClockSkewError` for an op whose ``ts`` (a flatten
        command's ``before``) is beyond ``worker.max_clock_skew_s`` ahead of this machine's
        clock, :class:`~dyno_stream.core.errors.KafkaAuthError` once Kafka has refused this
        client's login (events sent before that fail their futures with it), and
        :class:`~dyno_stream.core.errors.PartitionCountError` while the ops topic does not
        have the partition count its stores were built with.
        """
        self._check_sendable(event)
        future: Future[Receipt] = Future()
        refused = self._auth.failure
        if refused is not None:  # learnt while waiting for the check: nothing gets through
            future.set_exception(KafkaAuthError(self._auth.describe(refused)))
            return future
        ts = None if isinstance(event, Flatten) else event.ts
        watch, clock = self.clock_watch, self._clock

        def done(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                refused = self._auth.failure
                future.set_exception(
                    KafkaAuthError(self._auth.describe(refused))
                    if refused is not None
                    else PublishError(f"{event.op} on {event.item!r}: {err}")
                )
            else:
                self.connection.answered()
                watch.acknowledged(msg.timestamp(), sent_s, clock())
                future.set_result(
                    Receipt(
                        event.item,
                        event.op,
                        ts,
                        msg.topic() or "",
                        msg.partition() or 0,
                        msg.offset() or 0,
                    )
                )

        value = event.model_dump_json().encode()
        sent_s = clock()
        while True:
            try:
                self._producer.produce(
                    self.topic, value, event.item.encode(), on_delivery=done, headers=headers
                )
                break
            except BufferError:
                self._producer.poll(0.1)
        return future

    def _check_sendable(self, event: EventModel) -> None:
        """Raise what ``send`` refuses before producing: a time too far ahead, a refused
        login, a changed partition count (waiting a moment for the first check of it)."""
        flake = event.before if isinstance(event, Flatten) else event.ts
        if flake is not None:
            field = "before" if isinstance(event, Flatten) else "ts"
            check_explicit_ts(field, flake, self.settings.worker.max_clock_skew_s, self._clock)
        self._auth.check()
        if not self._partitions.checked.is_set():
            deadline = time.monotonic() + _FIRST_CHECK_WAIT_S
            while not self._partitions.checked.wait(0.05) and time.monotonic() < deadline:
                if self._auth.failure is not None:
                    break  # a refused login: the send fails its future with it, at once
        if self._partitions.refusal is not None:
            raise self._partitions.refusal

    def _op(
        self, op: str, name: str, change: Any, ts: str | None, **expect: Unpack[Expect]
    ) -> Future[Receipt]:
        """Send one op; with ``expect_hash``/``expect_changes`` it is conditional: the owning
        worker applies it only if the item has that chain hash and changes count then
        (``core.expectations``); ``outcome(receipt)`` says whether it did."""
        headers = None
        if expect:
            headers = Expectation(expect.get("expect_hash"), expect.get("expect_changes")).headers()
        event = make_op(op, name, change, new_flake() if ts is None else ts)
        return self.send(event, headers)

    def put_item(
        self,
        name: str,
        value: dict[str, Any],
        ts: str | None = None,
        **expect: Unpack[Expect],
    ) -> Future[Receipt]:
        return self._op(ops.PUT_ITEM, name, value, ts, **expect)

    def del_item(
        self,
        name: str,
        ts: str | None = None,
        **expect: Unpack[Expect],
    ) -> Future[Receipt]:
        return self._op(ops.DEL_ITEM, name, {}, ts, **expect)

    def put_attrs(
        self,
        name: str,
        attrs: dict[str, Any],
        ts: str | None = None,
        **expect: Unpack[Expect],
    ) -> Future[Receipt]:
        return self._op(ops.PUT_ATTRS, name, attrs, ts, **expect)

    def del_attrs(
        self,
        name: str,
        attrs: list[str],
        ts: str | None = None,
        **expect: Unpack[Expect],
    ) -> Future[Receipt]:
        return self._op(ops.DEL_ATTRS, name, attrs, ts, **expect)

    def inc_attr_by(
        self,
        name: str,
        field: str,
        by: float = 1,
        ts: str | None = None,
        **expect: Unpack[Expect],
    ) -> Future[Receipt]:
        return self._op(ops.INC_ATTR_BY, name, {"field": field, "by": by}, ts, **expect)

    def dec_attr_by(
        self,
        name: str,
        field: str,
        by: float = 1,
        ts: str | None = None,
        **expect: Unpack[Expect],
    ) -> Future[Receipt]:
        return self._op(ops.DEC_ATTR_BY, name, {"field": field, "by": by}, ts, **expect)

    def append(
        self,
        name: str,
        field: str,
        text: str,
        ts: str | None = None,
        **expect: Unpack[Expect],
    ) -> Future[Receipt]:
        return self._op(ops.APPEND, name, {"field": field, "str": text}, ts, **expect)

    def add_to_set(
        self,
        name: str,
        field: str,
        value: Any,
        ts: str | None = None,
        **expect: Unpack[Expect],
    ) -> Future[Receipt]:
        return self._op(ops.ADD_TO_SET, name, {"field": field, "value": value}, ts, **expect)

    def flatten(self, name: str, hash: str) -> Future[Receipt]:
        """Ask the workers to fold the item's history up to the row with this chain hash."""
        check_name(name)
        try:
            command = Flatten(item=name, hash=hash)
        except Exception as exc:
            raise ValidationError("hash", f"{hash!r} is not an MD5 hex digest") from exc
        return self.send(command)

    def erase(self, name: str, ts: str | None = None) -> Future[Receipt]:
        """Ask the worker that owns the item to remove every row and the cached state of it
        at once, leaving its deleted marker, and publish its tombstone (an ``erase``
        command, in order with the item's other ops). ``ts`` (default: now) is the
        erasure's time: ops older than it are refused as late afterwards. To wait until
        the worker has done it, see ``dyno_stream.jobs.erasure.erase``."""
        check_name(name)
        return self.send(Erase(item=name, ts=new_flake() if ts is None else ts))

    def get(
        self,
        name: str,
        after: Receipt | None = None,
        timeout: float | None = None,
        *,
        as_of: datetime | float | None = None,
    ) -> dict[str, Any] | None:
        """The item as the worker owning it holds it, None when there is none (or it was
        deleted). ``after``: the receipt of this item's op; the answer then includes that op
        (read your own writes). ``as_of`` (a datetime, or seconds since the epoch): the item
        as it stood then; ``HistoryFoldedError`` when its history no longer reaches back
        that far (``[compaction] keep_history_s``). Waits at most ``timeout``
        (``worker.read_timeout_s``) for a partition restoring or moving, or a worker
        behind; see ``client.reads``."""
        check_name(name)
        return self.reads.get(
            name,
            None if after is None else (after.partition, after.offset),
            timeout,
            as_of_ms=None if as_of is None else epoch_ms(as_of),
        )

    def history(self, name: str, timeout: float | None = None) -> list[dict[str, Any]]:
        """The item's rows in its owner's store, oldest first: each op's ``ts``, ``op``,
        ``change`` and the ``changes`` and chain ``hash`` after it ([] for no item)."""
        check_name(name)
        found = self.reads.get(name, None, timeout, history=True)
        return [] if found is None else list(found["history"])

    def outcome(self, receipt: Receipt, timeout: float | None = None) -> Outcome:
        """What the owning worker made of the op ``receipt`` names: applied (with the item
        as it left it), or refused (``refused`` is the reason; for a conditional op,
        ``actual`` the item's hash and changes). The answer comes from the owner's store
        once it has reached the op; raises when the owner cannot tell (an op older than
        its store's record of refusals), or does not answer within ``timeout``."""
        try:
            item = self.reads.get(
                receipt.item, (receipt.partition, receipt.offset), timeout, outcome=True
            )
        except OpRefusedError as exc:
            return Outcome(False, None, exc.refused, exc.actual, str(exc))
        return Outcome(True, item)

    @property
    def reads(self) -> ItemReads:
        """Reads from the workers (made on first use: an admin connection of its own)."""
        with self._reads_lock:
            if self._reads is None:
                self._reads = ItemReads(
                    self.settings, {**self.settings.kafka.librdkafka(), **self._auth.config()}
                )
            return self._reads

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every op sent so far is acknowledged (or raise ``PublishError``)."""
        remaining = self._producer.flush(timeout)
        if remaining:
            self._auth.check()  # the reason nothing gets through, if Kafka refused us
            raise PublishError(f"{remaining} ops not acknowledged within {timeout}s")

    def close(self, timeout: float = 30.0) -> None:
        if not self._closed.is_set():
            try:
                self.flush(timeout)
            finally:
                self._closed.set()
                self._partitions.close()
                self._poller.join()

    def __enter__(self) -> DynoClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
