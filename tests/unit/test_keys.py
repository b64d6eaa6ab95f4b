"""Key encoding (dyno_stream.core.keys): level-dyno's `<name>/<flake>/<op>`, escaped names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dyno_stream.core.errors import InvalidNameError, ValidationError
from dyno_stream.core.keys import (
    INTERNAL,
    MAX_NAME_BYTES,
    META_PREFIX,
    STATE_PREFIX,
    check_name,
    escape_name,
    item_prefix,
    row_key,
    split_key,
    state_key,
    unescape_name,
)

SEED = "013d58c7276e-0000-188c-786ae2e1f629"
LATER = "013d58c7276f-0000-188c-786ae2e1f629"

# valid names: any non-empty text of at most 1,024 UTF-8 bytes (hypothesis text has no surrogates)
names = st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode()) <= MAX_NAME_BYTES)
special_names = st.text(
    alphabet=st.sampled_from(["a", "/", "%", "\x00", "\n", "\x7f", "\x85", "é", "2", "F", "€"]),
    min_size=1,
    max_size=12,
)


def test_plain_name_key_is_exactly_level_dynos() -> None:
    assert row_key("chilts", SEED, "putItem") == f"chilts/{SEED}/putItem".encode()
    assert item_prefix("chilts") == b"chilts/"
    assert escape_name("chilts") == "chilts"
    # unicode and punctuation other than / and % are plain too
    for name in ["Andy Chilton", "ünïcødé", "日本語", "a.b-c_d:e@f", "emoji 🎉"]:
        assert escape_name(name) == name
        assert row_key(name, SEED, "delItem") == f"{name}/{SEED}/delItem".encode()


@pytest.mark.parametrize(
    ("name", "escaped"),
    [
        ("a/b", "a%2Fb"),
        ("50%", "50%25"),
        ("tab\there", "tab%09here"),
        ("nul\x00", "nul%00"),
        ("del\x7f", "del%7F"),
        ("c1\x85", "c1%C2%85"),
        ("/%", "%2F%25"),
    ],
)
def test_special_names_are_escaped(name: str, escaped: str) -> None:
    assert escape_name(name) == escaped
    assert unescape_name(escaped) == name
    key = row_key(name, SEED, "putItem")
    assert key == f"{escaped}/{SEED}/putItem".encode()
    assert split_key(key) == (name, SEED, "putItem")


def test_a_and_a_slash_b_do_not_share_a_prefix() -> None:
    a, ab = item_prefix("a"), item_prefix("a/b")
    assert not ab.startswith(a)
    assert not a.startswith(ab)
    assert not row_key("a/b", SEED, "putItem").startswith(a)
    assert row_key("a", SEED, "putItem").startswith(a)


@given(special_names | names)
def test_escape_round_trips_and_has_no_separator_or_control(name: str) -> None:
    escaped = escape_name(name)
    assert unescape_name(escaped) == name
    assert "/" not in escaped
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in escaped)
    key = row_key(name, LATER, "append")
    assert split_key(key) == (name, LATER, "append")
    # no item key can fall in the internal key space
    assert not key.startswith(INTERNAL)
    assert key.startswith(item_prefix(name))


@given(special_names | names, special_names | names)
def test_distinct_names_never_share_a_prefix(a: str, b: str) -> None:
    if a == b:
        assert item_prefix(a) == item_prefix(b)
    else:
        assert escape_name(a) != escape_name(b)
        assert not item_prefix(a).startswith(item_prefix(b))
        assert not item_prefix(b).startswith(item_prefix(a))


def test_internal_prefixes_are_outside_item_keys() -> None:
    assert STATE_PREFIX.startswith(INTERNAL)
    assert META_PREFIX.startswith(INTERNAL)
    assert state_key("a") == STATE_PREFIX + b"a"
    assert not row_key("\x00state\x00a", SEED, "putItem").startswith(INTERNAL)


def test_state_keys_keep_name_order() -> None:
    ordered = sorted(["a", "a/b", "ab", "Z", "é", "日本", "a\x00", "%"])
    assert sorted(ordered, key=state_key) == ordered


# -- name validation ---------------------------------------------------------------------------


def test_1024_byte_name_ok_1025_refused() -> None:
    assert check_name("x" * 1024) == "x" * 1024
    # 512 two-byte characters = 1,024 bytes; one more byte is too many
    assert check_name("é" * 512) == "é" * 512
    with pytest.raises(InvalidNameError) as info:
        check_name("x" * 1025)
    assert info.value.field == "item"
    with pytest.raises(InvalidNameError):
        check_name("é" * 512 + "x")
    with pytest.raises(InvalidNameError):
        check_name("€" * 341 + "xx")  # 1,023 + 2 bytes


@pytest.mark.parametrize("bad", ["", None, 5, b"bytes", "\ud800", "a\udfffb"])
def test_invalid_names_refused(bad: object) -> None:
    with pytest.raises(InvalidNameError) as info:
        check_name(bad, field="name")
    assert info.value.field == "name"
    assert isinstance(info.value, ValidationError)


@pytest.mark.parametrize("name", ["a", "/", "%", "\x00", " ", "a/b/c", "🎉", "\n"])
def test_odd_but_valid_names_accepted(name: str) -> None:
    assert check_name(name) == name
