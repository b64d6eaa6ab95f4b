"""The bench harness's check that dyno-stream and quixstreams did the same work: the
figures of a comparison mean something only if it holds, so it must catch each difference."""

from __future__ import annotations

import copy
from typing import Any

from harness.runs import median_run, same_work


def _runs() -> tuple[dict[str, Any], dict[str, Any]]:
    final = {"a": {"value": {"n": 2}, "changes": 2}, "b": {"value": {"n": 1}, "changes": 1}}
    dyno = {
        "ops": 3,
        "applied": 3,
        "dead_letters": 0,
        "read_back": {"snapshots": 2, "per_item_min_median_max": [1, 1, 1], "final": final},
    }
    quix = {
        "snapshots": 3,
        "read_back": {
            "snapshots": 3,
            "per_item_min_median_max": [1, 2, 2],
            "final": copy.deepcopy(final),
        },
    }
    return dyno, quix


def test_the_same_work_passes_and_reports_the_snapshots_of_each() -> None:
    dyno, quix = _runs()
    check = same_work(dyno, quix)
    assert check["same"] is True
    assert check["snapshots"] == [2, 3]  # differ by design: reported, not judged
    assert check["snapshots_per_item_min_median_max"] == [[1, 1, 1], [1, 2, 2]]


def test_an_item_whose_newest_snapshot_differs_is_named() -> None:
    dyno, quix = _runs()
    quix["read_back"]["final"]["b"]["value"] = {"n": 7}
    check = same_work(dyno, quix)
    assert (check["same"], check["items_differing"], check["first_differing"]) == (
        False,
        1,
        ["b"],
    )


def test_an_item_missing_on_one_side_differs() -> None:
    dyno, quix = _runs()
    del dyno["read_back"]["final"]["a"]
    assert same_work(dyno, quix)["first_differing"] == ["a"]


def test_ops_not_applied_or_dead_lettered_are_not_the_same_work() -> None:
    dyno, quix = _runs()
    dyno["applied"] = 2
    assert same_work(dyno, quix)["same"] is False
    dyno, quix = _runs()
    dyno["dead_letters"] = 1
    assert same_work(dyno, quix)["same"] is False
    dyno, quix = _runs()
    quix["snapshots"] = 2  # quixstreams wrote one snapshot per op: one op short
    assert same_work(dyno, quix)["same"] is False


def test_the_median_run_carries_the_spread_and_every_runs_load() -> None:
    runs = [
        {"ops_per_s": 30.0, "seconds": 12.0, "load": [1.0, 2.0]},
        {"ops_per_s": 10.0, "seconds": 30.0, "load": [3.0, 4.0]},
        {"ops_per_s": 20.0, "seconds": 15.0, "load": [5.0, 6.0]},
    ]
    median = median_run(runs)
    assert median["ops_per_s"] == 20.0
    assert median["spread_ops_per_s"] == [10, 30]
    assert median["runs_ops_per_s"] == [30, 10, 20]  # in the order they ran
    assert median["runs_load"] == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    assert median["runs_seconds"] == [12.0, 30.0, 15.0]
