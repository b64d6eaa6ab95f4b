"""Compaction without a broker: offline passes (``compact_offline``, ``dyno-stream compact
--db``) and the store's flatten with a lateness cut-off (``Flatten(item, hash, before)``).

Old ops get flakes from a generator whose clock stands two hours back, so they fall before
the default lateness window of one hour; "new" ops get flakes from the real clock and must
never be folded.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO
from rich.console import Console

from dyno_stream.config import CompactionSettings
from dyno_stream.core import ops
from dyno_stream.core.errors import LateOpError, UnknownHashError
from dyno_stream.core.events import Flatten, OpModel, make_op, parse_event
from dyno_stream.core.flake import FlakeGenerator, flake_floor
from dyno_stream.jobs.compaction import Summary, compact_offline
from dyno_stream.store import Changeset, DynoStore, HistoryChangeset, Item

HOUR_MS = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def old_flakes(hours_ago: float = 2.0, node: int = 11) -> FlakeGenerator:
    """Flakes at a fixed time ``hours_ago`` (strictly increasing: the counter counts on)."""
    at = now_ms() - int(hours_ago * HOUR_MS)
    return FlakeGenerator(node=node, pid=1, clock=lambda: at)


def new_flakes(node: int = 12) -> FlakeGenerator:
    return FlakeGenerator(node=node, pid=2)


def quiet() -> Console:
    return Console(file=io.StringIO(), force_terminal=False, width=200)


def policy(**kw: Any) -> CompactionSettings:
    base: dict[str, Any] = {"min_rows": 2, "lateness_s": 3600.0}
    return CompactionSettings(**{**base, **kw})


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def the_op(rnd: random.Random, name: str, k: int, ts: str) -> OpModel:
    """The k-th op of an item: a mix of ops, with ~120 bytes of hard-to-compress text."""
    kind = k % 5
    if k == 0:
        return make_op("putItem", name, {"name": name, "n": 0}, ts)
    if kind == 1:
        return make_op("incAttrBy", name, {"field": "n", "by": k}, ts)
    if kind == 2:
        return make_op("append", name, {"field": "log", "str": f"{k};"}, ts)
    if kind == 3:
        return make_op("addToSet", name, {"field": "tags", "value": f"t{k % 4}"}, ts)
    return make_op("putAttrs", name, {f"k{k % 7}": rnd.randbytes(60).hex()}, ts)


@dataclass
class Built:
    """What a test store was built from: per item, its old and new ops in order."""

    old: dict[str, list[OpModel]]
    new: dict[str, list[OpModel]]

    def all_ops(self, name: str) -> list[OpModel]:
        return self.old[name] + self.new[name]


def build_store(
    path: Path, shape: dict[str, tuple[int, int]], seed: int = 1, batch: int = 5000
) -> Built:
    """Write items with ``(old ops, new ops)`` each, round by round (as a stream would)."""
    rnd = random.Random(seed)
    og, ng = old_flakes(), new_flakes()
    built = Built({n: [] for n in shape}, {n: [] for n in shape})
    longest = max(o + n for o, n in shape.values())
    pending: list[OpModel] = []
    with DynoStore(path) as store:
        # all old rounds first, then the new ones: every item's flakes increase
        for phase in ("old", "new"):
            for k in range(longest):
                for name, (n_old, n_new) in shape.items():
                    if phase == "old" and k < n_old:
                        op = the_op(rnd, name, k, og())
                        built.old[name].append(op)
                    elif phase == "new" and n_old <= k < n_old + n_new:
                        op = the_op(rnd, name, k, ng())
                        built.new[name].append(op)
                    else:
                        continue
                    pending.append(op)
                    if len(pending) >= batch:
                        store.apply(pending)
                        pending = []
        if pending:
            store.apply(pending)
    return built


def snapshot_store(path: Path) -> tuple[dict[str, Item], dict[str, list[Any]]]:
    with DynoStore(path) as store:
        items = dict(store.scan(lambda n, i: True))
        histories = {n: store.get_history(n) for n in items}
    return items, histories


def expected_history_row(name: str, folded: list[OpModel]) -> HistoryChangeset:
    """The history row that folding exactly ``folded`` must leave (replayed independently)."""
    st = ops.replay(name, [(o.ts, o.op, o.change_json) for o in folded])
    return HistoryChangeset(name, folded[-1].ts, st.value, st.hash, st.changes)


def assert_same_items(before: dict[str, Item], after: dict[str, Item]) -> None:
    assert set(after) == set(before)
    for name, b in before.items():
        a = after[name]
        assert (a.value, a.hash, a.changes, a.timestamp) == (
            b.value,
            b.hash,
            b.changes,
            b.timestamp,
        ), name


def assert_folded(
    store_items: dict[str, Item], histories: dict[str, Any], built: Built, name: str
) -> None:
    """Only the old ops are folded: one history row, then exactly the new ops' rows."""
    hist = histories[name]
    assert isinstance(hist[0], HistoryChangeset), (name, hist[0])
    assert hist[0] == expected_history_row(name, built.old[name]), name
    rest = hist[1:]
    assert [(c.timestamp, c.operation, c.change) for c in rest] == [
        (o.ts, o.op, o.change_value) for o in built.new[name]
    ], name
    assert all(isinstance(c, Changeset) for c in rest)
    assert store_items[name].count == 1 + len(built.new[name]), name


def assert_untouched(histories: dict[str, Any], built: Built, name: str) -> None:
    hist = histories[name]
    assert [(c.timestamp, c.operation) for c in hist] == [
        (o.ts, o.op) for o in built.all_ops(name)
    ], name


# ---------------------------------------------------------------------------------------------
# offline passes
# ---------------------------------------------------------------------------------------------


def test_offline_compaction_reclaims_disk_and_keeps_every_item(tmp_path: Path) -> None:
    path = tmp_path / "store"
    n_items, n_old, n_new = 400, 60, 3
    shape = {f"item-{i:04d}": (n_old, n_new) for i in range(n_items)}
    shape |= {f"fresh-{i}": (0, 12) for i in range(5)}  # long, but nothing old: stays as it is
    built = build_store(path, shape)
    before, hist_before = snapshot_store(path)
    assert all(before[n].count == n_old + n_new for n in shape if n.startswith("item-"))
    bytes_before = disk_bytes(path)

    summary = compact_offline(path, policy(), quiet())

    bytes_after = disk_bytes(path)  # before opening it again (that writes a log)
    after, hist_after = snapshot_store(path)
    assert_same_items(before, after)
    for name in shape:
        if name.startswith("item-"):
            assert_folded(after, hist_after, built, name)
        else:
            assert hist_after[name] == hist_before[name], name
            assert after[name].count == 12
    # the space really came back
    assert summary.bytes_before == bytes_before
    assert summary.bytes_after == bytes_after
    assert bytes_after < bytes_before, (bytes_before, bytes_after)
    # 60 old rows of 63 folded per item; the states (written behind, so once per item, not
    # once per batch) and LevelDB's own files keep it from shrinking by the full 20x
    assert bytes_after < bytes_before / 2, f"only {bytes_before:,} -> {bytes_after:,} bytes"
    # and the summary says what happened
    assert summary.mode == "offline"
    assert summary.examined == n_items + 5
    assert summary.chosen == n_items + 5
    assert summary.flattened == n_items
    assert summary.rows_before == n_items * (n_old + n_new) + 5 * 12
    assert summary.rows_after == n_items * (1 + n_new) + 5 * 12
    assert summary.rows_removed == n_items * (n_old - 1)

    # a second pass has nothing left to fold
    again = compact_offline(path, policy(), quiet())
    assert again.flattened == 0
    assert again.rows_after == again.rows_before == summary.rows_after
    assert snapshot_store(path) == (after, hist_after)


def test_offline_prefix_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "store"
    shape = {f"{p}-{i}": (20, 2) for p in ("alpha", "beta", "alphabet") for i in range(4)}
    built = build_store(path, shape)
    before, _ = snapshot_store(path)

    summary = compact_offline(path, policy(prefix="alpha-"), quiet())

    after, hist = snapshot_store(path)
    assert_same_items(before, after)
    for name in shape:
        if name.startswith("alpha-"):
            assert_folded(after, hist, built, name)
        else:  # "alphabet-" shares "alpha" but not "alpha-"
            assert_untouched(hist, built, name)
    assert (summary.examined, summary.chosen, summary.flattened) == (12, 4, 4)


def test_offline_min_rows_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "store"
    # 9 and 10 rows straddle min_rows=10; all of them have old rows to fold
    shape = {"short-a": (7, 2), "short-b": (8, 1), "edge": (8, 2), "long": (30, 2)}
    built = build_store(path, shape)
    before, _ = snapshot_store(path)

    summary = compact_offline(path, policy(min_rows=10), quiet())

    after, hist = snapshot_store(path)
    assert_same_items(before, after)
    assert_folded(after, hist, built, "edge")
    assert_folded(after, hist, built, "long")
    assert_untouched(hist, built, "short-a")
    assert_untouched(hist, built, "short-b")
    assert (summary.examined, summary.chosen, summary.flattened) == (4, 2, 2)


def test_offline_max_items_takes_the_longest_histories_first(tmp_path: Path) -> None:
    path = tmp_path / "store"
    # distinct lengths, named so that name order is not length order
    lengths = {"a": 5, "b": 40, "c": 12, "d": 33, "e": 25, "f": 3}
    shape = {n: (k, 1) for n, k in lengths.items()}
    built = build_store(path, shape)
    before, _ = snapshot_store(path)

    summary = compact_offline(path, policy(max_items=3), quiet())

    after, hist = snapshot_store(path)
    assert_same_items(before, after)
    longest = {"b", "d", "e"}
    for name in shape:
        if name in longest:
            assert_folded(after, hist, built, name)
        else:
            assert_untouched(hist, built, name)
    assert (summary.examined, summary.chosen, summary.flattened) == (6, 3, 3)
    assert summary.rows_before == 41 + 34 + 26


def test_offline_dry_run_lists_items_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "store"
    shape = {"long-1": (20, 1), "long-2": (15, 3), "short": (2, 0), "other": (30, 0)}
    build_store(path, shape)
    with DynoStore(path) as store:
        rows_before = list(store.rows())

    summary = compact_offline(path, policy(min_rows=5, prefix="l"), quiet(), dry_run=True)

    with DynoStore(path) as store:
        assert list(store.rows()) == rows_before
    assert summary.mode == "offline, dry run"
    assert (summary.examined, summary.chosen, summary.flattened) == (4, 2, 0)
    assert summary.rows_after == summary.rows_before == 21 + 18
    assert len(summary.details) == 2
    assert summary.details[0].startswith("long-1: 21 rows"), summary.details
    assert summary.details[1].startswith("long-2: 18 rows"), summary.details


def test_offline_refuses_a_missing_store(tmp_path: Path) -> None:
    from dyno_stream.core.errors import DynoError

    with pytest.raises(DynoError, match="no such store"):
        compact_offline(tmp_path / "nothing-here", policy(), quiet())
    assert not (tmp_path / "nothing-here").exists(), "a missing store was created"


# ---------------------------------------------------------------------------------------------
# dyno-stream compact --db
# ---------------------------------------------------------------------------------------------


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DYNO_")}
    return subprocess.run(
        [sys.executable, "-m", "dyno_stream", *args],
        env={**clean, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def summary_fields(stderr: str) -> dict[str, str]:
    """The ``compaction done: k=v, ...`` line the CLI prints on stdout when not on a terminal."""
    line = next((ln for ln in stderr.splitlines() if "compaction done:" in ln), None)
    assert line is not None, f"no summary line in {stderr!r}"
    body = line.split("compaction done:", 1)[1]
    out = {}
    for part in body.split(", "):
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def test_cli_compact_db_flattens_and_prints_a_summary(tmp_path: Path) -> None:
    path = tmp_path / "store"
    shape = {f"cli-{i}": (25, 2) for i in range(10)} | {"tiny": (3, 0)}
    built = build_store(path, shape)
    before, _ = snapshot_store(path)

    res = run_cli("compact", "--db", str(path), "--min-rows", "5", "--lateness", "1800")

    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    f = summary_fields(res.stdout)
    assert f["items examined"] == "11"
    assert f["items chosen"] == "10"
    assert f["items flattened"] == "10"
    assert f["rows removed"] == f"{10 * 24} ({10 * 27} -> {10 * 3})"
    b0, b1 = (int(x.replace(",", "")) for x in f["bytes on disk"].split(" -> "))
    assert b1 < b0
    after, hist = snapshot_store(path)
    assert_same_items(before, after)
    for name in shape:
        if name == "tiny":
            assert_untouched(hist, built, name)
        else:
            assert_folded(after, hist, built, name)


def test_cli_compact_db_dry_run_prints_the_items_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "store"
    build_store(path, {"x-1": (12, 1), "x-2": (30, 0), "y-1": (40, 0)})
    with DynoStore(path) as store:
        rows_before = list(store.rows())

    res = run_cli("compact", "--db", str(path), "--dry-run", "--prefix", "x-", "--min-rows", "2")

    assert res.returncode == 0, res.stderr[-2000:]
    lines = [ln for ln in res.stdout.splitlines() if not ln.startswith("compaction done:")]
    assert [ln.split(":")[0] for ln in lines] == ["x-2", "x-1"], res.stdout
    assert lines[0].startswith("x-2: 30 rows"), lines
    assert lines[1].startswith("x-1: 13 rows"), lines
    assert summary_fields(res.stdout)["items flattened"] == "0"
    res = run_cli("compact", "--db", str(path), "--dry-run", "--max-items", "2", "--min-rows", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    items = [ln.split(":")[0] for ln in res.stdout.splitlines()][:-1]  # then the summary
    assert items == ["y-1", "x-2"], res.stdout
    with DynoStore(path) as store:
        assert list(store.rows()) == rows_before


def test_cli_compact_db_refuses_a_store_that_is_open(tmp_path: Path) -> None:
    path = tmp_path / "store"
    build_store(path, {"held": (20, 0)})
    with DynoStore(path) as store:  # as a worker would hold it
        res = run_cli("compact", "--db", str(path), "--min-rows", "2")
        assert res.returncode == 1, (res.returncode, res.stderr[-2000:])
        assert res.stderr.startswith("error: cannot open store"), res.stderr[-2000:]
        assert "Traceback" not in res.stderr
        assert store.get_item("held").count == 20


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("--lateness", "-60"), "lateness"),
        (("--min-rows", "1"), "min_rows"),
        (("--max-items", "0"), "max_items"),
    ],
    ids=["negative-lateness", "min-rows-1", "max-items-0"],
)
def test_cli_compact_db_refuses_values_the_settings_forbid(
    tmp_path: Path, args: tuple[str, ...], option: str
) -> None:
    """CompactionSettings forbids these (lateness_s >= 0, min_rows >= 2, max_items >= 1); the
    flag must not get round that. A negative lateness moves the cut-off into the future and
    folds ops that are seconds old, which the lateness window exists to prevent."""
    path = tmp_path / "store"
    built = build_store(path, {"recent": (0, 6)})
    res = run_cli("compact", "--db", str(path), "--min-rows", "2", *args)
    assert res.returncode != 0, f"compact {' '.join(args)} exited 0; stderr: {res.stderr[-1500:]}"
    assert option.split("_")[0] in res.stderr.replace("-", "_"), res.stderr[-1500:]
    _, hist = snapshot_store(path)
    assert_untouched(hist, built, "recent")


# ---------------------------------------------------------------------------------------------
# the store: Flatten(item, hash, before)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with DynoStore(tmp_path / "s") as s:
        yield s


def minute_flakes(
    store: DynoStore, name: str, n: int, start_ms: int
) -> tuple[list[str], list[str]]:
    """``n`` ops, one a minute from ``start_ms``; returns their flakes and chain hashes."""
    flakes, hashes = [], []
    for k in range(n):
        at = start_ms + k * 60_000
        f = FlakeGenerator(node=5, pid=5, clock=lambda at=at: at).next()
        store.apply([make_op("putAttrs", name, {f"a{k}": k, "k": k}, f)])
        flakes.append(f)
        hashes.append(store.get_item(name).hash or "")
    return flakes, hashes


def cut_between(flakes: list[str], i: int) -> str:
    """A cut-off after flake i and before flake i+1 (they are a minute apart)."""
    t = int(flakes[i][:12], 16) + 30_000
    return flake_floor(t / 1000)


def test_flatten_before_folds_older_rows_up_to_the_cut_off(store: DynoStore) -> None:
    flakes, hashes = minute_flakes(store, "x", 10, now_ms() - 3 * HOUR_MS)
    want = store.get_item("x")
    rows = list(store.rows("x"))
    # the hash seen is the newest; the cut-off stands after the 6th op (index 5)
    assert store.apply([Flatten(item="x", hash=hashes[-1], before=cut_between(flakes, 5))]) == ["x"]
    got = store.get_item("x")
    assert (got.value, got.hash, got.changes, got.timestamp) == (
        want.value,
        want.hash,
        want.changes,
        want.timestamp,
    )
    assert got.count == 1 + 4
    hist = store.get_history("x")
    assert isinstance(hist[0], HistoryChangeset)
    assert (hist[0].timestamp, hist[0].hash, hist[0].changes) == (flakes[5], hashes[5], 6)
    assert hist[0].value == {**{f"a{k}": k for k in range(6)}, "k": 5}
    assert list(store.rows("x"))[1:] == rows[6:], "rows after the cut-off changed"


def test_flatten_before_never_folds_past_the_hash(store: DynoStore) -> None:
    flakes, hashes = minute_flakes(store, "x", 10, now_ms() - 3 * HOUR_MS)
    rows = list(store.rows("x"))
    # the caller saw the item at its 3rd op; the cut-off would allow 7
    assert store.apply([Flatten(item="x", hash=hashes[2], before=cut_between(flakes, 6))]) == ["x"]
    hist = store.get_history("x")
    assert isinstance(hist[0], HistoryChangeset)
    assert (hist[0].timestamp, hist[0].hash, hist[0].changes) == (flakes[2], hashes[2], 3)
    assert list(store.rows("x"))[1:] == rows[3:]
    assert store.get_item("x").count == 8
    assert store.get_item("x").hash == hashes[-1]


def test_flatten_before_with_nothing_older_is_a_no_op(store: DynoStore) -> None:
    flakes, hashes = minute_flakes(store, "x", 5, now_ms() - 3 * HOUR_MS)
    rows = list(store.rows("x"))
    assert store.apply([Flatten(item="x", hash=hashes[-1], before=flakes[0])]) == []
    assert list(store.rows("x")) == rows


def test_flatten_before_a_hash_folded_by_an_earlier_pass_is_a_no_op(store: DynoStore) -> None:
    flakes, hashes = minute_flakes(store, "x", 10, now_ms() - 3 * HOUR_MS)
    cut = cut_between(flakes, 6)
    assert store.apply([Flatten(item="x", hash=hashes[4], before=cut)]) == ["x"]
    rows = list(store.rows("x"))
    item = store.get_item("x")
    # the same command again, an older hash (folded away), and the history row's own hash
    for h in (hashes[4], hashes[1], hashes[0]):
        assert store.apply([Flatten(item="x", hash=h, before=cut)]) == [], h
        assert list(store.rows("x")) == rows
        assert store.get_item("x") == item
    # a later pass with a newer hash folds on, to the cut-off
    assert store.apply([Flatten(item="x", hash=hashes[-1], before=cut)]) == ["x"]
    hist = store.get_history("x")
    assert isinstance(hist[0], HistoryChangeset)
    assert (hist[0].timestamp, hist[0].hash) == (flakes[6], hashes[6])
    assert store.get_item("x").count == 4


def test_flatten_before_with_an_unknown_hash_and_no_history_raises(store: DynoStore) -> None:
    flakes, _ = minute_flakes(store, "x", 5, now_ms() - 3 * HOUR_MS)
    rows = list(store.rows("x"))
    with pytest.raises(UnknownHashError, match="0" * 32):
        store.apply([Flatten(item="x", hash="0" * 32, before=cut_between(flakes, 3))])
    with pytest.raises(UnknownHashError):
        store.apply([Flatten(item="nobody", hash="0" * 32, before=cut_between(flakes, 3))])
    assert list(store.rows("x")) == rows
    assert store.get_item("x").count == 5
    # in a batch with on_error, it is reported and the rest is written
    errors: list[Any] = []
    op = make_op("putAttrs", "x", {"after": True}, new_flakes().next())
    touched = store.apply(
        [Flatten(item="x", hash="f" * 32, before=cut_between(flakes, 3)), op],
        on_error=lambda i, e, exc: errors.append((i, type(exc))),
    )
    assert errors == [(0, UnknownHashError)]
    assert touched == ["x"]
    assert store.get_item("x").count == 6


def test_after_flatten_before_an_op_older_than_the_history_row_is_late(store: DynoStore) -> None:
    start = now_ms() - 3 * HOUR_MS
    flakes, hashes = minute_flakes(store, "x", 6, start)
    store.apply([Flatten(item="x", hash=hashes[-1], before=cut_between(flakes, 3))])
    before = store.get_item("x")
    late = FlakeGenerator(node=9, pid=9, clock=lambda: start + 60_000).next()  # < flakes[3]
    with pytest.raises(LateOpError):
        store.apply([make_op("putAttrs", "x", {"late": 1}, late)])
    with pytest.raises(LateOpError):  # the history row's own flake is no place either
        store.apply([make_op("putAttrs", "x", {"late": 2}, flakes[3])])
    assert store.get_item("x") == before
    # an op between the history row and the newest row is placed, out of order
    between = FlakeGenerator(node=9, pid=9, clock=lambda: start + 4 * 60_000 + 1).next()
    store.apply([make_op("putAttrs", "x", {"between": 1, "k": -1}, between)])
    got = store.get_item("x")
    assert got.value == {**before.value, "between": 1}  # type: ignore[dict-item]
    assert got.value is not None and got.value["k"] == 5, "the newer op's k must win"
    assert got.changes == before.changes + 1 and got.count == before.count + 1


def test_flatten_command_before_must_be_a_flake() -> None:
    from dyno_stream.core.errors import ValidationError

    cut = flake_floor(time.time() - 3600)
    ok = parse_event(f'{{"item":"x","op":"flatten","hash":"{"a" * 32}","before":"{cut}"}}')
    assert isinstance(ok, Flatten) and ok.before == cut
    assert Flatten(item="x", hash="a" * 32).before is None
    with pytest.raises(ValidationError) as info:
        parse_event(b'{"item":"x","op":"flatten","hash":"' + b"a" * 32 + b'","before":"yesterday"}')
    assert info.value.field == "before"


def test_summary_reports_bytes_only_when_measured() -> None:
    s = Summary("online", examined=3, chosen=2, flattened=2, rows_before=20, rows_after=2)
    fields = dict(s.fields())
    assert fields["rows removed"] == "18 (20 -> 2)"
    assert "bytes on disk" not in fields
    s.bytes_before, s.bytes_after = 1000, 10
    assert dict(s.fields())["bytes on disk"] == "1,000 -> 10"


class _CountingRows(dict[bytes, bytes | None]):
    """A write batch's staged rows that count how many of them are read: one per lookup,
    every row for a scan."""

    reads = 0

    def __getitem__(self, key: bytes) -> bytes | None:
        _CountingRows.reads += 1
        return super().__getitem__(key)

    def get(self, key: bytes, default: Any = None) -> Any:
        _CountingRows.reads += 1
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        _CountingRows.reads += 1
        return super().__contains__(key)

    def __iter__(self) -> Any:
        _CountingRows.reads += len(self)
        return super().__iter__()

    def items(self) -> Any:
        _CountingRows.reads += len(self)
        return super().items()

    def keys(self) -> Any:
        _CountingRows.reads += len(self)
        return super().keys()

    def values(self) -> Any:
        _CountingRows.reads += len(self)
        return super().values()


def test_a_batch_of_flatten_commands_reads_no_more_rows_than_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker applies an online pass's commands in batches of up to batch_size (here 1,000);
    each fold must read only its own item's rows, not every row the batch has staged for other
    items, or a batch of n commands costs n^2. Counted, not timed (a busy machine's clock says
    little): the staged rows read, in batches and one by one, must be about the same."""
    import shutil

    import dyno_stream.store.write_batch as store_module

    original_init = store_module.WriteBatch.__init__

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.rows = _CountingRows()

    monkeypatch.setattr(store_module.WriteBatch, "__init__", counting_init)
    n_items = 2000
    build_store(tmp_path / "one", {f"u{i:05d}": (10, 1) for i in range(n_items)}, batch=20_000)
    shutil.copytree(tmp_path / "one", tmp_path / "batched")
    cut = flake_floor(time.time() - 3600)
    reads = {}
    for label, size in (("one", 1), ("batched", 1000)):
        with DynoStore(tmp_path / label) as store:
            cmds = [
                Flatten(item=n, hash=i.hash or "", before=cut)
                for n, i in store.scan(lambda n, i: True)
            ]
            _CountingRows.reads = 0
            for k in range(0, len(cmds), size):
                assert len(store.apply(cmds[k : k + size])) == len(cmds[k : k + size])
            reads[label] = _CountingRows.reads
    one, batched = snapshot_store(tmp_path / "one"), snapshot_store(tmp_path / "batched")
    assert batched == one, "batched and one-by-one flattening differ"
    assert all(i.count == 2 for i in one[0].values())
    assert reads["one"] > 0, "the count saw no staged row read: it measures nothing"
    assert reads["batched"] <= 1.5 * reads["one"], (
        f"{n_items} flatten commands read {reads['one']:,} staged rows one by one, "
        f"{reads['batched']:,} in batches of 1,000"
    )


def test_offline_compaction_folds_deleted_items_too(tmp_path: Path) -> None:
    path = tmp_path / "store"
    og = old_flakes()
    with DynoStore(path) as store:
        for i in range(20):
            store.put_attrs("gone", {"i": i}, ts=og())
        store.del_item("gone", ts=og())
        assert store.get_item("gone").value is None and store.get_item("gone").count == 21
    summary = compact_offline(path, CompactionSettings(min_rows=2), Console(file=io.StringIO()))
    assert summary.flattened == 1
    with DynoStore(path) as store:
        item = store.get_item("gone")
        assert item.count == 1 and item.changes == 21 and item.value is None
