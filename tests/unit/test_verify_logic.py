"""``jobs.verify``'s comparison and its reading of a snapshot's summary (pure)."""

from __future__ import annotations

from confluent_kafka import Message

from dyno_stream.jobs.verify import _summary, compare

H1, H2 = "1" * 32, "2" * 32


def test_differences_are_named_missing_behind_or_diverged() -> None:
    left = {"same": (3, H1, False), "only-left": (1, H1, False), "behind": (2, H1, False)}
    left |= {"split": (4, H1, False), "gone": (5, H1, True)}
    right = {"same": (3, H1, False), "behind": (3, H2, False), "split": (4, H2, False)}
    result = compare(left, right, ("a", "b"))
    assert result.compared == 5
    assert [(d.name, d.kind) for d in result.differences] == [
        ("behind", "behind"),
        ("only-left", "missing"),
        ("split", "diverged"),
    ]
    assert "a is behind" in result.differences[0].detail
    assert result.deleted_one_side == 1  # deleted in a, its tombstone gone from b


def test_a_snapshots_summary_is_its_own_not_one_inside_its_value() -> None:
    # an attribute named like the summary's fields comes first, in the value
    value = (
        b'{"item":"x","value":{"changes":9,"hash":"' + H2.encode() + b'"},'
        b'"timestamp":"t","changes":2,"hash":"' + H1.encode() + b'","count":2,"source":null}'
    )
    assert _summary(Message(key=b"x", value=value)) == ("x", (2, H1, False))
    tomb = Message(
        key=b"y", value=None, headers=[("dyno.item.changes", b"4"), ("dyno.item.hash", H2.encode())]
    )
    assert _summary(tomb) == ("y", (4, H2, True))
