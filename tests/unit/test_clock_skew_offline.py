"""Clock skew, the parts that need no broker: the skew histogram's arithmetic, the
dead letter's headers across a crash, a message without a timestamp, far times described.

They run against real LevelDB and prometheus-client; the worker, client and command line
against the real broker are in ``tests/integration/test_clock_skew.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE, Message
from fakes import FakeProducer, batch_processor
from helpers import YEAR_S, flake_at, op_bytes, skew_samples
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest

from dyno_stream.core.deadletter import DeadLetter
from dyno_stream.core.errors import H_FLAKE_TIME, H_MESSAGE_TIME, ClockSkewError
from dyno_stream.kafka.clock import describe_ms
from dyno_stream.kafka.partitioning import PlacementRule
from dyno_stream.store.partition import PartitionStore
from dyno_stream.stream.metrics import SKEW_BUCKETS_S, SkewHistogram, WorkerMetrics


def test_the_skew_histogram_counts_as_prometheus_clients_own_would() -> None:
    values_ms = [-7_200_000, -59_999, -100, 0, 0, 1, 99, 100, 999, 30_000, 60_000, 60_001]
    values_ms += [YEAR_S * 1000, 5_000_000]
    ours = CollectorRegistry()
    mine = SkewHistogram(ours, SKEW_BUCKETS_S)
    mine.observe_many(values_ms[:5])
    mine.observe_many(values_ms[5:])
    mine.observe_many([])
    mine.observe_many(values_ms * 2)  # beyond a few: sorted once, bisected per bound
    theirs = CollectorRegistry()
    reference = Histogram(
        "dyno_clock_skew_seconds",
        "Flake time minus the Kafka message's timestamp of each op (positive: ahead)",
        buckets=SKEW_BUCKETS_S,
        registry=theirs,
    )
    for v in values_ms * 3:
        reference.observe(v / 1000)

    def samples(reg: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name, s.labels, round(s.value, 6))
            for metric in reg.collect()
            for s in metric.samples
            if not s.name.endswith("_created")
        ]

    assert samples(ours) == samples(theirs)
    assert b'dyno_clock_skew_seconds_bucket{le="60.0"} 33.0' in generate_latest(ours)


def test_a_message_without_a_timestamp_is_not_checked(tmp_path: Path) -> None:
    """``TIMESTAMP_NOT_AVAILABLE`` (pre-0.10 message formats): nothing to compare with."""
    from dyno_stream.config import load_settings

    settings, metrics = load_settings(), WorkerMetrics()
    processor = batch_processor(settings, FakeProducer(), metrics, PlacementRule("murmur2", 1))
    ps = PartitionStore.open(tmp_path, "t", 0, sync=False)
    try:
        far = flake_at(time.time() + YEAR_S)
        now_ms = int(time.time() * 1000)

        def msg(offset: int, timestamp: tuple[int, int]) -> Message:
            value = op_bytes("n", "putItem", far, {"o": offset})
            return Message(
                topic="t", partition=0, offset=offset, key=b"n", value=value, timestamp=timestamp
            )

        pb = processor._validated(
            ps, [msg(0, (TIMESTAMP_NOT_AVAILABLE, -1)), msg(1, (TIMESTAMP_CREATE_TIME, now_ms))]
        )
        assert pb.offsets == [0]
        [letter] = pb.dead
        assert (letter.offset, letter.reason) == (1, "clock-skew")
        assert skew_samples(metrics)["count"] == 1  # only the message with a time
    finally:
        ps.close()


def test_a_clock_skew_letter_keeps_both_times_across_a_crash() -> None:
    """A dead letter waits in the store (pending) until Kafka takes it: its times too."""
    exc = ClockSkewError("ts", "too far ahead", 2_000, 1_000)
    letter = DeadLetter("t", 0, 5, b"k", b"v", [("mine", b"1")], exc.reason, str(exc), "ts", [])
    letter = DeadLetter(**{**letter.__dict__, "details": exc.headers()})
    again = DeadLetter.decode(letter.encode())
    assert again == letter
    assert dict(again.kafka_headers())[H_FLAKE_TIME] == b"2000"
    assert dict(again.kafka_headers())[H_MESSAGE_TIME] == b"1000"
    # a pending row written before this change has no details: it still decodes
    old = json.loads(letter.encode())
    del old["details"]
    assert DeadLetter.decode(json.dumps(old).encode()).details == []


def test_times_past_year_9999_are_described_in_ms() -> None:
    assert describe_ms(0) == "1970-01-01T00:00:00.000Z"
    top = (1 << 48) - 1  # the largest flake time
    assert describe_ms(top) == f"{top} ms since the epoch"
