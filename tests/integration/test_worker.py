"""Integration tests of the stream worker against the real local Kafka broker.

Nothing about Kafka is mocked: ops go to a real ops topic (through ``DynoClient`` or a raw
``confluent_kafka.Producer``), a real ``Worker`` consumes them on a thread, and the tests read
what it published on the real snapshot and dead-letter topics, and what it wrote in its stores.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import reference
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from helpers import op_bytes, running_partitions, wait_until

from dyno_stream.client import DynoClient, Receipt
from dyno_stream.config import MAX_MESSAGE_BYTES, Settings, producer_config
from dyno_stream.core.deadletter import (
    H_FIELD,
    H_MESSAGE,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_TOPIC,
    H_TRUNCATED,
    DeadLetter,
)
from dyno_stream.core.events import EventModel, make_op
from dyno_stream.core.flake import new_flake
from dyno_stream.kafka.reading import topic_reader
from dyno_stream.kafka.topics import ensure_topics, topic_specs
from dyno_stream.store import DynoStore
from dyno_stream.store.partition import (
    PENDING_DEAD_PREFIX,
    PENDING_SNAPSHOTS_PREFIX,
    PartitionStore,
)
from dyno_stream.stream.worker import Worker

WAIT_S = 60.0

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


class Tail:
    """Reads every partition of a topic from its beginning (no consumer group offsets)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.consumer = topic_reader(settings, "test-tail")
        meta = self.consumer.list_topics(topic, timeout=30)
        tmeta = meta.topics.get(topic)
        assert tmeta is not None and tmeta.error is None and tmeta.partitions, (
            f"topic {topic} does not exist"
        )
        self.consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(tmeta.partitions)]
        )
        self.messages: list[Message] = []

    def poll(self, timeout: float = 0.2) -> None:
        for msg in self.consumer.consume(10_000, timeout):
            err = msg.error()
            if err is None:
                self.messages.append(msg)
            elif err.code() != KafkaError._PARTITION_EOF:
                raise AssertionError(f"reading {self.topic}: {err}")

    def wait(
        self,
        pred: Callable[[list[Message]], bool],
        what: str,
        timeout: float = WAIT_S,
        describe: Callable[[list[Message]], str] | None = None,
    ) -> list[Message]:
        deadline = time.monotonic() + timeout
        while not pred(self.messages):
            if time.monotonic() > deadline:
                seen = describe(self.messages) if describe else _describe(self.messages)
                pytest.fail(
                    f"{what}: not seen on {self.topic} within {timeout:.0f}s; "
                    f"{len(self.messages)} messages so far; {seen}"
                )
            self.poll()
        return self.messages

    def drain(self, quiet_s: float = 1.0) -> None:
        """Read on until nothing new arrives for ``quiet_s``."""
        last = len(self.messages)
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < quiet_s:
            self.poll()
            if len(self.messages) != last:
                last, quiet_since = len(self.messages), time.monotonic()

    def close(self) -> None:
        self.consumer.close()


def _describe(messages: list[Message], n: int = 5) -> str:
    tail = [(m.key(), (m.value() or b"")[:300]) for m in messages[-n:]]
    return f"last {len(tail)}: {tail!r}"


@pytest.fixture
def tail() -> Iterator[Callable[[Settings, str], Tail]]:
    made: list[Tail] = []

    def make(settings: Settings, topic: str) -> Tail:
        t = Tail(settings, topic)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def snapshots(messages: list[Message]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        snap = json.loads(m.value())
        assert m.key() == snap["item"].encode(), f"snapshot key {m.key()!r} is not the item name"
        out.append(snap)
    return out


def last_snapshots(messages: list[Message]) -> dict[str, dict[str, Any]]:
    """The last snapshot of each item (an item's snapshots share a partition, in order)."""
    last: dict[str, dict[str, Any]] = {}
    for snap in snapshots(messages):
        last[snap["item"]] = snap
    return last


def headers_of(msg: Message) -> dict[str, bytes]:
    return dict(msg.headers() or [])


def counter_value(counter: Any, *labels: str) -> float:
    value: float = (counter.labels(*labels) if labels else counter)._value.get()
    return value


def counter_total(counter: Any) -> float:
    return sum(
        s.value for metric in counter.collect() for s in metric.samples if s.name.endswith("_total")
    )


def store_path(settings: Settings, partition: int = 0) -> Path:
    return settings.worker.data_dir / settings.topics.ops / f"{partition:04d}"


# ---------------------------------------------------------------------------------------------
# the seed's example
# ---------------------------------------------------------------------------------------------


def test_seed_example_end_to_end(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    tail: Callable[[Settings, str], Tail],
    tmp_path: Path,
) -> None:
    s = make_settings()
    worker = start_worker(s)
    snaps = tail(s, s.topics.snapshots)

    with DynoClient(s) as client:
        d1 = client.put_item("chilts", {"nick": "chilts", "email": "me@example.com"}).result(30)
        d2 = client.del_attrs("chilts", ["email"]).result(30)
        d3 = client.put_attrs("chilts", {"name": "Andy Chilton"}).result(30)
        assert d1.ts and d2.ts and d3.ts and d1.ts < d2.ts < d3.ts
        assert (d1.topic, d1.partition) == (s.topics.ops, 0)
        assert d1.offset < d2.offset < d3.offset

        # the same ops, with the same flakes, in a local store: the reference hash
        with DynoStore(tmp_path / "reference") as ref:
            ref.put_item("chilts", {"nick": "chilts", "email": "me@example.com"}, ts=d1.ts)
            ref.del_attrs("chilts", ["email"], ts=d2.ts)
            ref.put_attrs("chilts", {"name": "Andy Chilton"}, ts=d3.ts)
            expected = ref.get_item("chilts")
        assert expected.changes == 3 and expected.hash

        snaps.wait(
            lambda ms: any(sn["changes"] == 3 for sn in snapshots(ms)),
            "snapshot of chilts with changes=3",
        )
        snaps.drain(0.5)
        last = snapshots(snaps.messages)[-1]
        assert last == {
            "item": "chilts",
            "value": {"nick": "chilts", "name": "Andy Chilton"},
            "timestamp": d3.ts,
            "changes": 3,
            "hash": expected.hash,
            "count": 3,
            "source": {"topic": s.topics.ops, "partition": 0, "offset": d3.offset},
        }

        n_before = len(snaps.messages)
        df = client.flatten("chilts", last["hash"]).result(30)
        assert df.offset == d3.offset + 1

    snaps.wait(lambda ms: len(ms) > n_before, "snapshot after the flatten command")
    snaps.drain(0.5)
    flat = snapshots(snaps.messages)[-1]
    assert flat == {
        "item": "chilts",
        "value": {"nick": "chilts", "name": "Andy Chilton"},
        "timestamp": d3.ts,
        "changes": 3,
        "hash": expected.hash,
        "count": 1,
        "source": {"topic": s.topics.ops, "partition": 0, "offset": df.offset},
    }
    assert len(snaps.messages) == n_before + 1, "one flatten command, one snapshot"

    worker.stop()
    with DynoStore(store_path(s)) as store:
        rows = [f"{k} = {v}" for k, v in store.rows()]
    assert rows == [
        f'chilts/{d3.ts}/history = {expected.hash}:3:{{"nick":"chilts","name":"Andy Chilton"}}'
    ]
    m = worker.worker.metrics
    assert counter_value(m.ops_applied, "putItem") == 1
    assert counter_value(m.ops_applied, "delAttrs") == 1
    assert counter_value(m.ops_applied, "putAttrs") == 1
    assert counter_value(m.ops_applied, "flatten") == 1
    assert counter_total(m.dead_lettered) == 0


# ---------------------------------------------------------------------------------------------
# poison events
# ---------------------------------------------------------------------------------------------


def _op_json(item: str, op: str, ts: str, change: Any) -> bytes:
    return json.dumps({"item": item, "op": op, "ts": ts, "change": change}).encode()


def reference_items(cases: list[Any]) -> dict[str, reference.ItemHistory]:
    """The reference model of the valid events among ``cases`` (ops and flattens), in the
    order they are sent; poison is left out, as the worker dead-letters it."""
    items: dict[str, reference.ItemHistory] = {}
    for _, _, value, _, reason, _ in cases:
        if reason is None:
            ev = json.loads(value)
            item = items.setdefault(ev["item"], reference.ItemHistory(ev["item"]))
            if ev["op"] == "flatten":
                assert item.flatten(ev["hash"]) == reference.FOLDED, ev
            else:
                assert item.offer(ev["ts"], ev["op"], ev["change"]) in (
                    reference.STORED,
                    reference.DUPLICATE,
                ), ev
    return items


def test_poison_events_go_to_the_dead_letter_topic(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    tail: Callable[[Settings, str], Tail],
    tmp_path: Path,
) -> None:
    s = make_settings(max_event_bytes=300)
    worker = start_worker(s)
    snaps = tail(s, s.topics.snapshots)
    dlq = tail(s, s.topics.dead_letter)

    f_old = new_flake()  # older than everything below: the late op's flake
    fc = [new_flake() for _ in range(2)]  # item C's flakes, the second one contested
    # (label, key, value, headers, reason or None when valid, H_FIELD expected or None)
    Case = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]], str | None, str | None]
    cases: list[Case] = []

    def valid(item: str, op: str, change: Any, ts: str | None = None) -> None:
        cases.append(
            (
                f"{op} {item}",
                item.encode(),
                _op_json(item, op, ts or new_flake(), change),
                [],
                None,
                None,
            )
        )

    def poison(
        label: str,
        key: bytes | None,
        value: bytes | None,
        reason: str,
        field: str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        cases.append((label, key, value, headers or [], reason, field))

    valid("p", "putItem", {"a": 1})
    poison(
        "not json",
        b"p",
        b"{not json",
        "not-json",
        "event",
        headers=[("trace-id", b"t-1"), ("empty", b"")],
    )
    valid("L", "putItem", {"v": 1})
    poison(
        "invalid utf-8",
        b"p",
        b'{"item":"p","op":"putAttrs","ts":"'
        + new_flake().encode()
        + b'","change":{"a":"\xff\xfe"}}',
        "not-json",
        "event",
    )
    valid("L", "putAttrs", {"w": 2})
    poison(
        "missing op",
        b"p",
        json.dumps({"item": "p", "ts": new_flake(), "change": {"a": 9}}).encode(),
        "invalid",
        "op",
    )
    valid("C", "putItem", {"x": 0}, ts=fc[0])
    poison("unknown op", b"p", _op_json("p", "frobnicate", new_flake(), {"a": 9}), "invalid", "op")
    valid("p", "putAttrs", {"b": 2})
    poison(
        "bad flake",
        b"p",
        _op_json("p", "putAttrs", "2024-01-01T00:00:00Z", {"a": 9}),
        "invalid",
        "ts",
    )
    poison(
        "change of wrong type",
        b"p",
        _op_json("p", "putAttrs", new_flake(), ["a", 9]),
        "invalid",
        "change",
    )
    valid("p", "incAttrBy", {"field": "n", "by": 5})
    poison(
        "incAttrBy by x",
        b"p",
        _op_json("p", "incAttrBy", new_flake(), {"field": "n", "by": "x"}),
        "invalid",
        "change.by",
    )
    poison("JSON not an object", b"p", b"[1, 2]", "invalid", "event")
    # valid JSON, but applying it would overflow to infinity: refused by the store
    valid("p", "incAttrBy", {"field": "big", "by": 1e308})
    poison(
        "overflow to infinity",
        b"p",
        _op_json("p", "incAttrBy", new_flake(), {"field": "big", "by": 1e308}),
        "invalid",
        "change.by",
    )
    poison(
        "NaN in change",
        b"p",
        b'{"item":"p","op":"putAttrs","ts":"' + new_flake().encode() + b'","change":{"a": NaN}}',
        "invalid",
        "change.a|change",
    )
    poison(
        "empty item name", b"", _op_json("", "putAttrs", new_flake(), {"a": 9}), "invalid", "item"
    )
    poison(
        "oversized", b"p", _op_json("p", "putAttrs", new_flake(), {"big": "x" * 400}), "oversized"
    )
    poison(
        "key mismatch",
        b"q",
        _op_json("p", "putAttrs", new_flake(), {"a": 9}),
        "key-mismatch",
        "key",
    )
    poison("tombstone", b"p", None, "invalid", "event")
    valid("C", "putAttrs", {"x": 1}, ts=fc[1])
    poison("flake conflict", b"C", _op_json("C", "putAttrs", fc[1], {"x": 2}), "conflict")
    valid("C", "putAttrs", {"x": 1}, ts=fc[1])  # an exact redelivery: a no-op, not a conflict

    # flatten L's two ops (the hash is the reference model's) ...
    hash_l = reference_items(cases)["L"].state().hash
    assert hash_l
    cases.append(
        (
            "flatten L",
            b"L",
            json.dumps({"item": "L", "op": "flatten", "hash": hash_l}).encode(),
            [],
            None,
            None,
        )
    )
    # ... then an op older than L's history row can no longer be placed
    poison("late op", b"L", _op_json("L", "putAttrs", f_old, {"late": True}), "late")
    valid("L", "putAttrs", {"z": 3})
    poison(
        "unknown flatten hash",
        b"p",
        json.dumps({"item": "p", "op": "flatten", "hash": "0" * 32}).encode(),
        "unknown-hash",
    )
    valid("p", "append", {"field": "s", "str": "hi"})

    # produce them all, in order, and learn each one's offset
    offsets: dict[int, int] = {}
    producer = Producer({**s.kafka.librdkafka(), "enable.idempotence": True, "linger.ms": 5})

    def on_delivery(i: int) -> Callable[[KafkaError | None, Message], None]:
        def done(err: KafkaError | None, msg: Message) -> None:
            assert err is None, f"case {cases[i][0]}: {err}"
            offsets[i] = msg.offset()

        return done

    for i, (_, key, value, headers, _, _) in enumerate(cases):
        producer.produce(
            s.topics.ops, value, key, headers=headers or None, on_delivery=on_delivery(i)
        )
    assert producer.flush(30) == 0
    assert len(offsets) == len(cases)
    assert sorted(offsets.values()) == [offsets[i] for i in range(len(cases))], "produced in order"

    expected_dead = {offsets[i]: c for i, c in enumerate(cases) if c[4] is not None}
    expected_items = {
        "p": ({"a": 1, "b": 2, "n": 5, "big": 1e308, "s": "hi"}, 5, 5),
        "L": ({"v": 1, "w": 2, "z": 3}, 3, 2),
        "C": ({"x": 1}, 2, 2),
    }

    def items_done(ms: list[Message]) -> bool:
        last = last_snapshots(ms)
        return all(
            name in last and last[name]["changes"] == changes and last[name]["count"] == count
            for name, (_, changes, count) in expected_items.items()
        )

    dlq.wait(
        lambda ms: len(ms) >= len(expected_dead),
        f"{len(expected_dead)} dead letters",
        describe=lambda ms: repr(sorted(headers_of(m).get(H_REASON, b"?") for m in ms)),
    )
    snaps.wait(
        items_done, "final snapshots of p, L and C", describe=lambda ms: repr(last_snapshots(ms))
    )
    dlq.drain(1.0)
    snaps.drain(0.5)

    # the worker is unharmed
    assert worker.thread.is_alive(), f"worker thread died: {worker.error!r}"
    assert worker.error is None

    # every poison event is a dead letter: its own bytes, key and headers, plus the reason
    got: dict[int, Message] = {}
    for m in dlq.messages:
        h = headers_of(m)
        off = int(h[H_OFFSET])
        assert off not in got, f"two dead letters for offset {off}"
        got[off] = m
    assert sorted(got) == sorted(expected_dead), (
        f"dead letters for offsets {sorted(got)}, expected {sorted(expected_dead)} "
        f"({[c[0] for c in expected_dead.values()]})"
    )
    for off, (label, key, value, headers, reason, field) in expected_dead.items():
        m = got[off]
        h = headers_of(m)
        assert h[H_REASON].decode() == reason, f"{label}: reason {h[H_REASON]!r}"
        assert h[H_TOPIC].decode() == s.topics.ops, label
        assert h[H_PARTITION] == b"0", label
        assert h[H_MESSAGE], f"{label}: no error message"
        assert m.value() == value, f"{label}: value not kept byte for byte"
        assert m.key() == key, f"{label}: key {m.key()!r}, sent {key!r}"
        if field is not None:
            assert h.get(H_FIELD, b"").decode() in field.split("|"), (
                f"{label}: field {h.get(H_FIELD)!r}"
            )
        original = (m.headers() or [])[: len(headers)]
        assert original == headers, f"{label}: original headers {original!r}"
    oversized_at = next(o for o, c in expected_dead.items() if c[4] == "oversized")
    assert b"300" in headers_of(got[oversized_at])[H_MESSAGE], "the message names the limit"

    # the valid ops around them all applied, exactly
    last = last_snapshots(snaps.messages)
    assert set(last) == set(expected_items), f"snapshots of unexpected items: {set(last)}"
    for name, (value, changes, count) in expected_items.items():
        assert last[name]["value"] == value, name
        assert (last[name]["changes"], last[name]["count"]) == (changes, count), name
    # and the hashes are the reference model's for the same ops (and flatten)
    model = reference_items(cases)
    for name in expected_items:
        want = model[name].state()
        assert (want.value, want.changes, want.count) == expected_items[name]
        assert last[name]["hash"] == want.hash, name
        assert last[name]["timestamp"] == want.timestamp, name

    worker.stop()
    metrics = worker.worker.metrics
    want_counts: dict[str, int] = {}
    for _, _, _, _, reason, _ in expected_dead.values():
        assert reason is not None
        want_counts[reason] = want_counts.get(reason, 0) + 1
    assert want_counts == {
        "not-json": 2,
        "invalid": 10,
        "oversized": 1,
        "key-mismatch": 1,
        "late": 1,
        "conflict": 1,
        "unknown-hash": 1,
    }
    for reason, n in want_counts.items():
        assert counter_value(metrics.dead_lettered, reason) == n, reason
    assert counter_total(metrics.dead_lettered) == len(expected_dead)
    assert counter_value(metrics.ops_applied, "flatten") == 1
    # 11 valid ops (one of them the no-op redelivery, which counts as applied) + the flatten
    assert counter_total(metrics.ops_applied) == 12

    # the store agrees, and nothing is left pending
    with DynoStore(store_path(s)) as store:
        for name, (value, changes, count) in expected_items.items():
            item = store.get_item(name)
            assert (item.value, item.changes, item.count) == (value, changes, count), name
        assert list(store.iter_meta(PENDING_SNAPSHOTS_PREFIX)) == []
        assert list(store.iter_meta(PENDING_DEAD_PREFIX)) == []


def test_dead_letter_too_large_for_kafka_drops_the_bytes_and_says_so(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    tail: Callable[[Settings, str], Tail],
) -> None:
    """An event larger than Kafka takes in one dead letter (``MAX_MESSAGE_BYTES``, 8 MiB): the
    dead letter keeps the key, the reason and the source, drops the value, and says how many
    bytes it dropped in ``dyno.error.truncated``. The worker goes on."""
    s = make_settings()
    # an ops topic that takes the huge event (the worker's topics take at most 8 MiB)
    huge_limit = 2 * MAX_MESSAGE_BYTES
    admin = AdminClient(s.kafka.librdkafka())
    spec = NewTopic(s.topics.ops, 1, 1, config={"max.message.bytes": str(huge_limit)})
    for future in admin.create_topics([spec]).values():
        future.result(30)
    worker = start_worker(s)
    snaps = tail(s, s.topics.snapshots)
    dlq = tail(s, s.topics.dead_letter)
    huge = _op_json("big", "putAttrs", new_flake(), {"pad": "x" * (MAX_MESSAGE_BYTES + 1000)})
    producer = Producer({**s.kafka.librdkafka(), "message.max.bytes": huge_limit + 4096})
    producer.produce(s.topics.ops, huge, b"big")
    producer.produce(s.topics.ops, _op_json("after", "putItem", new_flake(), {"a": 1}), b"after")
    assert producer.flush(60) == 0

    (letter,) = dlq.wait(lambda ms: len(ms) >= 1, "the dead letter")
    snaps.wait(lambda ms: "after" in last_snapshots(ms), "the op after the huge one applied")
    h = headers_of(letter)
    assert h[H_REASON] == b"oversized"
    assert h[H_TRUNCATED] == str(len(huge)).encode()
    assert letter.value() is None and letter.key() == b"big"
    assert (h[H_TOPIC], h[H_PARTITION], h[H_OFFSET]) == (s.topics.ops.encode(), b"0", b"0")
    assert worker.thread.is_alive(), f"worker thread died: {worker.error!r}"


# ---------------------------------------------------------------------------------------------
# restart
# ---------------------------------------------------------------------------------------------


def test_restart_applies_nothing_twice(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    tail: Callable[[Settings, str], Tail],
) -> None:
    s = make_settings()
    items = [f"r{i}" for i in range(10)]
    model: dict[str, dict[str, Any]] = {n: {} for n in items}
    changes: dict[str, int] = dict.fromkeys(items, 0)

    def send(client: DynoClient, name: str, k: int) -> Receipt:
        if k % 2:
            fut = client.inc_attr_by(name, "n", k)
            model[name]["n"] = model[name].get("n", 0) + k
        else:
            fut = client.append(name, "log", f"{k},")
            model[name]["log"] = model[name].get("log", "") + f"{k},"
        changes[name] += 1
        return fut.result(30)

    w1 = start_worker(s)
    snaps = tail(s, s.topics.snapshots)
    with DynoClient(s) as client:
        for k in range(5):
            for name in items:
                send(client, name, k)
    n_first = 50

    def caught_up(ms: list[Message]) -> bool:
        last = last_snapshots(ms)
        return all(n in last and last[n]["changes"] == changes[n] for n in changes)

    snaps.wait(caught_up, "phase-1 snapshots", describe=lambda ms: repr(last_snapshots(ms)))
    w1.stop()
    snaps.drain(0.5)
    cut = len(snaps.messages)
    assert counter_total(w1.worker.metrics.ops_applied) == n_first

    # more ops while no worker runs: a subset of the items, and a new one
    with DynoClient(s) as client:
        for k in range(5, 8):
            for name in items[:5]:
                send(client, name, k)
        model["fresh"], changes["fresh"] = {}, 0
        send(client, "fresh", 1)
        last_d = send(client, "fresh", 2)
    n_second = 5 * 3 + 2
    assert last_d.offset == n_first + n_second - 1

    w2 = start_worker(s)  # same settings, same data dir
    snaps.wait(caught_up, "phase-2 snapshots", describe=lambda ms: repr(last_snapshots(ms)))
    snaps.drain(1.0)
    w2.stop()

    later = snapshots(snaps.messages[cut:])
    assert {sn["item"] for sn in later} == {*items[:5], "fresh"}, "only touched items republish"
    assert all(sn["source"]["offset"] >= n_first for sn in later), [sn["source"] for sn in later]
    m2 = w2.worker.metrics
    assert counter_total(m2.ops_applied) == n_second, "the new worker re-applied old ops"
    assert counter_value(m2.events_consumed) == n_second, "the new worker re-read old ops"
    assert counter_value(m2.pending_republished) == 0

    with DynoStore(store_path(s)) as store:
        for name in changes:
            item = store.get_item(name)
            assert item.value == model[name], name
            assert item.changes == changes[name], name
            assert item.count == changes[name], name
        assert list(store.iter_meta(PENDING_SNAPSHOTS_PREFIX)) == []
        ps_offset = PartitionStore(s.topics.ops, 0, store)
        assert ps_offset.pending_snapshots() == ({}, [])
    last = last_snapshots(snaps.messages)
    for name in changes:
        assert last[name]["value"] == model[name] and last[name]["changes"] == changes[name]


# ---------------------------------------------------------------------------------------------
# crash recovery of pending snapshots
# ---------------------------------------------------------------------------------------------


def test_pending_snapshots_of_a_crashed_run_are_published(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    tail: Callable[[Settings, str], Tail],
) -> None:
    s = make_settings()
    ensure_topics(s)

    # what the crashed worker had consumed: three ops, then a poison event
    events: list[EventModel] = [
        make_op("putItem", "crashed", {"nick": "c"}, new_flake()),
        make_op("incAttrBy", "crashed", {"field": "n", "by": 2}, new_flake()),
        make_op("putAttrs", "crashed", {"name": "Crash"}, new_flake()),
    ]
    with DynoClient(s) as client:
        deliveries = [client.send(e).result(30) for e in events]
    assert [d.offset for d in deliveries] == [0, 1, 2]
    bad = b'{"item":"crashed","op":"putAttrs"}'
    producer = Producer(s.kafka.librdkafka())
    producer.produce(s.topics.ops, bad, b"crashed", headers=[("h", b"1")])
    assert producer.flush(30) == 0
    letter = DeadLetter(
        s.topics.ops, 0, 3, b"crashed", bad, [("h", b"1")], "invalid", "ts: Field required", "ts"
    )

    # ... applied in two batches (step 2), then it died before their messages were
    # acknowledged (batches are pipelined, so both are pending)
    ps = PartitionStore.open(s.worker.data_dir, s.topics.ops, 0, False)
    try:
        assert ps.next_offset is None
        with ps.transaction() as tx:
            tx.apply(events[:2])
            tx.track(2, snapshots={"crashed": 1}, dead=[])
        with ps.transaction() as tx:
            tx.apply(events[2:])
            tx.track(4, snapshots={"crashed": 2}, dead=[letter])
        pending, keys = ps.pending_snapshots()
        assert pending == {"crashed": 2} and len(keys) == 2
        assert len(ps.pending_dead_letters()) == 1
        stored = ps.store.get_item("crashed")
    finally:
        ps.close()
    assert stored.changes == 3

    worker = start_worker(s)
    snaps = tail(s, s.topics.snapshots)
    dlq = tail(s, s.topics.dead_letter)
    snaps.wait(lambda ms: len(ms) >= 1, "the pending snapshot of 'crashed'")
    dlq.wait(lambda ms: len(ms) >= 1, "the pending dead letter")
    snaps.drain(1.0)
    dlq.drain(0.2)
    assert worker.thread.is_alive(), f"worker died: {worker.error!r}"
    worker.stop()

    assert snapshots(snaps.messages) == [
        {
            "item": "crashed",
            "value": {"nick": "c", "n": 2, "name": "Crash"},
            "timestamp": events[2].ts,  # type: ignore[union-attr]
            "changes": 3,
            "hash": stored.hash,
            "count": 3,
            # the store's last applied offset (3, the poison event): the value holds
            # everything up to there
            "source": {"topic": s.topics.ops, "partition": 0, "offset": 3},
        }
    ]
    assert len(dlq.messages) == 1
    dm = dlq.messages[0]
    assert (dm.key(), dm.value()) == (b"crashed", bad)
    h = headers_of(dm)
    assert (dm.headers() or [])[0] == ("h", b"1")
    assert (h[H_REASON], h[H_OFFSET], h[H_FIELD]) == (b"invalid", b"3", b"ts")

    m = worker.worker.metrics
    assert counter_value(m.pending_republished) == 2
    assert counter_total(m.ops_applied) == 0, "ops the store already held were applied again"
    assert counter_value(m.events_consumed) == 0, "the worker re-read offsets the store holds"

    ps = PartitionStore.open(s.worker.data_dir, s.topics.ops, 0, False)
    try:
        assert ps.pending_snapshots() == ({}, []), "the pending-snapshots rows were not cleared"
        assert list(ps.store.iter_meta(PENDING_SNAPSHOTS_PREFIX)) == []
        assert ps.pending_dead_letters() == []
        assert ps.next_offset == 4
        assert ps.store.get_item("crashed") == stored
    finally:
        ps.close()


def test_a_republished_snapshot_names_the_offset_its_value_is_current_to(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    tail: Callable[[Settings, str], Tail],
) -> None:
    """Batch 1 failed to publish, batch 2 (same item) was acknowledged and its pending row
    cleared: the republished snapshot holds both ops, so it must not name batch 1's offset
    (a restore from it would replay the second op again)."""
    s = make_settings()
    ensure_topics(s)
    events = [
        make_op("putItem", "x", {"a": 1}, new_flake()),
        make_op("putAttrs", "x", {"b": 2}, new_flake()),
    ]
    with DynoClient(s) as client:
        assert [client.send(e).result(30).offset for e in events] == [0, 1]
    ps = PartitionStore.open(s.worker.data_dir, s.topics.ops, 0, False)
    try:
        with ps.transaction() as tx:
            tx.apply(events[:1])
            tx.track(1, snapshots={"x": 0}, dead=[])
        with ps.transaction() as tx:
            tx.apply(events[1:])
            acknowledged = tx.track(2, snapshots={"x": 1}, dead=[])
        ps.clear_pending(acknowledged)
        assert ps.pending_snapshots()[0] == {"x": 0}  # only batch 1 is left pending
    finally:
        ps.close()

    worker = start_worker(s)
    snaps = tail(s, s.topics.snapshots)
    snaps.wait(lambda ms: len(ms) >= 1, "the republished snapshot")
    worker.stop()
    (snap,) = snapshots(snaps.messages)
    assert snap["value"] == {"a": 1, "b": 2}
    assert snap["source"]["offset"] == 1


def test_ops_consumed_with_a_failed_republish_on_assign_are_applied(
    make_settings: Callable[..., Settings],
    tail: Callable[[Settings, str], Tail],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The republish of a crashed run's pending snapshot fails when its partition starts (the
    snapshot topic is missing). The worker pauses its partitions and goes on polling; once
    Kafka takes the snapshot, it resumes from the store's offset and applies every op, none
    dropped (the consumer had fetched past them while paused)."""
    s = make_settings(create_missing=False, publish_timeout_s=1.0, batch_timeout_s=5.0)
    admin = AdminClient(s.kafka.librdkafka())
    specs = {spec.topic: spec for spec in topic_specs(s)}
    for future in admin.create_topics([specs[s.topics.ops], specs[s.topics.dead_letter]]).values():
        future.result(30)
    events = [make_op("incAttrBy", "x", {"field": "n", "by": 1}, new_flake()) for _ in range(20)]
    patient = s.model_copy(update={"worker": s.worker.model_copy(update={"publish_timeout_s": 30})})
    with DynoClient(patient) as client:
        for e in events:
            client.send(e).result(30)
    ps = PartitionStore.open(s.worker.data_dir, s.topics.ops, 0, False)
    try:  # a crashed run applied the first op, and its snapshot is still pending
        with ps.transaction() as tx:
            tx.apply(events[:1])
            tx.track(1, snapshots={"x": 0}, dead=[])
    finally:
        ps.close()

    caplog.set_level(logging.WARNING, logger="dyno_stream.stream.worker")
    worker = Worker(s, handle_signals=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        # the republish times out after 1 s (no snapshot topic): the worker pauses ...
        def republish_failed() -> bool:
            return any("pausing every partition" in r.getMessage() for r in caplog.records)

        wait_until(republish_failed, WAIT_S, lambda: f"no failed republish: {caplog.text}")
        failure = next(
            r.getMessage() for r in caplog.records if "pausing every partition" in r.getMessage()
        )
        # the crashed run's one pending snapshot, not a later batch's: still waited for, or
        # already timed out by librdkafka (both at 1 s: on a loaded machine either comes first)
        counts = re.match(r"(\d+) messages unacknowledged after 1s, (\d+) failed", failure)
        assert counts is not None and int(counts[1]) + int(counts[2]) == 1, failure
        wait_until(
            lambda: set(worker.health.partition_states.values()) == {"PAUSED"},
            WAIT_S,
            lambda: f"partition states {worker.health.partition_states}",
        )
        assert thread.is_alive()
        assert worker.reads.item("x")["changes"] == 1  # type: ignore[index]  # nothing applied
        assert s.topics.snapshots not in admin.list_topics(timeout=30).topics
        for future in admin.create_topics([specs[s.topics.snapshots]]).values():
            future.result(30)
        snaps = tail(s, s.topics.snapshots)
        snaps.wait(
            lambda ms: last_snapshots(ms).get("x", {}).get("changes") == len(events),
            "a snapshot of x with every op",
            describe=lambda ms: repr(last_snapshots(ms).get("x")),
        )
    finally:
        worker.stop()
        thread.join(60)
    with DynoStore(store_path(s)) as store:
        item = store.get_item("x")
    assert item.value == {"n": len(events)} and item.changes == len(events)


# ---------------------------------------------------------------------------------------------
# Kafka offset commits (lag tools only)
# ---------------------------------------------------------------------------------------------


def _committed(s: Settings) -> int:
    c = Consumer({**s.kafka.librdkafka(), "group.id": s.worker.group_id})
    try:  # never subscribes: only reads the group's committed offset
        (tp,) = c.committed([TopicPartition(s.topics.ops, 0)], timeout=30)
        return int(tp.offset)
    finally:
        c.close()


@pytest.mark.parametrize("interval", [0.0, 3600.0])
def test_offsets_are_committed_at_most_every_commit_interval(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    tail: Callable[[Settings, str], Tail],
    interval: float,
) -> None:
    """Acknowledged offsets reach Kafka within the interval (0: after every batch), never
    before the snapshots; with a long interval only the revoke at shutdown commits them."""
    s = make_settings(commit_interval_s=interval)
    w = start_worker(s)
    snaps = tail(s, s.topics.snapshots)
    with DynoClient(s) as client:
        for k in range(3):
            client.put_attrs("c", {"k": k}).result(30)
            snaps.wait(lambda ms, k=k: len(ms) > k, f"snapshot {k}")
            if interval == 0:  # committed once its snapshot is out, without a shutdown
                deadline = time.monotonic() + WAIT_S
                while _committed(s) != k + 1:
                    assert time.monotonic() < deadline, f"offset {k + 1} not committed"
                    time.sleep(0.1)
    if interval:
        # the loop has turned 2 s after the last snapshot came out: a worker whose interval
        # were a second or less would have committed by then (checked with 1.0 here)
        acknowledged_at = time.monotonic()
        wait_until(
            lambda: w.worker.health.last_loop > acknowledged_at + 2.0,
            WAIT_S,
            lambda: "the worker's loop stopped turning",
        )
        assert _committed(s) < 0, "committed before the interval was up"
    w.stop()
    assert _committed(s) == 3  # the revoke on shutdown commits what the store holds


# ---------------------------------------------------------------------------------------------
# batching
# ---------------------------------------------------------------------------------------------


def test_a_batch_waits_batch_linger_s_for_more_events(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    tail: Callable[[Settings, str], Tail],
) -> None:
    """With ``batch_linger_s`` a batch that has its first event waits that long for more:
    two ops sent 0.3 s apart are one batch (without it, each is its own)."""
    s = make_settings(batch_linger_s=2.0)
    running = start_worker(s)
    wait_until(
        lambda: running_partitions(running.worker) != [],
        WAIT_S,
        lambda: f"partitions: {running.worker.health.partition_states}",
    )
    producer = Producer(producer_config(s))
    for n in (1, 2):
        value = op_bytes("lingered", "putAttrs", new_flake(), {"n": n})
        producer.produce(s.topics.ops, value, b"lingered")
        producer.flush(10)
        if n == 1:
            time.sleep(0.3)  # the stimulus: the second op arrives while the batch lingers
    snaps = tail(s, s.topics.snapshots)
    snaps.wait(lambda ms: any(json.loads(m.value())["changes"] == 2 for m in ms), "both ops")
    [sizes] = running.worker.metrics.batch_size.collect()
    count = next(x.value for x in sizes.samples if x.name.endswith("_count"))
    total = next(x.value for x in sizes.samples if x.name.endswith("_sum"))
    assert (count, total) == (1, 2), f"{count:.0f} batches of {total:.0f} events in all"
