"""Deleting for real against the real broker: tombstones, views dropping items,
``get`` saying not found, ``watch`` printing the deletion, erasure, compaction of deleted
items and the lateness rules around a deletion.

The tombstone is read back with a plain confluent-kafka consumer: kcat is not installed on
every machine these tests run on (the producing page shows the kcat command that reads the same).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from helpers import (
    REPO,
    Record,
    Reference,
    cli_env,
    flake_at,
    only_items,
    read_topic,
    run_cli,
    wait_caught_up,
    wait_until,
)
from rich.console import Console

from dyno_stream.client import DynoClient, MaterializedView
from dyno_stream.config import CompactionSettings, Settings
from dyno_stream.core.events import make_op
from dyno_stream.core.flake import new_flake
from dyno_stream.core.snapshots import (
    H_ERASED_ROWS,
    H_ITEM_CHANGES,
    H_SOURCE_OFFSET,
    H_SOURCE_PARTITION,
    H_SOURCE_TOPIC,
)
from dyno_stream.devtools.broker import free_port_pair
from dyno_stream.jobs import compaction
from dyno_stream.jobs.compaction import compact_online

WAIT_S = 60.0


def http_settings(make_settings: Callable[..., Settings], **kw: Any) -> tuple[Settings, int]:
    port = free_port_pair()
    return make_settings(http_port=port, **kw), port


def tombstones(s: Settings, item: str) -> list[Record]:
    key = item.encode()
    return [r for r in read_topic(s, s.topics.snapshots) if r.key == key and r.value is None]


def cli(s: Settings, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(cli_env(s, DYNO_WORKER__HTTP_PORT=str(port)), *args)


def test_a_deleted_item_is_a_tombstone_views_drop_it_get_says_not_found(
    make_settings: Callable[..., Settings], start_worker: Callable[..., Any]
) -> None:
    s, port = http_settings(make_settings)
    worker = start_worker(s)
    changes: list[tuple[Any, Any]] = []
    watch = subprocess.Popen(
        [sys.executable, "-m", "dyno_stream", "watch"],
        env=cli_env(s),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    view = MaterializedView(s)
    view.on_change(lambda old, new: changes.append((old, new)))
    try:
        view.start()
        with DynoClient(s) as client:
            client.put_item("gone", {"secret": "s1"}).result(30)
            client.put_item("kept", {"v": 1}).result(30)
            wait_until(lambda: view.get("gone") is not None, WAIT_S, lambda: str(changes))
            # the watch is live (it says so on stderr once caught up) before the deletion
            assert watch.stderr is not None
            assert "watching" in watch.stderr.readline()
            deleted = client.del_item("gone").result(30)
            # an op sequence ending with the item deleted, sent together
            client.put_attrs("seq", {"a": 1})
            seq = client.del_item("seq").result(30)
        wait_until(
            lambda: view.get("gone") is None and view.get("seq") is None,
            WAIT_S,
            lambda: f"the view still holds gone or seq: {changes}",
        )
        # the view called on_change(old, None), old being the item's last snapshot
        gone = [(old, new) for old, new in changes if new is None and old["item"] == "gone"]
        assert len(gone) == 1 and gone[0][0]["value"] == {"secret": "s1"}, changes
        assert view.get("kept") is not None

        # the tombstone: key = item, value = null, where the deletion came from in headers
        (tomb,) = tombstones(s, "gone")
        assert tomb.headers[H_SOURCE_TOPIC] == s.topics.ops.encode()
        assert int(tomb.headers[H_SOURCE_PARTITION]) == deleted.partition
        assert int(tomb.headers[H_SOURCE_OFFSET]) == deleted.offset
        assert int(tomb.headers[H_ITEM_CHANGES]) == 2
        (seq_tomb,) = tombstones(s, "seq")
        assert int(seq_tomb.headers[H_SOURCE_OFFSET]) == seq.offset

        # watch printed the deletion
        assert watch.stdout is not None
        line: dict[str, Any] = {}
        deadline = time.monotonic() + WAIT_S
        while line.get("item") != "gone" or not line.get("deleted"):
            assert time.monotonic() < deadline, "watch did not print the deletion"
            line = json.loads(watch.stdout.readline())
        assert line["old"] == {"secret": "s1"} and line["new"] is None

        # get: not found, exit 3, from the worker's store and from the snapshot topic
        for args in (("get", "gone"), ("get", "gone", "--view")):
            res = cli(s, port, *args)
            assert res.returncode == 3, (args, res.stdout, res.stderr)
            assert "no item 'gone'" in res.stderr
        for args in (("get", "kept"), ("get", "kept", "--view")):
            res = cli(s, port, *args)
            assert res.returncode == 0, (args, res.stdout, res.stderr)
            assert json.loads(res.stdout)["value"] == {"v": 1}
    finally:
        watch.kill()
        watch.wait(10)
        view.close()
        worker.stop()


def test_erase_removes_every_row_at_once_and_confirms(
    make_settings: Callable[..., Settings], start_worker: Callable[..., Any]
) -> None:
    s, port = http_settings(make_settings)
    worker = start_worker(s)
    secrets = [uuid.uuid4().hex for _ in range(30)]
    try:
        with DynoClient(s) as client:
            for i, secret in enumerate(secrets):
                client.put_attrs("person", {f"k{i}": secret})
            client.put_item("other", {"v": "kept"}).result(30)
        wait_until(
            lambda: len(cli(s, port, "dump", "--item", "person").stdout.splitlines()) == 30,
            WAIT_S,
            lambda: "person's 30 rows",
        )
        res = cli(s, port, "erase", "person", "--wait")
        assert res.returncode == 0, (res.stdout, res.stderr)
        # the confirmation names the partition that held the rows, and how many it removed
        newest = [r for r in read_topic(s, s.topics.snapshots) if r.key == b"person"][-1]
        assert newest.value is None, "the snapshot topic's newest record is not a tombstone"
        assert newest.headers[H_ERASED_ROWS] == b"30"
        partition = int(newest.headers[H_SOURCE_PARTITION])
        assert (
            res.stdout.strip() == f"erased person: 30 rows removed from {s.topics.ops}/{partition}"
        )
        # at once, not waiting for the lateness window: one marker row, no value
        rows = cli(s, port, "dump", "--item", "person").stdout.splitlines()
        assert len(rows) == 1 and rows[0].startswith("person/"), rows
        assert rows[0].endswith("/history = " + rows[0].split(" = ")[1])
        assert rows[0].endswith(":31:null"), rows
        assert cli(s, port, "get", "person").returncode == 3
        assert json.loads(cli(s, port, "get", "other").stdout)["value"] == {"v": "kept"}
        # no value left in the worker's LevelDB files (it is still running)
        raw = b"".join(p.read_bytes() for p in s.worker.data_dir.rglob("*") if p.is_file())
        assert [x for x in secrets if x.encode() in raw] == []
        assert tombstones(s, "person"), "no tombstone published"
    finally:
        worker.stop()


def test_erase_of_an_item_no_store_holds_exits_3_no_such_item(
    make_settings: Callable[..., Settings], start_worker: Callable[..., Any]
) -> None:
    """Never written, or already erased (its store holds only the marker): the worker
    applies the command and answers that it removed 0 rows; nothing is confirmed."""
    s, port = http_settings(make_settings)
    worker = start_worker(s)
    try:
        with DynoClient(s) as client:
            client.put_item("someone", {"v": 1}).result(30)

        def no_such_item(name: str) -> None:
            res = cli(s, port, "erase", name, "--wait")
            assert res.returncode == 3, (name, res.stdout, res.stderr)
            assert f"no such item {name!r}" in res.stderr and "nothing erased" in res.stderr
            assert res.stdout == ""
            newest = [r for r in read_topic(s, s.topics.snapshots) if r.key == name.encode()]
            assert newest[-1].headers[H_ERASED_ROWS] == b"0", newest

        no_such_item("nobody")
        first = cli(s, port, "erase", "someone", "--wait")
        assert first.returncode == 0 and "1 rows removed" in first.stdout, first
        no_such_item("someone")
    finally:
        worker.stop()


def test_late_ops_around_a_deletion_and_online_compaction(
    make_settings: Callable[..., Settings], start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    """Within the lateness window an op older than the deletion is placed before it; once the
    deletion is older than the window, compaction removes every row but the marker; then an
    op older than the deletion is late, a newer one starts the item again."""
    s, port = http_settings(make_settings)
    worker = start_worker(s)
    now = time.time()
    try:
        with DynoClient(s) as client:
            # within the window: a deletion a few seconds ago, then an op between
            client.put_item("recent", {"a": 1}, ts=flake_at(now - 3)).result(30)
            client.del_item("recent", ts=flake_at(now - 1)).result(30)
            client.put_attrs("recent", {"late": True}, ts=flake_at(now - 2)).result(30)
            # past the window: deleted two hours ago
            client.put_item("old", {"secret": "x"}, ts=flake_at(now - 7300)).result(30)
            client.put_attrs("old", {"more": "y"}, ts=flake_at(now - 7299)).result(30)
            client.del_item("old", ts=flake_at(now - 7298)).result(30)
            client.put_item("alive", {"v": 1}).result(30)

        def rows(item: str) -> list[str]:
            return cli(s, port, "dump", "--item", item).stdout.splitlines()

        wait_until(lambda: len(rows("recent")) == 3, WAIT_S, lambda: str(rows("recent")))
        assert [r.split(" = ")[0].rsplit("/", 1)[1] for r in rows("recent")] == [
            "putItem",
            "putAttrs",
            "delItem",
        ]
        assert cli(s, port, "get", "recent").returncode == 3
        wait_until(lambda: len(rows("alive")) == 1, WAIT_S, lambda: "alive applied")

        console = Console(file=io.StringIO(), force_terminal=False)
        summary = compact_online(s, CompactionSettings(min_rows=10, wait_s=WAIT_S), console)
        assert summary.flattened == 1 and summary.unconfirmed == 0, summary.fields()
        old_rows = rows("old")
        assert len(old_rows) == 1 and old_rows[0].endswith(":3:null"), old_rows
        assert len(rows("recent")) == 3  # its deletion is within the window: kept

        with DynoClient(s) as client:
            late = client.put_attrs("old", {"zombie": 1}, ts=flake_at(now - 7299.5)).result(30)
            client.put_attrs("old", {"new": 1}).result(30)
        wait_until(lambda: cli(s, port, "get", "old").returncode == 0, WAIT_S, lambda: "new")
        item = json.loads(cli(s, port, "get", "old").stdout)
        assert item["value"] == {"new": 1} and item["changes"] == 4, item
        dead = [
            r
            for r in read_topic(s, s.topics.dead_letter)
            if r.headers.get("dyno.source.offset") == str(late.offset).encode()
        ]
        assert [d.headers["dyno.error.reason"] for d in dead] == [b"late"]
    finally:
        worker.stop()


def test_expiry_deletes_only_items_idle_past_the_limit(
    make_settings: Callable[..., Settings],
    start_worker: Callable[..., Any],
    monkeypatch: Any,
) -> None:
    """``compact --expire-after``: items idle past the limit are deleted through the ops
    topic; an item changed after the pass saw it idle is kept; ops streaming to other items
    during the pass are all applied once."""
    s, port = http_settings(make_settings, partitions=2)
    worker = start_worker(s)
    old = time.time() - 7200
    idle = [f"idle-{i}" for i in range(20)]
    changed = [f"changed-{i}" for i in range(5)]  # idle when the pass reads, changed after
    busy = [f"busy-{i}" for i in range(10)]
    ref = Reference()
    sent: list[Any] = []

    def send(client: DynoClient, model: Any) -> None:
        ref.add(model)
        sent.append(client.send(model))

    try:
        with DynoClient(s) as client:
            for i, name in enumerate(idle + changed):
                send(client, make_op("putAttrs", name, {"v": i}, flake_at(old + i / 1000)))
            for name in busy:
                send(client, make_op("putAttrs", name, {"v": 0}, new_flake()))
            for f in sent:
                f.result(30)
        with MaterializedView(s) as view:
            wait_caught_up(view, ref, WAIT_S)

        # the dry run lists what would expire and changes nothing
        console = Console(file=io.StringIO(), force_terminal=False)
        policy = CompactionSettings(expire_after_s=3600, wait_s=WAIT_S)
        dry = compact_online(s, policy, console, dry_run=True)
        assert dry.expiring == len(idle + changed), dry.details
        assert sorted(d.split(":")[0] for d in dry.details if "would expire" in d) == sorted(
            idle + changed
        )
        assert cli(s, port, "get", "idle-0").returncode == 0

        # ops stream to the busy items during the whole pass; the changed items get one op
        # right after the pass has read the snapshots (before its delItems go out)
        stop_streaming = threading.Event()
        streamed = threading.Event()

        def stream() -> None:
            with DynoClient(s) as c:
                k = 0
                while not stop_streaming.is_set() or k < 50:
                    send(
                        c,
                        make_op(
                            "incAttrBy", busy[k % len(busy)], {"field": "n", "by": 1}, new_flake()
                        ),
                    )
                    k += 1
                    if k == 50:
                        streamed.set()
                    time.sleep(0.005)
                c.flush(30)

        real_read = compaction.read_snapshots

        def read_then_change(*args: Any, **kw: Any) -> Any:
            latest = real_read(*args, **kw)
            with DynoClient(s) as c:
                for name in changed:
                    send(c, make_op("putAttrs", name, {"after": True}, new_flake()))
                c.flush(30)
            return latest

        monkeypatch.setattr(compaction, "read_snapshots", read_then_change)
        streamer = threading.Thread(target=stream)
        streamer.start()
        try:
            streamed.wait(WAIT_S)
            summary = compact_online(s, policy, console)
        finally:
            stop_streaming.set()
            streamer.join(60)
        assert summary.expired == len(idle), summary.fields()
        assert summary.kept_changed == len(changed), summary.fields()
        assert summary.unconfirmed == 0 and summary.refused == 0, summary.fields()
        for f in sent:
            f.result(30)

        with MaterializedView(s) as view:
            survivors = only_items(ref, set(changed + busy))
            wait_caught_up(view, survivors, WAIT_S)  # fails at once on an op applied twice
            for name in changed + busy:
                snap = view.get(name)
                assert snap is not None and snap["value"] == ref.value(name), (name, snap)
                assert snap["changes"] == ref.changes[name], (name, snap)
            assert [n for n in idle if view.get(n) is not None] == []
        for name in idle:
            assert len(tombstones(s, name)) == 1, name
        assert cli(s, port, "get", "idle-3").returncode == 3
    finally:
        worker.stop()


def test_an_erased_value_in_a_store_set_aside_is_never_read_and_the_copy_is_deleted(
    make_settings: Callable[..., Settings], start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    """A store behind the ops topic's start is set aside (``<store>.stale-<time>``) and its
    partition restored; an erasure replayed after the restore leaves the erased value only
    in the copy. The copy is deleted once the restore is done, and ``get`` without a
    running worker never reads one (a copy a failed deletion left behind included)."""
    s = make_settings()
    store_dir = s.worker.data_dir / s.topics.ops
    secret = uuid.uuid4().hex
    worker = start_worker(s)
    try:
        with DynoClient(s) as client:
            client.put_item("person", {"secret": secret}).result(30)
            client.put_item("other", {"v": 1}).result(30)
        wait_until(lambda: worker.worker.reads.item("other") is not None, WAIT_S, lambda: "applied")
    finally:
        worker.stop()
    before = tmp_path / "before-the-erasure"
    shutil.copytree(store_dir / "0000", before)

    # no worker runs: one more op, then the erasure; retention then drops every op before it
    with DynoClient(s) as client:
        client.put_item("filler", {"v": 1}).result(30)
        erased = client.erase("person").result(30)
    admin = AdminClient(s.kafka.librdkafka())
    for fut in admin.delete_records([TopicPartition(s.topics.ops, 0, erased.offset)]).values():
        fut.result(30)

    worker = start_worker(s)  # its store (at offset 2) is behind the topic's start (3)
    try:

        def tombstone_of_the_erasure() -> bool:
            return any(
                int(t.headers[H_SOURCE_OFFSET]) == erased.offset for t in tombstones(s, "person")
            )

        wait_until(tombstone_of_the_erasure, WAIT_S, lambda: "the erasure was not replayed")
    finally:
        worker.stop()
    (tomb,) = [t for t in tombstones(s, "person") if t.headers[H_ERASED_ROWS] == b"1"]
    assert int(tomb.headers[H_SOURCE_OFFSET]) == erased.offset  # restored, then erased

    env = cli_env(s, DYNO_WORKER__READ_TIMEOUT_S="1")  # no worker: get reads the stores
    res = run_cli(env, "get", "person")
    assert res.returncode == 3 and secret not in res.stdout + res.stderr, res
    assert "no item 'person'" in res.stderr
    assert [p.name for p in store_dir.iterdir()] == ["0000"], "the copy set aside was kept"

    # a copy left behind (say its deletion failed): still never read
    shutil.copytree(before, store_dir / "0000.stale-1")
    res = run_cli(env, "get", "person")
    assert res.returncode == 3 and secret not in res.stdout + res.stderr, res
    other = run_cli(env, "get", "other")
    assert other.returncode == 0 and json.loads(other.stdout)["store"] == str(store_dir / "0000")

    # an item in two partition stores (its ops split across partitions): no answer is right
    shutil.rmtree(store_dir / "0000.stale-1")
    shutil.copytree(before, store_dir / "0001")
    res = run_cli(env, "get", "other")
    assert res.returncode == 1 and "'other' is in 2 partition stores" in res.stderr, res
