"""Clock skew: an op stamped far in the future must not freeze its item.

These tests run a real ``Worker`` against the session's real Kafka broker and produce with a
raw ``confluent_kafka.Producer``, as kcat or any other client would. The pure parts are in
``tests/unit/test_clock_skew_offline.py``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import (
    KafkaError,
    Message,
    Producer,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from helpers import (
    YEAR_S,
    cli_env,
    flake_at,
    high_watermark,
    last_snapshots_by_offset,
    op_bytes,
    read_topic,
    run_cli,
    skew_samples,
    wait_until,
)

from dyno_stream.client import DynoClient
from dyno_stream.config import Settings, producer_config
from dyno_stream.core.deadletter import H_FIELD, H_OFFSET, H_REASON
from dyno_stream.core.errors import H_FLAKE_TIME, H_MESSAGE_TIME, ClockSkewError
from dyno_stream.core.flake import new_flake
from dyno_stream.kafka.topics import ensure_topics

WAIT_S = 60.0


def produce(s: Settings, messages: list[tuple[str, bytes, int | None]]) -> None:
    """Each (key, value, CreateTime or None) in order, waiting for each acknowledgement (so a
    later op's LogAppendTime is never earlier than an earlier op's)."""
    producer = Producer(producer_config(s))
    errors: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(str(err))

    for key, value, timestamp in messages:
        kw = {} if timestamp is None else {"timestamp": timestamp}
        producer.produce(s.topics.ops, value, key.encode(), on_delivery=delivered, **kw)
        assert producer.flush(30) == 0
        assert not errors, errors


def dead_letters(s: Settings) -> list[Any]:
    return read_topic(s, s.topics.dead_letter) if high_watermark(s, s.topics.dead_letter)[1] else []


def wait_for_item(s: Settings, item: str, changes: int) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def arrived() -> bool:
        found.update(last_snapshots_by_offset(s).get(item) or {})
        return found.get("changes") == changes

    wait_until(arrived, WAIT_S, lambda: f"snapshot of {item} with {changes} changes: {found}")
    return found


# ---------------------------------------------------------------------------------------------
# the worker, against the real broker
# ---------------------------------------------------------------------------------------------


def test_an_op_a_year_ahead_is_dead_lettered_and_the_item_moves_on(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], Any]
) -> None:
    """The issue's scenario: a flake one year ahead no longer freezes the item."""
    s = make_settings()
    assert s.worker.max_clock_skew_s == 60.0  # the default is what is under test
    worker = start_worker(s)
    future_ts = flake_at(time.time() + YEAR_S)
    future_op = op_bytes("clock", "putItem", future_ts, {"v": "from-the-future"})
    before_ms = int(time.time() * 1000)
    produce(
        s,
        [
            ("clock", op_bytes("clock", "putItem", new_flake(), {"v": 1}), None),
            ("clock", future_op, None),
            ("clock", op_bytes("clock", "putAttrs", new_flake(), {"v": 2}), None),
        ],
    )
    after_ms = int(time.time() * 1000)

    snap = wait_for_item(s, "clock", changes=2)
    assert snap["value"] == {"v": 2}
    wait_until(lambda: bool(dead_letters(s)), WAIT_S, lambda: "the clock-skew dead letter")
    worker.stop()  # every message is published and acknowledged once it has stopped
    letters = dead_letters(s)
    assert len(letters) == 1, [d.headers for d in letters]
    letter = letters[0]
    h = letter.headers
    assert (h[H_REASON], h[H_FIELD]) == (b"clock-skew", b"ts")
    assert (letter.key, letter.value, h[H_OFFSET]) == (b"clock", future_op, b"1")
    assert int(h[H_FLAKE_TIME]) == int(future_ts[:12], 16)
    # the broker's LogAppendTime, stamped while we produced
    assert before_ms - 1000 <= int(h[H_MESSAGE_TIME]) <= after_ms + 1000, h
    message = h["dyno.error.message"].decode()
    assert "ahead of the message's LogAppendTime" in message and "at most 60 s" in message

    m = worker.worker.metrics
    assert m.dead_lettered.labels("clock-skew")._value.get() == 1
    skew = skew_samples(m)
    # three ops measured: two within a second of their append, one a year ahead
    assert skew["count"] == 3 and skew["+Inf"] == 3
    assert skew["1.0"] == 2 and skew["86400.0"] == 2, skew


def test_an_op_30_s_ahead_is_applied_under_the_default(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], Any]
) -> None:
    s = make_settings()
    worker = start_worker(s)
    ahead_ts = flake_at(time.time() + 30)
    produce(
        s,
        [
            ("near", op_bytes("near", "putItem", new_flake(), {"v": 1}), None),
            ("near", op_bytes("near", "putAttrs", ahead_ts, {"w": 2}), None),
        ],
    )
    snap = wait_for_item(s, "near", changes=2)
    assert (snap["value"], snap["timestamp"]) == ({"v": 1, "w": 2}, ahead_ts)
    worker.stop()
    assert dead_letters(s) == []
    skew = skew_samples(worker.worker.metrics)
    # 30 s less the way to the broker: in the (10, 30] bucket
    assert skew["count"] == 2 and skew["10.0"] == 1 and skew["30.0"] == 2, skew


def test_the_bound_is_the_message_timestamp_not_the_workers_clock(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On a CreateTime topic the producer's timestamp is the reference: an op stamped now in a
    message dated an hour ago is refused, one half an hour ahead in a message dated alike is
    not, whatever the worker's own clock says (so a replay decides as the first run did). Half
    an hour: Kafka 4 refuses a CreateTime more than an hour ahead of the broker's clock
    (``log.message.timestamp.after.max.ms``)."""
    caplog.set_level(logging.WARNING, logger="dyno_stream.stream.worker")
    s = make_settings()
    admin = AdminClient(s.kafka.librdkafka())
    spec = NewTopic(s.topics.ops, num_partitions=1, replication_factor=1)  # CreateTime
    admin.create_topics([spec])[s.topics.ops].result(30)
    ensure_topics(s)  # the other two
    worker = start_worker(s)
    now = time.time()
    hour_ago_ms = int((now - 3600) * 1000)
    refused = op_bytes("ct", "putItem", new_flake(), {"v": "now, in an old message"})
    produce(
        s,
        [
            ("ct", refused, hour_ago_ms),
            (
                "ct",
                op_bytes("ct", "putItem", flake_at(now + 1800), {"v": 2}),
                int((now + 1800) * 1000),
            ),
        ],
    )
    snap = wait_for_item(s, "ct", changes=1)
    assert snap["value"] == {"v": 2}
    wait_until(lambda: bool(dead_letters(s)), WAIT_S, lambda: "the clock-skew dead letter")
    worker.stop()
    [letter] = dead_letters(s)
    assert letter.headers[H_REASON] == b"clock-skew"
    assert int(letter.headers[H_MESSAGE_TIME]) == hour_ago_ms  # the producer's timestamp
    assert "ahead of the message's CreateTime" in letter.headers["dyno.error.message"].decode()
    assert any("uses CreateTime" in r.getMessage() for r in caplog.records), caplog.text


def test_a_flatten_command_before_a_far_future_time_is_dead_lettered(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], Any]
) -> None:
    """Folding rows newer than now would make honest ops placed among them ``late``."""
    s = make_settings()
    worker = start_worker(s)
    produce(s, [("f", op_bytes("f", "putItem", new_flake(), {"v": 1}), None)])
    snap = wait_for_item(s, "f", changes=1)
    command = {"item": "f", "op": "flatten", "hash": snap["hash"]}
    far = json.dumps({**command, "before": flake_at(time.time() + YEAR_S)}).encode()
    near = json.dumps({**command, "before": flake_at(time.time() + 5)}).encode()
    produce(s, [("f", far, None), ("f", near, None)])
    wait_until(lambda: bool(dead_letters(s)), WAIT_S, lambda: "the clock-skew dead letter")
    wait_until(
        lambda: worker.worker.metrics.ops_applied.labels("flatten")._value.get() == 1,
        WAIT_S,
        lambda: "the near flatten command applied",
    )
    worker.stop()
    [letter] = dead_letters(s)
    assert (letter.headers[H_REASON], letter.headers[H_FIELD]) == (b"clock-skew", b"before")
    assert letter.value == far


# ---------------------------------------------------------------------------------------------
# the client and the command line, against the real broker
# ---------------------------------------------------------------------------------------------


def test_the_client_and_the_cli_refuse_a_far_future_ts(
    make_settings: Callable[..., Settings],
) -> None:
    s = make_settings()
    ensure_topics(s)
    far = flake_at(time.time() + YEAR_S)
    with DynoClient(s) as client:
        with pytest.raises(ClockSkewError) as refused:
            client.put_item("c", {"v": 1}, ts=far)
        assert refused.value.field == "ts" and refused.value.reason == "clock-skew"
        assert "ahead of this machine's clock" in str(refused.value)
        assert "at most 60 s" in str(refused.value)
        # 30 s ahead is within the bound: sent and acknowledged
        client.put_item("c", {"v": 2}, ts=flake_at(time.time() + 30)).result(30)

    done = run_cli(cli_env(s), "op", "c", "putItem", '{"v":3}', "--ts", far)
    assert done.returncode == 1, done
    assert done.stderr.startswith("error: ts: flake time ") and "clock-skew" not in done.stdout
    assert "is the producer's clock wrong?" in done.stderr
    # only the op within the bound reached the topic
    assert [json.loads(r.value or b"")["change"] for r in read_topic(s, s.topics.ops)] == [{"v": 2}]


def test_the_client_warns_when_its_clock_is_off_the_brokers(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """The ops topic uses LogAppendTime, so an acknowledgement tells the broker's time."""
    caplog.set_level(logging.INFO, logger="dyno_stream.kafka.clock")
    s = make_settings()
    ensure_topics(s)
    with DynoClient(s) as honest:
        honest.put_item("w", {"v": 1}).result(30)
        assert honest.clock_watch.offset_s is not None
        assert abs(honest.clock_watch.offset_s) < 5
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text

    with DynoClient(s, clock=lambda: time.time() + 30) as fast:  # a machine 30 s ahead
        fast.put_item("w", {"v": 2}).result(30)
        offset = fast.clock_watch.offset_s
    # low by at most the time the op took to reach the broker: a new client's first op waits
    # for its connection, seconds on a loaded 2-core machine
    assert offset is not None and 25 <= offset <= 30.5, offset
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "s ahead of the Kafka broker's" in warnings[0], warnings

    caplog.clear()
    with DynoClient(s, clock=lambda: time.time() - 30) as slow:  # 30 s behind
        slow.put_item("w", {"v": 3}).result(30)
        behind = slow.clock_watch.offset_s
        assert behind is not None and -30.5 <= behind <= -25, behind
    assert any("s behind the Kafka broker's" in r.getMessage() for r in caplog.records)


def test_the_client_says_it_cannot_read_the_brokers_clock_from_a_create_time_topic(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dyno_stream.kafka.clock")
    s = make_settings()
    admin = AdminClient(s.kafka.librdkafka())
    spec = NewTopic(s.topics.ops, num_partitions=1, replication_factor=1)  # CreateTime
    admin.create_topics([spec])[s.topics.ops].result(30)
    with DynoClient(s, clock=lambda: time.time() + 30) as client:
        client.put_item("w", {"v": 1}).result(30)
        assert client.clock_watch.offset_s is None  # nothing learned, nothing claimed
    messages = [r.getMessage() for r in caplog.records]
    assert any("uses CreateTime" in m for m in messages), messages
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], messages
