"""Online compaction against the real broker: flatten commands through the ops topic, applied
by real workers while ops keep arriving; the CLI; the workers' scheduled compaction.

Nothing is mocked. Ops are produced raw (JSON as the wire contract has it, keyed by item) with
``producer_config``; old ops carry flakes from two hours ago, so they fall before the
lateness window of one hour, and each item's last few ops carry current flakes, so they must
never be folded. Every expectation is computed from the ops themselves by the reference model
(bench/reference.py: the op semantics and the MD5 chain hash), independent of dyno_stream's
own code.
"""

from __future__ import annotations

import copy
import io
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import reference
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from helpers import cli_env, run_cli, wait_until, with_compaction
from rich.console import Console

from dyno_stream.config import CompactionSettings, Settings
from dyno_stream.core.deadletter import H_OFFSET, H_REASON
from dyno_stream.core.flake import FlakeGenerator, flake_time
from dyno_stream.jobs.compaction import Summary, compact_online
from dyno_stream.store import DynoStore, HistoryChangeset, Item
from dyno_stream.stream.worker import producer_config

HOUR_MS = 3_600_000
WAIT_S = 120.0

# the acceptance test's scale (see test_online_pass_while_ops_keep_arriving)
N_ITEMS = 10_000
OPS_PER_ITEM = 50
NEW_PER_ITEM = 3  # of those, the last ones carry current flakes
PARTITIONS = 4


# ---------------------------------------------------------------------------------------------
# the reference model, each item's chain kept
# ---------------------------------------------------------------------------------------------


def cjson(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class RefItem:
    """One item in the reference model: its value, hash and changes after every op sent, and
    each op's flake and the hash after it."""

    value: dict[str, Any]
    hash: str
    changes: int
    flakes: list[str]
    hashes: list[str]


class _Items(Mapping[str, RefItem]):
    def __init__(self, model: reference.Replay) -> None:
        self.model = model

    def __getitem__(self, name: str) -> RefItem:
        m = self.model
        assert m.flakes is not None and m.chains is not None
        return RefItem(
            m.values[name], m.hashes[name], m.changes[name], m.flakes[name], m.chains[name]
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.model.values)

    def __len__(self) -> int:
        return len(self.model.values)


class Reference:
    """The reference model (bench/reference.py) of every op sent, each item's chain kept."""

    def __init__(self) -> None:
        self.model = reference.Replay(keep_chain=True)
        self.items = _Items(self.model)

    def apply(self, name: str, op: str, ts: str, change: Any) -> None:
        self.model.apply(name, ts, op, change)  # refuses an op out of flake order


def nth_op(name: str, k: int) -> tuple[str, Any]:
    if k == 0:
        return "putItem", {"name": name, "n": 0}
    kind = k % 4
    if kind == 1:
        return "incAttrBy", {"field": "n", "by": k}
    if kind == 2:
        return "append", {"field": "log", "str": f"{k};"}
    if kind == 3:
        return "addToSet", {"field": "tags", "value": f"t{k % 3}"}
    return "putAttrs", {"p": k, "q": f"v{k}"}


def event(name: str, op: str, ts: str, change: Any) -> bytes:
    return cjson({"item": name, "op": op, "ts": ts, "change": change}).encode()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Ops:
    """A raw producer of ops that keeps the reference in step."""

    def __init__(self, s: Settings, ref: Reference) -> None:
        self.s = s
        self.ref = ref
        self.producer = Producer({**producer_config(s), "linger.ms": 20, "batch.size": 1_000_000})
        self.errors: list[str] = []
        self.count = 0

    def send(
        self,
        name: str,
        op: str,
        ts: str,
        change: Any,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    ) -> None:
        self.ref.apply(name, op, ts, change)
        value = event(name, op, ts, change)
        while True:
            try:
                self.producer.produce(
                    self.s.topics.ops, value, name.encode(), on_delivery=on_delivery or self._done
                )
                break
            except BufferError:
                self.producer.poll(0.05)
        self.count += 1

    def _done(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.errors.append(str(err))

    def flush(self) -> None:
        assert self.producer.flush(120) == 0, "ops not acknowledged"
        assert not self.errors, self.errors[:3]


def produce_items(
    ops_out: Ops, names: list[str], per_item: int, new_per_item: int, hours_ago: float = 2.0
) -> dict[str, str]:
    """Round by round, so every item's flakes increase; returns each item's last old flake."""
    at = now_ms() - int(hours_ago * HOUR_MS)
    old = FlakeGenerator(node=101, pid=1, clock=lambda: at)
    new = FlakeGenerator(node=102, pid=2)
    last_old: dict[str, str] = {}
    for k in range(per_item):
        is_new = k >= per_item - new_per_item
        for name in names:
            op, change = nth_op(name, k)
            ts = new.next() if is_new else old.next()
            if not is_new:
                last_old[name] = ts
            ops_out.send(name, op, ts, change)
        ops_out.producer.poll(0)
    ops_out.flush()
    return last_old


# ---------------------------------------------------------------------------------------------
# Kafka helpers
# ---------------------------------------------------------------------------------------------


def _consumer(s: Settings, group: str | None = None) -> Consumer:
    return Consumer(
        {
            **s.kafka.librdkafka(),
            "group.id": group or f"test-compact-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )


def watermarks(s: Settings, topic: str) -> dict[int, int]:
    c = _consumer(s)
    try:
        parts = c.list_topics(topic, timeout=30).topics[topic].partitions
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in parts}
    finally:
        c.close()


def wait_caught_up(s: Settings, workers: list[Any], timeout: float = WAIT_S) -> float:
    """Wait until the workers' group has committed every op produced so far; return seconds."""
    started = time.monotonic()
    ends = watermarks(s, s.topics.ops)
    c = _consumer(s, s.worker.group_id)  # never subscribes: only reads committed offsets
    try:
        tps = [TopicPartition(s.topics.ops, p) for p in ends]
        while True:
            committed = {tp.partition: tp.offset for tp in c.committed(tps, timeout=10)}
            if all(committed[p] >= end for p, end in ends.items()):
                return time.monotonic() - started
            for w in workers:
                assert w.thread.is_alive(), f"a worker died: {w.error!r}"
            if time.monotonic() - started > timeout:
                pytest.fail(f"workers not caught up in {timeout:.0f}s: {committed} < {ends}")
            time.sleep(0.2)
    finally:
        c.close()


def read_topic(s: Settings, topic: str, since: dict[int, int] | None = None) -> list[Message]:
    """Every message from ``since`` (or the beginning) to the end as it is now."""
    ends = watermarks(s, topic)
    c = _consumer(s)
    try:
        starts = {p: (since or {}).get(p, 0) for p in ends}
        todo = {p: e for p, e in ends.items() if e > starts[p]}
        if not todo:
            return []
        c.assign([TopicPartition(topic, p, starts[p]) for p in todo])
        out: list[Message] = []
        deadline = time.monotonic() + WAIT_S
        while todo:
            assert time.monotonic() < deadline, f"reading {topic} took over {WAIT_S:.0f}s"
            for m in c.consume(10_000, 0.5):
                if m.error() is not None:
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                    continue
                out.append(m)
                p = m.partition()
                if p in todo and m.offset() + 1 >= todo[p]:
                    del todo[p]
        return out
    finally:
        c.close()


def last_snapshots(messages: list[Message]) -> dict[str, dict[str, Any]]:
    last: dict[str, dict[str, Any]] = {}
    for m in messages:
        snap = json.loads(m.value())
        assert m.key() == snap["item"].encode()
        last[snap["item"]] = snap
    return last


def store_state(s: Settings) -> tuple[dict[str, Item], dict[str, list[Any]]]:
    """Every item and its history, from the stopped workers' stores."""
    root = s.worker.data_dir / s.topics.ops
    items: dict[str, Item] = {}
    histories: dict[str, list[Any]] = {}
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        with DynoStore(path) as store:
            for name, item in store.scan(lambda n, i: True):
                assert name not in items, f"{name} in two stores"
                items[name] = item
                histories[name] = store.get_history(name)
    return items, histories


def pass_policy(s: Settings, **kw: Any) -> CompactionSettings:
    base: dict[str, Any] = {"min_rows": 2, "lateness_s": 3600.0, "wait_s": WAIT_S}
    return CompactionSettings(**{**s.compaction.model_dump(), **base, **kw})


def quiet() -> Console:
    return Console(file=io.StringIO(), force_terminal=False, width=200)


def check_item(
    name: str,
    got: Item,
    hist: list[Any],
    ref: RefItem,
    last_old: str,
    n_old: int,
    where: str,
) -> list[str]:
    """What is wrong with one compacted item (empty when right)."""
    bad = []
    if got.value != ref.value:
        bad.append(f"{where} {name}: value {got.value!r} != {ref.value!r}")
    if (got.hash, got.changes, got.timestamp) != (ref.hash, ref.changes, ref.flakes[-1]):
        bad.append(
            f"{where} {name}: hash/changes/ts {(got.hash, got.changes, got.timestamp)} != "
            f"{(ref.hash, ref.changes, ref.flakes[-1])}"
        )
    want_count = 1 + (len(ref.flakes) - n_old)
    if got.count != want_count:
        bad.append(f"{where} {name}: count {got.count} != {want_count}")
    h0 = hist[0] if hist else None
    if not (
        isinstance(h0, HistoryChangeset)
        and h0.timestamp == last_old
        and h0.hash == ref.hashes[n_old - 1]
        and h0.changes == n_old
    ):
        bad.append(f"{where} {name}: first row {h0!r} is not the history at {last_old}")
    rest = [c.timestamp for c in hist[1:]]
    if rest != ref.flakes[n_old:]:
        bad.append(f"{where} {name}: rows after the history {rest} != {ref.flakes[n_old:]}")
    return bad


# ---------------------------------------------------------------------------------------------
# the acceptance test: a pass over 10,000 items x 50 ops while ops keep arriving
# ---------------------------------------------------------------------------------------------


class Writer(threading.Thread):
    """Keeps producing ops with current flakes to some items until stopped."""

    def __init__(self, s: Settings, ref: Reference, names: list[str]) -> None:
        super().__init__(name="test-writer", daemon=True)
        self.out = Ops(s, ref)
        self.names = names
        self.stop_now = threading.Event()
        self.gen = FlakeGenerator(node=103, pid=3)
        self.sent_at: list[float] = []  # monotonic time of each op's send
        self.error: BaseException | None = None

    def run(self) -> None:
        rnd = random.Random(7)
        try:
            k = 0
            while not self.stop_now.is_set():
                for _ in range(20):
                    name = rnd.choice(self.names)
                    k += 1
                    if k % 2:
                        op, change = "incAttrBy", {"field": "live", "by": k}
                    else:
                        op, change = "append", {"field": "live_log", "str": f"{k},"}
                    self.out.send(name, op, self.gen.next(), change)
                    self.sent_at.append(time.monotonic())
                self.out.producer.poll(0)
                time.sleep(0.02)
            self.out.flush()
        except BaseException as exc:
            self.error = exc


def test_online_pass_while_ops_keep_arriving(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
) -> None:
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    s = make_settings(partitions=PARTITIONS)
    worker = start_worker(s)
    ref = Reference()
    names = [f"item-{i:05d}" for i in range(N_ITEMS)]

    ops_out = Ops(s, ref)
    last_old = produce_items(ops_out, names, OPS_PER_ITEM, NEW_PER_ITEM)
    n_old = OPS_PER_ITEM - NEW_PER_ITEM
    assert ops_out.count == N_ITEMS * OPS_PER_ITEM
    timings["produce"] = time.monotonic() - t0
    timings["catch up"] = wait_caught_up(s, [worker], timeout=240)

    before = {n: (copy.deepcopy(ref.items[n].value), ref.items[n].hash) for n in names}
    snap_start = watermarks(s, s.topics.snapshots)
    ops_start = watermarks(s, s.topics.ops)

    # the pass, while a writer keeps sending ops to the first 2,000 items
    hot = names[:2000]
    writer = Writer(s, ref, hot)
    writer.start()
    while writer.out.count < 200:
        assert writer.is_alive(), writer.error
        time.sleep(0.01)
    p0 = time.monotonic()
    summary = compact_online(s, pass_policy(s, wait_s=300.0), quiet())
    p1 = time.monotonic()
    timings["pass"] = p1 - p0
    time.sleep(0.5)  # and a little after it
    writer.stop_now.set()
    writer.join(60)
    assert not writer.is_alive() and writer.error is None, writer.error
    during = writer.out.count
    assert during > 200
    timings["catch up after"] = wait_caught_up(s, [worker], timeout=240)

    # the ops topic: one flatten command per item, interleaved with the writer's ops
    tail = read_topic(s, s.topics.ops, ops_start)
    commands = [(m.partition(), m.offset(), json.loads(m.value())) for m in tail]
    flattens = [(p, o, c) for p, o, c in commands if c["op"] == "flatten"]
    assert len(tail) == len(flattens) + during
    assert sorted(c["item"] for _, _, c in flattens) == names, "one command per item"
    for _, _, c in flattens:
        assert set(c) == {"item", "op", "hash", "before"}, c
        assert c["hash"] in ref.items[c["item"]].hashes[OPS_PER_ITEM - 1 :], c
        assert abs(flake_time(c["before"]) - (time.time() - 3600)) < 300, c
    # per item, in partition order: the writer's ops before and after its flatten command
    stale = after_cmd = 0
    by_item: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for _, o, c in sorted(commands, key=lambda t: (t[0], t[1])):
        by_item.setdefault(c["item"], []).append((o, c))
    for name, msgs in by_item.items():
        i = next(k for k, (_, c) in enumerate(msgs) if c["op"] == "flatten")
        seen = ref.items[name].hashes.index(msgs[i][1]["hash"]) + 1  # ops the hash covers
        stale += seen < OPS_PER_ITEM + i  # ops reached the worker after the snapshot it read
        after_cmd += len(msgs) - i - 1
    in_pass = sum(1 for t in writer.sent_at if p0 <= t <= p1)
    # the interesting cases happened: ops between the snapshot read and the command (the
    # command's hash is then behind the item), and ops after the command, during the pass
    assert in_pass > 0 and stale > 0 and after_cmd > 0, (in_pass, stale, after_cmd)

    # snapshots published since the pass began: every item's newest one is the final state
    snaps = last_snapshots(read_topic(s, s.topics.snapshots, snap_start))
    assert set(snaps) == set(names), f"{len(set(names) - set(snaps))} items have no new snapshot"
    dead = read_topic(s, s.topics.dead_letter)
    assert dead == [], [dict(m.headers() or []).get(H_REASON) for m in dead[:5]]

    worker.stop()
    items, histories = store_state(s)
    assert set(items) == set(names)
    problems: list[str] = []
    for name in names:
        r = ref.items[name]
        problems += check_item(
            name, items[name], histories[name], r, last_old[name], n_old, "store"
        )
        snap = snaps[name]
        got = (snap["value"], snap["hash"], snap["changes"], snap["count"])
        if got != (r.value, r.hash, r.changes, items[name].count):
            problems.append(f"snapshot {name}: {got} != store/reference")
        if name not in hot and (r.value, r.hash) != before[name]:
            problems.append(f"{name} was not written during the pass but changed")
    assert not problems, f"{len(problems)} problems, e.g.:\n" + "\n".join(problems[:10])

    touched = {n for n in hot if ref.items[n].changes > OPS_PER_ITEM}
    assert len(touched) > 50, len(touched)
    rows_after = sum(i.count for i in items.values())
    assert rows_after == N_ITEMS * (1 + NEW_PER_ITEM) + during
    assert summary.examined == N_ITEMS
    assert summary.chosen == N_ITEMS
    assert summary.rows_before >= N_ITEMS * OPS_PER_ITEM
    timings["total"] = time.monotonic() - t0
    print(
        f"\n{N_ITEMS:,} items x {OPS_PER_ITEM} ops, {PARTITIONS} partitions: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        + f"; writer: {during:,} ops, {in_pass:,} while the pass ran, {stale:,} items got ops "
        f"between the snapshot read and their command, {after_cmd:,} ops after a command; "
        f"summary: flattened {summary.flattened}, unconfirmed {summary.unconfirmed}, "
        f"rows {summary.rows_before:,} -> {summary.rows_after:,} (really {rows_after:,})"
    )


# ---------------------------------------------------------------------------------------------
# smaller cases
# ---------------------------------------------------------------------------------------------


def test_the_summary_reports_what_the_workers_did(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
) -> None:
    """Every item's flatten snapshot is published after its command; the summary must count
    it, however fast the worker is (a snapshot published before the pass starts reading the
    new snapshots must not be missed)."""
    s = make_settings(partitions=2)
    worker = start_worker(s)
    ref = Reference()
    names = [f"s-{i:03d}" for i in range(300)]
    produce_items(Ops(s, ref), names, 12, 1)
    wait_caught_up(s, [worker])

    summary = compact_online(s, pass_policy(s), quiet())

    wait_caught_up(s, [worker])
    worker.stop()
    items, _ = store_state(s)
    assert all(items[n].count == 2 for n in names), "the pass did not flatten every item"
    assert (summary.examined, summary.chosen) == (300, 300)
    assert summary.rows_before == 300 * 12
    assert summary.unconfirmed == 0, (
        f"{summary.unconfirmed} of 300 flattened items reported 'not confirmed in time'"
    )
    assert summary.flattened == 300, f"summary says {summary.flattened} items flattened, not 300"
    assert summary.rows_after == 300 * 2, f"summary says {summary.rows_after} rows after, not 600"


def test_late_op_after_a_pass_goes_to_the_dead_letter_topic(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
) -> None:
    s = make_settings()
    worker = start_worker(s)
    ref = Reference()
    ops_out = Ops(s, ref)
    last_old = produce_items(ops_out, ["L", "M"], 10, 2)
    wait_caught_up(s, [worker])
    compact_online(s, pass_policy(s), quiet())
    wait_caught_up(s, [worker])
    item = worker.worker.reads.item("L")
    assert item is not None and item["count"] == 3, item

    base_ms = int(last_old["L"][:12], 16)
    late = FlakeGenerator(node=201, pid=1, clock=lambda: base_ms - 1).next()  # before the row
    between = FlakeGenerator(node=202, pid=1, clock=lambda: base_ms + 60_000).next()
    recent = FlakeGenerator(node=203, pid=1, clock=lambda: now_ms() - 30 * 60_000).next()
    offsets: list[int] = []

    def at(err: KafkaError | None, msg: Message) -> None:
        assert err is None
        offsets.append(msg.offset() or 0)

    # the late op is not in the reference: it must not be applied
    late_value = event("L", "putAttrs", late, {"late": True})
    ops_out.producer.produce(s.topics.ops, late_value, b"L", on_delivery=at)
    ops_out.flush()
    # out of order but after the history row (older than the cut-off, or within the window):
    # still placed; applied to a second reference in flake order below
    for ts, ch in ((between, {"between": 1}), (recent, {"recent": 1})):
        ops_out.producer.produce(s.topics.ops, event("M", "putAttrs", ts, ch), b"M")
    ops_out.flush()
    wait_caught_up(s, [worker])

    dead = read_topic(s, s.topics.dead_letter)
    assert len(dead) == 1, [dict(m.headers() or []) for m in dead]
    h = dict(dead[0].headers() or [])
    assert h[H_REASON] == b"late", h
    assert int(h[H_OFFSET]) == offsets[0]
    assert dead[0].value() == late_value and dead[0].key() == b"L"

    got_l = worker.worker.reads.item("L")
    assert got_l is not None
    assert (got_l["value"], got_l["hash"], got_l["changes"], got_l["count"]) == (
        ref.items["L"].value,
        ref.items["L"].hash,
        10,
        3,
    )
    m = ref.items["M"]
    want_m = {**m.value, "between": 1, "recent": 1}
    got_m = worker.worker.reads.item("M")
    assert got_m is not None
    assert (got_m["value"], got_m["changes"], got_m["count"]) == (want_m, 12, 5), got_m
    worker.stop()
    assert worker.worker.metrics.dead_lettered.labels("late")._value.get() == 1


def test_two_passes_at_once_end_as_one(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
) -> None:
    s = make_settings(partitions=2)
    workers = [start_worker(s), start_worker(s)]  # two workers share the partitions
    ref = Reference()
    names = [f"c-{i:03d}" for i in range(400)]
    n_ops, n_new = 20, 2
    last_old = produce_items(Ops(s, ref), names, n_ops, n_new)
    wait_caught_up(s, workers)

    results: list[Summary] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def one_pass() -> None:
        try:
            barrier.wait(10)
            results.append(compact_online(s, pass_policy(s), quiet()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one_pass) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 2)
    assert not errors, errors
    assert len(results) == 2
    wait_caught_up(s, workers)
    # each pass sent one command per item; the second finds nothing left to fold
    flattens = [m for m in read_topic(s, s.topics.ops) if json.loads(m.value())["op"] == "flatten"]
    assert len(flattens) == 2 * len(names)
    dead = read_topic(s, s.topics.dead_letter)
    assert dead == [], [dict(m.headers() or []).get(H_REASON) for m in dead[:5]]
    for w in workers:
        w.stop()
    items, histories = store_state(s)
    problems: list[str] = []
    for name in names:
        problems += check_item(
            name, items[name], histories[name], ref.items[name], last_old[name], n_ops - n_new, ""
        )
    assert not problems, f"{len(problems)} problems, e.g.:\n" + "\n".join(problems[:10])
    assert sum(w.worker.metrics.ops_applied.labels("flatten")._value.get() for w in workers) == (
        len(names) * 2
    ), "a flatten command was not applied (or was dead-lettered)"


# ---------------------------------------------------------------------------------------------
# the CLI
# ---------------------------------------------------------------------------------------------


def summary_fields(stderr: str) -> dict[str, str]:
    line = next((ln for ln in stderr.splitlines() if "compaction done:" in ln), None)
    assert line is not None, f"no summary line in {stderr[-2000:]!r}"
    return dict(
        (k.strip(), v.strip())
        for k, v in (p.split("=", 1) for p in line.split("compaction done:", 1)[1].split(", "))
    )


@pytest.fixture
def cli_items(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], Any]
) -> tuple[Settings, Any, Reference, dict[str, str]]:
    """A worker holding items: ``a-*`` with 20 ops (3 new), ``b-*`` with 20, ``short`` with 3."""
    s = make_settings(partitions=2)
    worker = start_worker(s)
    ref = Reference()
    out = Ops(s, ref)
    last_old = produce_items(
        out, [f"a-{i}" for i in range(5)] + [f"b-{i}" for i in range(5)], 20, 3
    )
    last_old |= produce_items(out, ["short"], 3, 1)
    wait_caught_up(s, [worker])
    return s, worker, ref, last_old


def counts(worker: Any, names: list[str]) -> dict[str, int]:
    out = {}
    for n in names:
        item = worker.worker.reads.item(n)
        assert item is not None, n
        out[n] = item["count"]
    return out


def test_cli_compact_online_dry_run_lists_and_changes_nothing(
    cli_items: tuple[Settings, Any, Reference, dict[str, str]],
) -> None:
    s, worker, ref, _ = cli_items
    names = list(ref.items)
    counts_before = counts(worker, names)
    ops_before = watermarks(s, s.topics.ops)

    res = run_cli(cli_env(s), "compact", "--dry-run", "--prefix", "a-", "--min-rows", "5")

    assert res.returncode == 0, res.stderr[-2000:]
    lines = sorted(ln for ln in res.stdout.splitlines() if not ln.startswith("compaction done:"))
    assert [ln.split(":")[0] for ln in lines] == [f"a-{i}" for i in range(5)], res.stdout
    for ln in lines:
        name = ln.split(":")[0]
        assert ln.startswith(f"{name}: 20 rows >= 5;"), ln
        assert ln.endswith(f"up to hash {ref.items[name].hash}"), ln
    f = summary_fields(res.stdout)
    assert (f["items examined"], f["items chosen"], f["items flattened"]) == ("11", "5", "0")
    assert watermarks(s, s.topics.ops) == ops_before, "a dry run sent commands"
    wait_caught_up(s, [worker])  # the worker applied whatever is in the ops topic
    assert counts(worker, names) == counts_before


def test_cli_compact_online_flattens_and_prints_a_summary(
    cli_items: tuple[Settings, Any, Reference, dict[str, str]],
) -> None:
    s, worker, ref, last_old = cli_items
    started = time.monotonic()
    res = run_cli(cli_env(s), "compact", "--min-rows", "10", "--lateness", "3600")
    took = time.monotonic() - started
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    f = summary_fields(res.stdout)
    assert (f["items examined"], f["items chosen"]) == ("11", "10"), f
    # the pass's own time, in seconds: some, and within what the whole command took here
    assert 0 < float(f["seconds"]) <= took, (f["seconds"], took)
    wait_caught_up(s, [worker])
    worker.stop()
    items, histories = store_state(s)
    for name, r in ref.items.items():
        if name == "short":
            assert items[name].count == 3 and items[name].hash == r.hash
            continue
        assert check_item(name, items[name], histories[name], r, last_old[name], 17, "") == []


def test_cli_compact_online_refuses_bad_values(
    cli_items: tuple[Settings, Any, Reference, dict[str, str]],
) -> None:
    """A value the CLI cannot parse, or one the settings forbid (min_rows >= 2, lateness_s >= 0,
    max_items >= 1), must stop the command with a message naming it, before any command is
    sent. A negative lateness would fold ops that are seconds old."""
    s, worker, ref, _ = cli_items
    names = list(ref.items)
    counts_before = counts(worker, names)
    ops_before = watermarks(s, s.topics.ops)
    cases = [
        (("--min-rows", "abc"), "--min-rows"),
        (("--lateness", "soon"), "--lateness"),
        (("--min-rows", "1"), "min_rows"),
        (("--lateness", "-60"), "lateness"),
        (("--max-items", "0"), "max_items"),
    ]
    failures = []
    for args, needle in cases:
        res = run_cli(cli_env(s), "compact", *args)
        text = " ".join(res.stderr.split())
        if res.returncode == 0:
            failures.append(f"compact {' '.join(args)}: exit 0; stderr ends {text[-300:]!r}")
        elif needle not in text and needle.replace("_", "-") not in text:
            failures.append(f"compact {' '.join(args)}: message does not name {needle}: {text!r}")
        elif "Traceback" in res.stderr:
            failures.append(f"compact {' '.join(args)}: traceback")
    wait_caught_up(s, [worker])  # the worker applied whatever is in the ops topic
    sent = {p: watermarks(s, s.topics.ops)[p] - o for p, o in ops_before.items()}
    changed = {n: c for n, c in counts(worker, names).items() if c != counts_before[n]}
    assert not failures, "\n".join(failures) + f"\ncommands sent {sent}; counts changed {changed}"
    assert all(v == 0 for v in sent.values()), sent


# ---------------------------------------------------------------------------------------------
# the workers' scheduled compaction
# ---------------------------------------------------------------------------------------------


def test_scheduled_compaction_in_the_worker(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
) -> None:
    s = with_compaction(make_settings(partitions=2), interval_s=1.0, min_rows=5, lateness_s=3600.0)
    ref = Reference()
    names = [f"w-{i:02d}" for i in range(40)]
    ops_out = Ops(s, ref)
    worker = start_worker(s)
    last_old = produce_items(ops_out, names, 15, 2)
    last_old |= produce_items(ops_out, ["tiny"], 4, 0)  # fewer rows than min_rows
    snap_start = {p: 0 for p in range(2)}

    deadline = time.monotonic() + WAIT_S
    while True:
        snaps = last_snapshots(read_topic(s, s.topics.snapshots, snap_start))
        done = [n for n in names if snaps.get(n, {}).get("count") == 3]
        if len(done) == len(names):
            break
        assert worker.thread.is_alive(), worker.error
        if time.monotonic() > deadline:
            pytest.fail(f"{len(names) - len(done)} items not compacted: {list(snaps.values())[:3]}")
        time.sleep(0.5)

    for name in names:
        r, snap = ref.items[name], snaps[name]
        assert (snap["value"], snap["hash"], snap["changes"], snap["timestamp"]) == (
            r.value,
            r.hash,
            15,
            r.flakes[-1],
        ), name
    assert snaps["tiny"]["count"] == 4
    assert worker.worker.metrics.compacted._value.get() >= len(names)
    worker.stop()
    items, histories = store_state(s)
    for name in names:
        assert (
            check_item(name, items[name], histories[name], ref.items[name], last_old[name], 13, "")
            == []
        )
    assert items["tiny"].count == 4 and items["tiny"].hash == ref.items["tiny"].hash


def test_scheduled_compaction_max_items_takes_the_longest_histories_first(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
) -> None:
    """``compaction.max_items``: "at most this many items per pass (the longest histories
    first)", as the online and offline passes do; the worker's own pass must do the same."""
    from dyno_stream.kafka.topics import ensure_topics

    s = with_compaction(make_settings(), interval_s=3.0, min_rows=2, max_items=2)
    ensure_topics(s)
    ref = Reference()
    out = Ops(s, ref)
    lengths = {"a": 6, "b": 30, "c": 12, "d": 25, "e": 3}
    for name, n in lengths.items():
        produce_items(out, [name], n, 1)
    # A worker without compaction applies every op first, on the same disk, so the
    # compacting worker's first pass finds them all in its stores, however slowly it starts.
    loader = start_worker(with_compaction(s, interval_s=0.0))
    wait_until(
        lambda: all(
            (loader.worker.reads.item(n) or {}).get("changes") == k for n, k in lengths.items()
        ),
        WAIT_S,
        lambda: f"not every op applied: {[loader.worker.reads.item(n) for n in lengths]}",
    )
    loader.stop()
    snapshots_before = watermarks(s, s.topics.snapshots)
    worker = start_worker(s)

    deadline = time.monotonic() + WAIT_S
    while worker.worker.metrics.compacted._value.get() < 2:
        assert worker.thread.is_alive(), worker.error
        assert time.monotonic() < deadline, "no scheduled compaction within the wait"
        time.sleep(0.2)
    first_round: list[str] = []
    for m in read_topic(s, s.topics.snapshots, snapshots_before):
        snap = json.loads(m.value())
        # a flattened item holds fewer rows than ops
        if snap["count"] < snap["changes"] and snap["item"] not in first_round:
            first_round.append(snap["item"])
    assert sorted(first_round[:2]) == ["b", "d"], (
        f"the worker's first pass flattened {first_round[:2]}, not the two longest (b: 30 rows, "
        f"d: 25 rows); all compacted so far, in order: {first_round}"
    )
