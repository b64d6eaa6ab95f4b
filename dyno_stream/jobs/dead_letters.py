"""Dead letters back: read them by reason and time, show one, replay them to the ops topic.

A dead letter keeps its message's key, bytes and headers (``core.deadletter``). A replay
re-produces exactly those to the ops topic, placed by the placement rule, without the
headers the worker added, plus ``dyno.replayed.from`` naming the letter. An op keeps its
flake, so a replayed op already applied is a duplicate (nothing changes: a replay twice
applies nothing twice), and one past the lateness window is refused as ``late`` again.
With ``wait``, each replayed op's outcome is read from its owner's store (``DynoClient.outcome``).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime

from confluent_kafka import KafkaError, Message, Producer, TopicPartition

from dyno_stream.client.producer import DynoClient, Receipt
from dyno_stream.config import Settings, producer_config
from dyno_stream.core.deadletter import (
    H_MESSAGE,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_TOPIC,
    KafkaHeaders,
)
from dyno_stream.core.errors import ConfigError, DynoError, PublishError
from dyno_stream.kafka.reading import read_range, topic_reader, watermarks

#: Header a replayed message carries: the dead letter it came from (``<partition>@<offset>``).
H_REPLAYED_FROM = "dyno.replayed.from"
#: Headers the worker adds to a dead letter or a forward: not the original message's.
_ADDED_PREFIXES = ("dyno.error.", "dyno.source.", "dyno.actual.", "dyno.forwarded.")
#: Reasons whose letters are not ops to replay (a snapshot Kafka refused holds no op).
NOT_OPS = frozenset({"snapshot-too-large"})
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Letter:
    """One message of the dead-letter topic."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v.decode("utf-8", "replace")
        return None

    @property
    def reason(self) -> str:
        return self.header(H_REASON) or "unknown"

    @property
    def message(self) -> str:
        return self.header(H_MESSAGE) or ""

    @property
    def source(self) -> str:
        return f"{self.header(H_TOPIC)}/{self.header(H_PARTITION)}@{self.header(H_OFFSET)}"

    @property
    def replayable(self) -> bool:
        return self.key is not None and self.value is not None and self.reason not in NOT_OPS

    def original_headers(self) -> KafkaHeaders:
        """The headers the producer sent, and where this replay comes from."""
        kept: KafkaHeaders = [(k, v) for k, v in self.headers if not k.startswith(_ADDED_PREFIXES)]
        return [*kept, (H_REPLAYED_FROM, f"{self.partition}@{self.offset}".encode())]


def since_ms(text: str, now_s: float | None = None) -> int:
    """``--since``: a duration back from now (``90s``, ``30m``, ``2h``, ``7d``) or an ISO
    8601 time; milliseconds since the epoch."""
    now_s = time.time() if now_s is None else now_s
    m = _DURATION.match(text.strip())
    if m:
        return int((now_s - float(m.group(1)) * _UNIT_S[m.group(2)]) * 1000)
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError:
        raise ConfigError(
            f"--since {text!r}: expected a duration (90s, 30m, 2h, 7d) or an ISO time"
        ) from None


def read_letters(
    settings: Settings,
    *,
    since: int | None = None,
    reason: str | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> list[Letter]:
    """The dead letters now in the topic, oldest first per partition; only those at or
    after ``since`` (ms) and of ``reason``, if given."""
    topic = settings.topics.dead_letter
    consumer = topic_reader(settings, "dead-letters")
    try:
        ranges = {p: (lo, hi) for p, (lo, hi) in watermarks(consumer, topic).items()}
        if since is not None:
            asked = [TopicPartition(topic, p, since) for p in ranges]
            for tp in consumer.offsets_for_times(asked, timeout=30):
                lo, hi = ranges[tp.partition]
                ranges[tp.partition] = (hi if tp.offset < 0 else max(lo, tp.offset), hi)
        letters: list[Letter] = []
        for messages in read_range(consumer, topic, ranges, timeout=300):
            progress(len(messages))
            letters.extend(_letter(m) for m in messages)
    finally:
        consumer.close()
    return [
        x
        for x in letters
        if (reason is None or x.reason == reason) and (since is None or x.timestamp_ms >= since)
    ]


def _letter(msg: Message) -> Letter:
    raw = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return Letter(
        msg.partition() or 0,
        msg.offset() or 0,
        msg.timestamp()[1],
        msg.key(),
        msg.value(),
        [(k, v.encode() if isinstance(v, str) else v or b"") for k, v in pairs],
    )


def by_reason(letters: Iterable[Letter]) -> Counter[str]:
    return Counter(x.reason for x in letters)


@dataclass
class ReplayReport:
    """What a replay sent, and (with ``wait``) what the workers made of it."""

    replayed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    applied: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    unknown: int = 0


def replay(
    settings: Settings,
    letters: list[Letter],
    *,
    wait: bool = True,
    timeout: float = 60.0,
    progress: Callable[[int], None] = lambda n: None,
) -> ReplayReport:
    """Re-produce the replayable ``letters`` to the ops topic (``Letter.original_headers``);
    with ``wait``, read each one's outcome from its owner."""
    report = ReplayReport()
    producer = Producer(producer_config(settings))
    sent: list[tuple[str, Future[tuple[int, int]]]] = []
    for letter in letters:
        if not letter.replayable:
            report.skipped[letter.reason] += 1
            continue
        assert letter.key is not None
        future: Future[tuple[int, int]] = Future()
        producer.produce(
            settings.topics.ops,
            letter.value,
            letter.key,
            headers=letter.original_headers(),
            on_delivery=_settle(future),
        )
        sent.append((letter.key.decode("utf-8", "replace"), future))
        producer.poll(0)
    if producer.flush(settings.worker.publish_timeout_s + 5):
        raise PublishError(f"Kafka did not take every replayed op to {settings.topics.ops}")
    placed = [(name, f.result(0)) for name, f in sent]
    report.replayed = len(placed)
    if not wait:
        return report
    with DynoClient(settings) as client:
        for name, (partition, offset) in placed:
            receipt = Receipt(name, "", None, settings.topics.ops, partition, offset)
            try:
                outcome = client.outcome(receipt, timeout)
            except DynoError:
                report.unknown += 1
            else:
                if outcome.applied:
                    report.applied += 1
                else:
                    report.refused[outcome.refused or "unknown"] += 1
            progress(1)
    return report


def _settle(future: Future[tuple[int, int]]) -> Callable[[KafkaError | None, Message], None]:
    def done(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            future.set_exception(PublishError(f"replay to {msg.topic()}: {err}"))
        else:
            future.set_result((msg.partition() or 0, msg.offset() or 0))

    return done
