"""The doctor's check of the dead-letter topic: its newest hour counted by reason, with how
far ahead the clocks of producers refused for clock skew ran."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from dyno_stream.core.deadletter import H_REASON
from dyno_stream.core.errors import H_FLAKE_TIME, H_MESSAGE_TIME
from dyno_stream.jobs.doctor_exam import Examination, duration
from dyno_stream.kafka.reading import topic_reader

#: How far back the dead letters are counted.
DEAD_LETTER_WINDOW_S = 3600.0
#: The most dead letters read (the newest hour of a flood is counted up to this).
DEAD_LETTER_MAX = 100_000


def dead_letters(d: Examination) -> None:
    """The newest hour of dead letters, counted by reason (a warning when there are any)."""

    topic = d.s.topics.dead_letter
    since_ms = int((d.now() - DEAD_LETTER_WINDOW_S) * 1000)
    reasons: Counter[str] = Counter()
    ahead_ms: list[int] = []
    consumer = topic_reader(d.s, "doctor")
    try:
        partitions = list(d._topics[topic].partitions)
        ends = _assign_window(consumer, topic, partitions, since_ms, d.timeout)
        deadline = time.monotonic() + 4 * d.timeout
        read = 0
        while ends and read < DEAD_LETTER_MAX and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is not None:
                    continue
                read += 1
                headers = _headers(msg.headers())
                reason = (headers.get(H_REASON) or b"unknown").decode(errors="replace")
                reasons[reason] += 1
                if reason == "clock-skew":
                    try:
                        flake = int(headers.get(H_FLAKE_TIME) or b"")
                        appended = int(headers.get(H_MESSAGE_TIME) or b"")
                        ahead_ms.append(flake - appended)
                    except ValueError:
                        pass
                p, off = msg.partition() or 0, msg.offset() or 0
                if off + 1 >= ends.get(p, 0):
                    ends.pop(p, None)
    except KafkaException as exc:
        d.add("dead letters", "fail", f"cannot read {topic}: {exc}")
        return
    finally:
        consumer.close()
    if not reasons:
        d.add("dead letters", "pass", f"none in {topic} over the last hour")
        return
    counts = ", ".join(f"{r} {n:,}" for r, n in reasons.most_common())
    first = f" (the first {read:,} read)" if ends else ""
    detail = f"over the last hour in {topic}{first}: {counts}"
    fixes = []
    if "clock-skew" in reasons:
        worst = f"up to {duration(max(ahead_ms))} ahead" if ahead_ms else "ahead"
        detail += f"; clock-skew: producers whose clocks run {worst} of the broker"
        fixes.append("clock-skew: run NTP (chrony) on the producing hosts; those ops were refused")
    fixes.append(
        f"read them (their reason is the {H_REASON} header): "
        f"kcat -C -t {topic} -o s@{since_ms} -e -f '%h %s\\n'"
    )
    d.add("dead letters", "warn", detail, "; ".join(fixes))


def _assign_window(
    consumer: Consumer, topic: str, partitions: list[int], since_ms: int, timeout: float
) -> dict[int, int]:
    """Assign the partitions with letters since ``since_ms``, from the first of them; their
    ends now, by partition, which the count reads up to."""
    parts = [TopicPartition(topic, p, since_ms) for p in partitions]
    starts = consumer.offsets_for_times(parts, timeout=timeout)
    ends = {}
    for tp in starts:
        _, hi = consumer.get_watermark_offsets(tp, timeout=timeout)
        if tp.offset >= 0 and tp.offset < hi:
            ends[tp.partition] = hi
    consumer.assign([tp for tp in starts if tp.partition in ends])
    return ends


def _headers(raw: Any) -> dict[str, bytes]:
    """A message's headers by name (the last of a repeated one), values as bytes."""
    out: dict[str, bytes] = {}
    for key, value in raw or []:
        out[key] = value.encode() if isinstance(value, str) else (value or b"")
    return out
