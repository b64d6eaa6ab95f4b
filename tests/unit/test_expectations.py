"""Conditional ops (``core.expectations``): the check, the store transaction that applies or
refuses them in order, and what a read with ``after=`` then answers (a real LevelDB store,
fake Kafka clients)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Message
from fakes import FakeProducer, batch_processor
from helpers import op_bytes

from dyno_stream.config import load_settings
from dyno_stream.core.errors import ExpectationFailedError, ValidationError
from dyno_stream.core.events import make_op
from dyno_stream.core.expectations import H_EXPECT_CHANGES, H_EXPECT_HASH, Expectation
from dyno_stream.core.flake import new_flake
from dyno_stream.core.ops import ItemState
from dyno_stream.kafka.partitioning import PlacementRule
from dyno_stream.store import DynoStore
from dyno_stream.store.partition import OFFSET_KEY, PartitionStore
from dyno_stream.stream.metrics import WorkerMetrics
from dyno_stream.stream.processing import BatchProcessor
from dyno_stream.stream.reads import StoreReads

HASH = "0" * 32


def test_an_expectation_comes_from_headers_and_refuses_what_does_not_match() -> None:
    e = Expectation.from_headers([(H_EXPECT_HASH, b"a" * 32), (H_EXPECT_CHANGES, b"3")])
    assert e == Expectation("a" * 32, 3)
    assert Expectation.from_headers([("other", b"x")]) is None
    with pytest.raises(ValidationError, match="whole number"):
        Expectation.from_headers([(H_EXPECT_CHANGES, b"-1")])
    with pytest.raises(ValidationError, match="MD5"):
        Expectation("nothex")
    item = ItemState(hash="a" * 32, changes=3, timestamp="0000000000a0-0000-0000-000000000000")
    later, earlier = "0000000000b0-0000-0000-000000000000", "000000000090-0000-0000-000000000000"
    Expectation("a" * 32, 3).check("x", later, item)  # as expected, and newest: no error
    with pytest.raises(ExpectationFailedError, match="3 changes, not 2") as failed:
        Expectation(changes=2).check("x", later, item)
    assert failed.value.headers() == [
        ("dyno.actual.hash", b"a" * 32),
        ("dyno.actual.changes", b"3"),
    ]
    with pytest.raises(ExpectationFailedError, match="hash"):
        Expectation("b" * 32).check("x", later, item)
    with pytest.raises(ExpectationFailedError, match="newer op"):  # not its newest: refused
        Expectation(changes=3).check("x", earlier, item)
    Expectation(changes=0).check("new", later, ItemState())  # 0: the item must not exist


def test_each_conditional_op_is_checked_against_the_ops_before_it_in_the_batch(
    tmp_path: Path,
) -> None:
    with DynoStore(tmp_path / "s") as store:
        ops = [make_op("putItem", "x", {"n": i}, new_flake()) for i in range(3)]
        refused: list[int] = []
        with store.transaction() as tx:
            tx.apply(
                ops,
                lambda i, _e, exc: refused.append(i),
                # op 1 expects the item op 0 makes (1 change); op 2 expects it absent
                {1: Expectation(changes=1), 2: Expectation(changes=0)},
            )
        assert refused == [2]
        item = store.get_item("x")
        assert (item.value, item.changes) == ({"n": 1}, 2)


def _message(offset: int, item: str, ts: str, headers: list[tuple[str, bytes]]) -> Message:
    return Message(
        topic="ops",
        partition=0,
        offset=offset,
        key=item.encode(),
        value=op_bytes(item, "incAttrBy", ts, {"field": "n", "by": 1}),
        headers=headers,
        timestamp=(TIMESTAMP_LOG_APPEND_TIME, int(time.time() * 1000)),
    )


def test_a_refused_op_is_dead_lettered_and_a_read_after_it_says_so(tmp_path: Path) -> None:
    s = load_settings(worker={"data_dir": str(tmp_path)})
    producer, metrics = FakeProducer(), WorkerMetrics()
    processor = batch_processor(s, producer, metrics, PlacementRule("murmur2", 1))
    ps = PartitionStore.open(tmp_path, "ops", 0, sync=False)
    running = {("ops", 0): ps}
    processor.process([_message(10, "x", new_flake(), [])], running)
    hash_after_one = ps.store.get_item("x").hash
    assert hash_after_one is not None
    right = Expectation(hash_after_one, 1).headers()
    batch = [
        _message(11, "x", new_flake(), [(k, v) for k, v in right if isinstance(v, bytes)]),
        _message(12, "x", new_flake(), [(H_EXPECT_CHANGES, b"1")]),  # stale: 2 changes now
    ]
    processor.process(batch, running)
    processor.checkpoint.advance(wait=True)
    item = ps.store.get_item("x")
    assert (item.value, item.changes) == ({"n": 2}, 2)
    [letter] = [m for m in producer.produced if m.topic == s.topics.dead_letter]
    headers = dict(letter.headers or [])
    assert headers["dyno.error.reason"] == b"expectation-failed"
    assert headers["dyno.actual.changes"] == b"2"
    assert headers["dyno.actual.hash"] == item.hash.encode()

    reads = StoreReads(lambda: running, lambda: {"ops/0": "RUNNING"}, topic="ops")
    code, body, _ = reads.answer_item("x", {"after": ["0:12"], "outcome": ["1"]})
    assert code == 409, body
    assert body["refused"] == "expectation-failed"
    assert body["actual"] == {"hash": item.hash, "changes": 2}
    code, body, _ = reads.answer_item("x", {"after": ["0:11"], "outcome": ["1"]})
    assert code == 200 and body["value"] == {"n": 2}  # applied
    # before the store's record of refusals began: it cannot tell, and says so
    code, body, _ = reads.answer_item("x", {"after": ["0:9"], "outcome": ["1"]})
    assert code == 410 and "not known" in body["error"]
    ps.close()


def _processor(tmp_path: Path) -> tuple[BatchProcessor, FakeProducer]:
    s = load_settings(worker={"data_dir": str(tmp_path)})
    producer, metrics = FakeProducer(), WorkerMetrics()
    processor = batch_processor(s, producer, metrics, PlacementRule("murmur2", 1))
    return processor, producer


def test_a_refusal_is_recorded_even_when_a_replay_does_not_publish_it(tmp_path: Path) -> None:
    """Below the last owner's published offset a replay publishes nothing again, but what it
    refused is still recorded: a read after it must not answer "applied"."""
    processor, producer = _processor(tmp_path)
    ps = PartitionStore.open(tmp_path, "ops", 0, sync=False)
    ps.published_through = 100
    running = {("ops", 0): ps}
    processor.process([_message(50, "x", new_flake(), [(H_EXPECT_CHANGES, b"7")])], running)
    processor.checkpoint.advance(wait=True)
    assert not [m for m in producer.produced if m.topic == "dyno.dead-letter"]  # quiet
    reads = StoreReads(lambda: running, lambda: {"ops/0": "RUNNING"}, topic="ops")
    code, body, _ = reads.answer_item("x", {"after": ["0:50"], "outcome": ["1"]})
    assert code == 409 and body["refused"] == "expectation-failed", body
    ps.close()


def test_a_store_another_release_moved_on_knows_no_outcome_since(tmp_path: Path) -> None:
    processor, _ = _processor(tmp_path)
    ps = PartitionStore.open(tmp_path, "ops", 0, sync=False)
    processor.process([_message(10, "x", new_flake(), [])], {("ops", 0): ps})
    assert ps.outcomes_from == 10
    # a release without the record of refusals applies offsets 11..19 to the store
    ps.store.apply([], internal_rows={OFFSET_KEY: b"20"})
    ps.close()
    again = PartitionStore.open(tmp_path, "ops", 0, sync=False)
    assert again.outcomes_from is None
    reads = StoreReads(lambda: {("ops", 0): again}, lambda: {"ops/0": "RUNNING"}, topic="ops")
    code, body, _ = reads.answer_item("x", {"after": ["0:15"], "outcome": ["1"]})
    assert code == 410, body
    again.close()
