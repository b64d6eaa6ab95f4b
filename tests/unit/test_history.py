"""An item's history and its state as of a time (``store.history``), on a real LevelDB store:
the seed's example, a fold, a deletion and an erasure."""

from __future__ import annotations

from pathlib import Path

import pytest

from dyno_stream.core.errors import HistoryFoldedError
from dyno_stream.core.flake import format_flake
from dyno_stream.store import DynoStore

SEED = [  # the seed README's rows for 'chilts'
    (
        "013d58c7276e-0000-188c-786ae2e1f629",
        "putItem",
        {"nick": "chilts", "email": "me@example.com"},
    ),
    ("013d58c7276e-0001-188c-786ae2e1f629", "delAttrs", ["email"]),
    ("013d58c7276e-0002-188c-786ae2e1f629", "putAttrs", {"name": "Andy Chilton"}),
]


def _at(ms: int, counter: int = 0) -> str:
    return format_flake(ms, counter, 1, 1)


def test_the_seeds_history_and_its_state_at_each_time(tmp_path: Path) -> None:
    with DynoStore(tmp_path / "s") as store:
        store.put_item("chilts", SEED[0][2], ts=SEED[0][0])  # type: ignore[arg-type]
        store.del_attrs("chilts", ["email"], ts=SEED[1][0])
        store.put_attrs("chilts", {"name": "Andy Chilton"}, ts=SEED[2][0])
        rows = store.history("chilts")
        assert [(r.flake, r.op, r.change) for r in rows] == SEED
        assert [r.changes for r in rows] == [1, 2, 3]
        assert rows[-1].hash == store.get_item("chilts").hash
        assert len({r.hash for r in rows}) == 3
        ms = int(SEED[0][0][:12], 16)  # all three ops in one millisecond
        assert store.as_of("chilts", ms - 1).value is None  # before its first op: absent
        assert store.as_of("chilts", ms).value == {"nick": "chilts", "name": "Andy Chilton"}
        assert store.history("nobody") == []


def test_as_of_answers_within_the_history_kept_and_refuses_before_a_fold(tmp_path: Path) -> None:
    with DynoStore(tmp_path / "s") as store:
        store.put_item("x", {"v": 1}, ts=_at(1_000))
        store.put_attrs("x", {"v": 2}, ts=_at(2_000))
        store.put_attrs("x", {"v": 3}, ts=_at(3_000))
        store.del_item("x", ts=_at(4_000))
        assert [store.as_of("x", t).value for t in (999, 1_000, 2_500, 3_000)] == [
            None,
            {"v": 1},
            {"v": 2},
            {"v": 3},
        ]
        gone = store.as_of("x", 4_000)
        assert gone.value is None and gone.deleted  # deleted then, as its rules say
        second = store.history("x")[1].hash
        store.flatten("x", second)  # rows through t=2000 fold into one history row
        with pytest.raises(HistoryFoldedError, match="no longer kept"):
            store.as_of("x", 1_500)  # never the folded state passed off as that time's
        assert store.as_of("x", 2_000).value == {"v": 2}
        assert store.as_of("x", 3_500).value == {"v": 3}
        assert store.history("x")[0].op == "history"


def test_an_erased_items_past_is_gone_too(tmp_path: Path) -> None:
    with DynoStore(tmp_path / "s") as store:
        store.put_item("secret", {"pin": 1234}, ts=_at(1_000))
        store.erase("secret", ts=_at(2_000))
        with pytest.raises(HistoryFoldedError):
            store.as_of("secret", 1_500)
        assert all("1234" not in str(r.change) for r in store.history("secret"))
