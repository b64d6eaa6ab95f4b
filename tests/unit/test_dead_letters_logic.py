"""The pure parts of ``jobs.dead_letters``: ``--since`` and what a replay sends."""

from __future__ import annotations

import pytest

from dyno_stream.core.errors import ConfigError
from dyno_stream.jobs.dead_letters import Letter, since_ms


def test_since_is_a_duration_back_from_now_or_an_iso_time() -> None:
    now = 1_000_000.0
    assert since_ms("90s", now) == (now - 90) * 1000
    assert since_ms("2h", now) == (now - 7200) * 1000
    assert since_ms("1.5d", now) == (now - 129_600) * 1000
    assert since_ms("1970-01-02T00:00:00+00:00") == 86_400_000
    with pytest.raises(ConfigError, match="expected a duration"):
        since_ms("yesterday")


def test_a_replay_sends_the_original_headers_and_where_it_came_from() -> None:
    letter = Letter(
        2,
        17,
        0,
        b"x",
        b"{}",
        [
            ("dyno.expect.changes", b"3"),
            ("trace", b"abc"),
            ("dyno.error.reason", b"expectation-failed"),
            ("dyno.source.offset", b"9"),
            ("dyno.actual.changes", b"4"),
        ],
    )
    assert letter.reason == "expectation-failed" and letter.replayable
    assert letter.original_headers() == [
        ("dyno.expect.changes", b"3"),
        ("trace", b"abc"),
        ("dyno.replayed.from", b"2@17"),
    ]
    assert not Letter(0, 0, 0, b"x", None, [("dyno.error.reason", b"invalid")]).replayable
