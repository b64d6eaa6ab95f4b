"""Materialized views of the snapshot topic, against the real broker and a real worker.

A ``MaterializedView`` keeps each item's newest snapshot (more ``changes``, or as many and
fewer rows), in memory or in LevelDB (resuming from the offsets it stored). ``on_change``
fires once per new snapshot; a stale one never replaces a newer one. The command line reads
through it too: ``dyno-stream get ITEM --view`` and ``dyno-stream watch``.
Which snapshot counts as newer (``is_newer``) is held in ``tests/unit/test_views_is_newer.py``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer, TopicPartition
from helpers import REPO, running_partitions

from dyno_stream.client import DynoClient, MaterializedView
from dyno_stream.config import Settings
from dyno_stream.kafka.reading import read_snapshots, topic_reader
from dyno_stream.stream.worker import producer_config

WAIT_S = 30.0

Snap = dict[str, Any]
Call = tuple[Snap | None, Snap]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def wait_until(pred: Callable[[], bool], what: Callable[[], str], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f}s: {what()}")
        time.sleep(0.02)


class Calls:
    """Records a view's on_change calls (they run on the view's thread)."""

    def __init__(self, view: MaterializedView) -> None:
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.view = view
        view.on_change(self._record)

    def _record(self, old: Snap | None, new: Snap) -> None:
        with self.lock:
            self.calls.append((old, new))

    def snapshot(self) -> list[Call]:
        with self.lock:
            return list(self.calls)

    def __len__(self) -> int:
        with self.lock:
            return len(self.calls)

    def of(self, item: str) -> list[Call]:
        return [c for c in self.snapshot() if c[1]["item"] == item]

    def wait_count(self, n: int) -> list[Call]:
        """Until ``n`` calls; then exactly ``n`` once the view has read (and told on_change)
        everything published so far, so a surplus call cannot be still to come."""
        wait_until(lambda: len(self) >= n, lambda: f"{len(self)} on_change calls, want {n}")
        assert self.view.wait_until_caught_up(WAIT_S), "the view did not catch up"
        calls = self.snapshot()
        assert len(calls) == n, f"{len(calls)} on_change calls, want {n}: {calls[n:]}"
        return calls


def wait_changes(view: MaterializedView, item: str, changes: int) -> Snap:
    def got() -> int | None:
        snap = view.get(item)
        return None if snap is None else snap["changes"]

    wait_until(
        lambda: got() == changes,
        lambda: f"{item}: the view holds {got()} changes, want {changes}",
    )
    snap = view.get(item)
    assert snap is not None
    return snap


def send_one(client: DynoClient, view: MaterializedView, op: str, item: str, *args: Any) -> Snap:
    """Send one op and wait for its snapshot, so each op makes exactly one snapshot."""
    before = view.get(item)
    getattr(client, op)(item, *args).result(WAIT_S)
    return wait_changes(view, item, (before["changes"] if before else 0) + 1)


#: A snapshot that marks a point in a partition of the snapshot topic (given an item name).
MARKER = {
    "value": {"marker": True},
    "timestamp": None,
    "changes": 1,
    "hash": "0" * 32,
    "count": 1,
    "source": None,
}


def partition_count(settings: Settings, topic: str) -> int:
    consumer = topic_reader(settings, "test")
    try:
        return len(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
    finally:
        consumer.close()


def topic_size(settings: Settings, topic: str) -> int:
    """Messages in the topic (sum of the high watermarks; nothing is deleted in a test)."""
    consumer = topic_reader(settings, "test")
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in meta.partitions
        )
    finally:
        consumer.close()


def produce_raw(
    settings: Settings, messages: list[tuple[bytes, bytes | None]], partition: int | None = None
) -> None:
    """Produce by hand to the snapshot topic, in order."""
    p = Producer(producer_config(settings))
    for key, value in messages:
        if partition is None:
            p.produce(settings.topics.snapshots, value, key)
        else:
            p.produce(settings.topics.snapshots, value, key, partition=partition)
    assert p.flush(30) == 0, "hand-made messages not acknowledged"


def snapshot_partition(settings: Settings, item: str) -> int:
    """The partition of the snapshot topic the worker puts an item's snapshots in."""
    snaps = read_snapshots(settings)
    assert item in snaps
    partition: int = snaps[item]["source"]["partition"]  # same partitioner and partition count
    return partition


@pytest.fixture
def views() -> Iterator[Callable[..., MaterializedView]]:
    """Factory of started views, closed at the end of the test."""
    made: list[MaterializedView] = []

    def make(settings: Settings, **kw: Any) -> MaterializedView:
        v = MaterializedView(settings, **kw).start()
        made.append(v)
        return v

    yield make
    for v in made:
        with contextlib.suppress(RuntimeError):  # closed by the test already
            v.close()


@pytest.fixture
def running(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], Any]
) -> Settings:
    """Settings of a running worker on two partitions (topics created)."""
    s = make_settings(partitions=2)
    w = start_worker(s)
    want = sorted(f"{s.topics.ops}/{p}" for p in range(2))
    wait_until(
        lambda: running_partitions(w.worker) == want or not w.thread.is_alive(),
        lambda: f"worker holds {w.worker.health.partitions}",
        60,
    )
    assert w.thread.is_alive(), w.error
    return s


# ---------------------------------------------------------------------------------------------
# a late view, and on_change
# ---------------------------------------------------------------------------------------------


def test_late_view_catches_up_to_the_same_table_and_on_change_fires_once_per_snapshot(
    running: Settings, views: Callable[..., MaterializedView]
) -> None:
    s = running
    early = views(s)
    calls = Calls(early)
    items = ["lv-a", "lv-b", "lv-c"]
    n_ops = 24
    expected: dict[str, dict[str, Any]] = {}
    with DynoClient(s) as client:
        for i in range(n_ops):
            name = items[i % 3]
            v = expected.setdefault(name, {})
            if i % 4 == 0:
                send_one(client, early, "put_attrs", name, {"i": i})
                v["i"] = i
            elif i % 4 == 1:
                send_one(client, early, "inc_attr_by", name, "n", i)
                v["n"] = v.get("n", 0) + i
            else:
                send_one(client, early, "append", name, "s", str(i % 10))
                v["s"] = v.get("s", "") + str(i % 10)
    # the worker published exactly one snapshot per op, so: one call per op
    assert topic_size(s, s.topics.snapshots) == n_ops
    calls.wait_count(n_ops)
    for name in items:
        chain = calls.of(name)
        assert len(chain) == n_ops // 3
        assert chain[0][0] is None, "the first snapshot of an item has no old one"
        for k, (old, new) in enumerate(chain):
            assert new["changes"] == k + 1
            if k:
                assert old == chain[k - 1][1], f"{name}: old is not the previous new"
        assert chain[-1][1] == early.get(name)
        assert early.get(name)["value"] == expected[name]  # type: ignore[index]

    # a view started after everything was applied: the same table
    late = views(s)
    late_calls = Calls(late)
    assert late.wait_until_caught_up(WAIT_S), "the late view did not catch up"
    assert dict(late) == dict(early)
    assert len(late) == len(early) == 3
    assert [n for n, _ in late] == sorted(items)
    assert {n: snap["value"] for n, snap in late} == expected
    assert late.get("lv-nobody") is None
    # it saw the same snapshots (none compacted away yet); its last call is the final one
    assert len(late_calls.wait_count(n_ops)) == n_ops
    assert all(late_calls.of(n)[-1][1] == early.get(n) for n in items)


# ---------------------------------------------------------------------------------------------
# stale snapshots
# ---------------------------------------------------------------------------------------------


def test_stale_snapshots_never_replace_the_newer_one_and_fire_nothing(
    running: Settings, views: Callable[..., MaterializedView]
) -> None:
    s = running
    view = views(s)
    calls = Calls(view)
    item = "st-x"
    with DynoClient(s) as client:
        for i in range(3):
            send_one(client, view, "put_attrs", item, {f"f{i}": i})
    held = view.get(item)
    assert held is not None and (held["changes"], held["count"]) == (3, 3)
    calls.wait_count(3)
    part = snapshot_partition(s, item)

    fewer = {**held, "changes": 2, "count": 2, "value": {"stale": "fewer changes"}}
    more_rows = {**held, "count": 4, "value": {"stale": "more rows"}}
    # a marker after them in the same partition: once its call is seen, they were all read
    marker = {**held, "item": "st-marker", "changes": 1, "count": 1}
    produce_raw(
        s,
        [
            (item.encode(), json.dumps(fewer).encode()),
            (item.encode(), json.dumps(more_rows).encode()),
            (item.encode(), json.dumps(held).encode()),  # a duplicate: not newer either
            (b"st-marker", json.dumps(marker).encode()),
        ],
        partition=part,
    )
    assert view.wait_until_caught_up(WAIT_S)
    calls.wait_count(4)
    assert calls.snapshot()[-1] == (None, marker)
    assert view.get(item) == held
    assert [c for c in calls.snapshot()[3:] if c[1]["item"] == item] == []

    # a view reading it all later, and read_snapshots, keep the newer one too
    late = views(s)
    assert late.wait_until_caught_up(WAIT_S)
    assert late.get(item) == held
    assert read_snapshots(s)[item] == held

    # a flatten is newer (same changes, fewer rows): it replaces and fires once; then the
    # unflattened snapshot published again (more rows) does not come back
    with DynoClient(s) as client:
        client.flatten(item, held["hash"]).result(WAIT_S)
    wait_until(
        lambda: (view.get(item) or {}).get("count") == 1,
        lambda: f"no flattened snapshot: {view.get(item)}",
    )
    flat = view.get(item)
    assert flat is not None
    assert (flat["changes"], flat["value"], flat["hash"]) == (3, held["value"], held["hash"])
    calls.wait_count(5)
    assert calls.snapshot()[-1] == (held, flat)
    produce_raw(
        s,
        [(item.encode(), json.dumps(held).encode()), (b"st-marker", json.dumps(marker).encode())],
        partition=part,
    )
    assert view.wait_until_caught_up(WAIT_S)  # read past both, on_change told of both
    assert view.get(item) == flat
    assert len(calls) == 5, calls.snapshot()[5:]


def test_view_skips_messages_that_are_not_snapshots(
    running: Settings, views: Callable[..., MaterializedView]
) -> None:
    """Garbage, a tombstone, or JSON that is not a snapshot: skipped, the view reads on."""
    s = running
    good = {
        "item": "ns-ok",
        "value": {"a": 1},
        "timestamp": None,
        "changes": 1,
        "hash": "0" * 32,
        "count": 1,
        "source": None,
    }
    produce_raw(
        s,
        [
            (b"ns-garbage", b"not json"),
            (b"ns-tombstone", None),
            (b"ns-list", b"[1, 2]"),
            (b"ns-partial", b'{"item": "ns-partial"}'),  # an object without the snapshot fields
            (b"ns-ok", json.dumps(good).encode()),
            (b"ns-partial", json.dumps({**good, "item": "ns-partial"}).encode()),
        ],
        partition=0,
    )
    view = views(s)
    assert view.wait_until_caught_up(WAIT_S), "the view did not read past the bad messages"
    assert dict(view) == {"ns-ok": good, "ns-partial": {**good, "item": "ns-partial"}}


def test_read_snapshots_skips_messages_that_are_not_snapshots(running: Settings) -> None:
    """read_snapshots (what a restoring worker reads) must not stop at a bad message."""
    s = running
    good = {
        "item": "rs-ok",
        "value": {"a": 1},
        "timestamp": None,
        "changes": 1,
        "hash": "0" * 32,
        "count": 1,
        "source": None,
    }
    produce_raw(
        s,
        [
            (b"rs-garbage", b"not json"),
            (b"rs-partial", b'{"item": "rs-partial"}'),
            (b"rs-ok", json.dumps(good).encode()),
        ],
        partition=0,
    )
    assert read_snapshots(s, timeout=WAIT_S) == {"rs-ok": good}


# ---------------------------------------------------------------------------------------------
# a LevelDB-backed view
# ---------------------------------------------------------------------------------------------


def test_leveldb_view_same_table_then_resumes_from_its_stored_offsets(
    running: Settings,
    views: Callable[..., MaterializedView],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = running
    path = tmp_path / "view"
    # a tombstone first: every view that reads it logs that it skipped it
    produce_raw(s, [(b"ldb-tomb", None)], partition=0)
    mem = views(s)
    disk = views(s, path=path)
    names = [f"ldb-{i}" for i in range(8)]
    with DynoClient(s) as client:
        for k in range(3):
            for n in names:
                client.put_attrs(n, {"k": k, "n": n})
    for n in names:
        wait_changes(mem, n, 3)
    assert disk.wait_until_caught_up(WAIT_S)
    assert dict(disk) == dict(mem)
    assert len(disk) == len(mem) == len(names)
    assert disk.get("ldb-3") == mem.get("ldb-3")
    assert disk.get("ldb-nobody") is None
    table = dict(disk)
    disk.close()

    # while it is closed: 5 new snapshots (two old items, one new), one op at a time
    before = topic_size(s, s.topics.snapshots)
    with DynoClient(s) as client:
        send_one(client, mem, "inc_attr_by", "ldb-1", "c", 1)
        send_one(client, mem, "inc_attr_by", "ldb-1", "c", 1)
        send_one(client, mem, "append", "ldb-5", "s", "x")
        send_one(client, mem, "put_attrs", "ldb-new", {"fresh": True})
        send_one(client, mem, "append", "ldb-5", "s", "y")
    assert topic_size(s, s.topics.snapshots) == before + 5

    # reopened: the table is there before it reads anything, then it reads the new ones only
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="dyno_stream.client.views")
    reopened = MaterializedView(s, path=path)
    assert dict(reopened) == table and len(reopened) == len(names)
    calls = Calls(reopened)
    reopened.start()
    try:
        assert reopened.wait_until_caught_up(WAIT_S)
        assert dict(reopened) == dict(mem)
        assert len(reopened) == len(names) + 1
        got = calls.wait_count(5)
        # (the order across the two partitions is not defined)
        assert sorted((new["item"], new["changes"]) for _, new in got) == [
            ("ldb-1", 4),
            ("ldb-1", 5),
            ("ldb-5", 4),
            ("ldb-5", 5),
            ("ldb-new", 1),
        ]
        assert calls.of("ldb-1")[0][0] == table["ldb-1"], "old is the snapshot stored before"
        assert calls.of("ldb-5")[0][0] == table["ldb-5"]
        assert calls.of("ldb-new")[0][0] is None
        # it did not read the topic again from the beginning: the tombstone was not seen again
        skipped = [r for r in caplog.records if "not a snapshot" in r.getMessage()]
        assert skipped == [], [r.getMessage() for r in skipped]
    finally:
        reopened.close()


def test_leveldb_view_holds_items_with_any_name(
    running: Settings, views: Callable[..., MaterializedView], tmp_path: Path
) -> None:
    """Item names may hold any character (the store escapes them): so must the table."""
    s = running
    names = ["any/a%b", "any-ü", "\x00any-nul", "\x01any", "\x7fany"]
    mem = views(s)
    disk = views(s, path=tmp_path / "view")
    with DynoClient(s) as client:
        for n in names:
            client.put_attrs(n, {"name": n})
    for n in names:
        wait_changes(mem, n, 1)
    assert disk.wait_until_caught_up(WAIT_S)
    assert {n: disk.get(n) for n in names} == {n: mem.get(n) for n in names}
    assert dict(disk) == dict(mem)
    assert len(disk) == len(mem) == len(names)
    disk.close()
    reopened = MaterializedView(s, path=tmp_path / "view")
    try:
        assert len(reopened) == len(names)
        assert dict(reopened) == dict(mem)
    finally:
        reopened.close()


# ---------------------------------------------------------------------------------------------
# prefix
# ---------------------------------------------------------------------------------------------


def test_prefix_keeps_only_matching_items(
    running: Settings, views: Callable[..., MaterializedView]
) -> None:
    s = running
    everything = views(s)
    only_a = views(s, prefix="pfa-")
    calls = Calls(only_a)
    with DynoClient(s) as client:
        for n in ["pfa-1", "pfb-1", "xpfa-1", "pfa-2", "pf", "pfa-1"]:
            send_one(client, everything, "inc_attr_by", n, "n", 1)
    assert only_a.wait_until_caught_up(WAIT_S)
    assert sorted(dict(only_a)) == ["pfa-1", "pfa-2"]
    assert len(only_a) == 2
    assert only_a.get("pfa-1") == everything.get("pfa-1")
    assert only_a.get("pfa-1")["changes"] == 2  # type: ignore[index]
    assert only_a.get("pfb-1") is None and only_a.get("xpfa-1") is None
    assert len(everything) == 5
    got = calls.wait_count(3)
    assert sorted((new["item"], new["changes"]) for _, new in got) == [
        ("pfa-1", 1),
        ("pfa-1", 2),
        ("pfa-2", 1),
    ]


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------


def cli_env(s: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNO_")}
    env.update(
        {
            "DYNO_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
            "DYNO_TOPICS__OPS": s.topics.ops,
            "DYNO_TOPICS__SNAPSHOTS": s.topics.snapshots,
            "DYNO_TOPICS__DEAD_LETTER": s.topics.dead_letter,
            "DYNO_WORKER__DATA_DIR": str(s.worker.data_dir),
            "DYNO_WORKER__HTTP_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def run_cli(s: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dyno_stream", *args],
        env=cli_env(s),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_get_view_prints_the_snapshot(
    running: Settings, views: Callable[..., MaterializedView]
) -> None:
    s = running
    view = views(s)
    with DynoClient(s) as client:
        send_one(client, view, "put_attrs", "cli-x", {"nick": "chilts", "ü": "ünï"})
        send_one(client, view, "inc_attr_by", "cli-x", "logins", 2)
        send_one(client, view, "put_attrs", "cli-x2", {"other": True})  # shares the prefix
    res = run_cli(s, "get", "cli-x", "--view")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == view.get("cli-x")
    assert json.loads(res.stdout)["value"] == {"nick": "chilts", "ü": "ünï", "logins": 2}

    res = run_cli(s, "get", "cli-nobody", "--view")
    assert res.returncode == 3  # not found is not an error of the tool
    assert res.stdout == ""
    assert "no item 'cli-nobody'" in res.stderr


def _sigint_as_from_a_terminal() -> None:
    """Run in the child before exec: a shell starts background jobs with SIGINT ignored and
    children inherit that (a suite run in the background saw watch ignore the test's
    Ctrl-C). Ctrl-C from a terminal is what the test plays, so the child gets the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Watch:
    """``dyno-stream watch`` as a subprocess, its output lines read on threads."""

    def __init__(self, s: Settings, *args: str) -> None:
        self.settings = s
        self.prefix = args[args.index("--prefix") + 1] if "--prefix" in args else ""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dyno_stream", "watch", *args],
            env=cli_env(s),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_sigint_as_from_a_terminal,
        )
        self.out: queue.Queue[str] = queue.Queue()
        self.err: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        threading.Thread(target=self._read_err, args=(self.proc.stderr,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.out.put(line)

    def _read_err(self, stream: Any) -> None:
        for line in stream:
            self.err.append(line)

    def wait_watching(self) -> None:
        wait_until(
            lambda: any("watching" in line for line in self.err) or self.proc.poll() is not None,
            lambda: f"watch printed no 'watching' line: {self.err}",
            60,
        )
        assert self.proc.poll() is None, f"watch exited {self.proc.returncode}: {self.err}"

    def lines(self, n: int) -> list[dict[str, Any]]:
        """Exactly ``n`` JSON lines: ``n``, then a marker snapshot at the end of every
        partition of the snapshot topic, read up to the markers' lines. Watch reads each
        partition in order, so a surplus line would have come before its partition's marker.
        """
        got: list[str] = []
        deadline = time.monotonic() + WAIT_S

        def line() -> str:
            left = deadline - time.monotonic()
            try:
                return self.out.get(timeout=max(left, 0.0))
            except queue.Empty:
                pytest.fail(f"watch printed {got}, want {n} lines and the markers {self.err}")

        while len(got) < n:
            got.append(line())
        markers = {
            f"{self.prefix}~marker-{uuid.uuid4().hex[:8]}": p
            for p in range(partition_count(self.settings, self.settings.topics.snapshots))
        }
        for name, p in markers.items():
            snap = {**MARKER, "item": name}
            produce_raw(self.settings, [(name.encode(), json.dumps(snap).encode())], partition=p)
        seen: set[str] = set()
        while seen != set(markers):
            printed = line()
            item = json.loads(printed)["item"]
            if item in markers:
                seen.add(item)
            else:
                got.append(printed)
        assert len(got) == n, f"watch printed {len(got)} lines, want {n}: {got}"
        return [json.loads(line) for line in got]

    def stop(self) -> int:
        """Ctrl-C, as its help says."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)


def test_cli_watch_prints_one_line_per_change_of_matching_items(
    running: Settings, views: Callable[..., MaterializedView]
) -> None:
    s = running
    view = views(s)
    with DynoClient(s) as client:
        before = send_one(client, view, "put_attrs", "wa-1", {"v": 0})  # before watch starts
        send_one(client, view, "put_attrs", "wb-1", {"v": 0})
        watch = Watch(s, "--prefix", "wa-")
        try:
            watch.wait_watching()
            steps: list[tuple[Any, ...]] = [
                ("put_attrs", "wa-1", {"v": 1}),
                ("put_attrs", "wb-1", {"v": 1}),
                ("append", "wa-2", "s", "a"),
                ("put_attrs", "xwa-1", {"v": 1}),
                ("append", "wa-2", "s", "b"),
                ("put_attrs", "wa-1", {"v": 2}),
            ]
            for op, item, *args in steps:
                send_one(client, view, op, item, *args)
            lines = watch.lines(4)
        finally:
            code = watch.stop()
    assert code == 0, watch.err
    assert [(ln["item"], ln["changes"]) for ln in lines if ln["item"] == "wa-1"] == [
        ("wa-1", 2),
        ("wa-1", 3),
    ]
    assert [(ln["item"], ln["changes"]) for ln in lines if ln["item"] == "wa-2"] == [
        ("wa-2", 1),
        ("wa-2", 2),
    ]
    by_item: dict[str, list[dict[str, Any]]] = {}
    for ln in lines:
        assert set(ln) == {"item", "old", "new", "changes", "hash"}
        by_item.setdefault(ln["item"], []).append(ln)
    assert by_item["wa-1"][0]["old"] == before["value"] == {"v": 0}
    assert by_item["wa-1"][0]["new"] == {"v": 1}
    assert by_item["wa-1"][1]["old"] == {"v": 1} and by_item["wa-1"][1]["new"] == {"v": 2}
    assert by_item["wa-2"][0]["old"] is None and by_item["wa-2"][0]["new"] == {"s": "a"}
    assert by_item["wa-2"][1]["old"] == {"s": "a"} and by_item["wa-2"][1]["new"] == {"s": "ab"}
    for name, lns in by_item.items():
        assert lns[-1]["hash"] == view.get(name)["hash"]  # type: ignore[index]

    # --from-beginning also prints what was in the topic before it started
    watch = Watch(s, "--prefix", "wb-", "--from-beginning")
    try:
        watch.wait_watching()
        lines = watch.lines(2)
    finally:
        code = watch.stop()
    assert code == 0, watch.err
    assert [(ln["item"], ln["old"], ln["new"]) for ln in lines] == [
        ("wb-1", None, {"v": 0}),
        ("wb-1", {"v": 0}, {"v": 1}),
    ]
