"""The fold cut-off of compaction passes: pure rule and the offline pass's basis.

No broker: the offline pass reads what a partition store recorded of its consumed messages.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

from rich.console import Console

from dyno_stream.config import CompactionSettings
from dyno_stream.core.flake import FlakeGenerator, flake_floor
from dyno_stream.jobs.compaction import compact_offline
from dyno_stream.store import DynoStore
from dyno_stream.store.compaction_policy import fold_cutoff
from dyno_stream.store.partition import CONSUMED_TIME_KEY, OFFSET_KEY

HOUR = 3600.0


def test_fold_cutoff_is_the_earlier_of_consumed_time_and_now_minus_the_lateness() -> None:
    now = 1_800_000_000.0
    assert fold_cutoff(now, now, HOUR) == flake_floor(now - HOUR)
    assert fold_cutoff(now - 2 * HOUR, now, HOUR) == flake_floor(now - 3 * HOUR)
    # a consumed time ahead of the clock (a producer's clock) never moves the cut-off on
    assert fold_cutoff(now + 2 * HOUR, now, HOUR) == flake_floor(now - HOUR)


def _store_with_old_rows(path: Path, meta: dict[bytes, bytes]) -> None:
    at = int((time.time() - 3 * HOUR) * 1000)  # rows three hours old
    gen = FlakeGenerator(node=3, clock=lambda: at)
    with DynoStore(path) as db:
        for k in range(5):
            db.put_attrs("x", {"k": k}, ts=gen.next())
        db.apply([], internal_rows=meta)


def test_offline_pass_on_a_partition_store_folds_by_its_consumed_time(tmp_path: Path) -> None:
    consumed = int((time.time() - 2.5 * HOUR) * 1000)  # the worker was 2.5 hours behind
    _store_with_old_rows(
        tmp_path / "s", {OFFSET_KEY: b"5", CONSUMED_TIME_KEY: str(consumed).encode()}
    )
    policy = CompactionSettings(min_rows=2, lateness_s=HOUR)
    summary = compact_offline(tmp_path / "s", policy, Console(file=io.StringIO()))
    # three-hour-old rows are not older than 2.5 h + 1 h: nothing folds
    assert summary.flattened == 0, summary.fields()
    with DynoStore(tmp_path / "s") as db:
        assert db.get_item("x").count == 5


def test_offline_pass_on_a_partition_store_without_consumed_time_folds_nothing(
    tmp_path: Path,
) -> None:
    _store_with_old_rows(tmp_path / "s", {OFFSET_KEY: b"5"})
    policy = CompactionSettings(min_rows=2, lateness_s=HOUR)
    summary = compact_offline(tmp_path / "s", policy, Console(file=io.StringIO()))
    assert summary.flattened == 0
    assert "consumed no batch since it was created or restored" in summary.details[0]
    with DynoStore(tmp_path / "s") as db:
        assert db.get_item("x").count == 5


def test_offline_pass_on_a_plain_store_folds_by_the_wall_clock(tmp_path: Path) -> None:
    _store_with_old_rows(tmp_path / "s", {})
    policy = CompactionSettings(min_rows=2, lateness_s=HOUR)
    summary = compact_offline(tmp_path / "s", policy, Console(file=io.StringIO()))
    assert summary.flattened == 1, summary.fields()
    with DynoStore(tmp_path / "s") as db:
        assert db.get_item("x").count == 1
