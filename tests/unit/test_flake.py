"""Flake ids (core.flake): format, parsing, and a generator that never goes backwards."""

from __future__ import annotations

import itertools
import re
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dyno_stream.core.errors import DynoError, InvalidFlakeError, ValidationError
from dyno_stream.core.flake import (
    Flake,
    FlakeGenerator,
    flake_floor,
    flake_time,
    format_flake,
    is_flake,
    new_flake,
    parse_flake,
)

SEED = "013d58c7276e-0000-188c-786ae2e1f629"
SHAPE = re.compile(r"[0-9a-f]{12}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def assert_well_formed(flake: str) -> None:
    assert len(flake) == 35, flake
    assert SHAPE.fullmatch(flake), flake


class StepClock:
    """A clock (ms) that returns the given readings in turn, then repeats the last one."""

    def __init__(self, readings: list[int]) -> None:
        self.readings = list(readings)
        self.i = 0

    def __call__(self) -> int:
        value = self.readings[min(self.i, len(self.readings) - 1)]
        self.i += 1
        return value


# -- format and parse --------------------------------------------------------------------------


def test_parse_seed_flake_fields() -> None:
    flake = parse_flake(SEED)
    assert flake == Flake(0x013D58C7276E, 0, 0x188C, 0x786AE2E1F629)
    assert (flake.time_ms, flake.counter, flake.pid, flake.node) == (
        0x013D58C7276E,
        0,
        0x188C,
        0x786AE2E1F629,
    )
    assert str(flake) == SEED


def test_format_is_fixed_width_lower_hex() -> None:
    assert format_flake(1, 2, 3, 4) == "000000000001-0002-0003-000000000004"
    top = format_flake((1 << 48) - 1, 0xFFFF, 0xFFFF, (1 << 48) - 1)
    assert top == "ffffffffffff-ffff-ffff-ffffffffffff"
    assert parse_flake(top) == Flake((1 << 48) - 1, 0xFFFF, 0xFFFF, (1 << 48) - 1)


@given(
    st.integers(0, (1 << 48) - 1),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, (1 << 48) - 1),
)
def test_format_parse_round_trip(t: int, s: int, p: int, m: int) -> None:
    text = format_flake(t, s, p, m)
    assert_well_formed(text)
    assert parse_flake(text) == Flake(t, s, p, m)
    assert is_flake(text)


@given(
    st.tuples(st.integers(0, (1 << 48) - 1), st.integers(0, 0xFFFF)),
    st.tuples(st.integers(0, (1 << 48) - 1), st.integers(0, 0xFFFF)),
)
def test_string_order_is_time_then_counter_order(a: tuple[int, int], b: tuple[int, int]) -> None:
    fa = format_flake(a[0], a[1], 7, 9)
    fb = format_flake(b[0], b[1], 7, 9)
    assert (fa < fb) == (a < b)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "013D58C7276E-0000-188C-786AE2E1F629",  # upper case
        "013d58c7276e-0000-188c-786ae2e1f62",  # short node
        "013d58c7276e-0000-188c-786ae2e1f6290",  # long node
        "13d58c7276e-0000-188c-786ae2e1f629",  # short time
        "013d58c7276e_0000_188c_786ae2e1f629",
        "013d58c7276e-0000-188c-786ae2e1f62g",  # not hex
        " 013d58c7276e-0000-188c-786ae2e1f629",
        "013d58c7276e-0000-188c-786ae2e1f629 ",
        "013d58c7276e-0000-188c-786ae2e1f629/putItem",
        "013d58c7276e0000188c786ae2e1f629",
        "013d58c7276e-+000-188c-786ae2e1f629",
    ],
)
def test_parse_rejects_malformed(bad: str) -> None:
    with pytest.raises(InvalidFlakeError) as info:
        parse_flake(bad)
    assert info.value.field == "ts"
    assert not is_flake(bad)


def test_parse_rejects_trailing_newline() -> None:
    # "rejecting anything else": a flake followed by a newline is not a flake id
    bad = SEED + "\n"
    assert not is_flake(bad)
    with pytest.raises(InvalidFlakeError):
        parse_flake(bad)


@pytest.mark.parametrize("bad", [None, 5, b"013d58c7276e-0000-188c-786ae2e1f629", ["x"]])
def test_parse_rejects_non_strings(bad: object) -> None:
    with pytest.raises(InvalidFlakeError):
        parse_flake(bad)  # type: ignore[arg-type]
    assert not is_flake(bad)


def test_parse_error_names_given_field_and_is_a_dyno_error() -> None:
    with pytest.raises(InvalidFlakeError) as info:
        parse_flake("nope", field="flake")
    assert info.value.field == "flake"
    assert isinstance(info.value, ValidationError)
    assert isinstance(info.value, DynoError)


def test_flake_time_and_floor() -> None:
    assert flake_time(SEED) == 0x013D58C7276E / 1000.0
    floor = flake_floor(0x013D58C7276E / 1000.0)
    assert floor == "013d58c7276e-0000-0000-000000000000"
    assert floor <= SEED
    assert flake_floor(-5) == "000000000000-0000-0000-000000000000"


# -- the generator -----------------------------------------------------------------------------


def test_generator_fields_and_width() -> None:
    gen = FlakeGenerator(node=0x786AE2E1F629, pid=0x188C, clock=lambda: 0x013D58C7276E)
    first = gen.next()
    assert first == SEED
    second = gen()
    assert second == "013d58c7276e-0001-188c-786ae2e1f629"
    assert parse_flake(second).counter == 1


def test_generator_pid_is_masked_to_16_bits() -> None:
    gen = FlakeGenerator(node=1, pid=0x12345, clock=lambda: 1000)
    assert gen.pid == 0x2345
    flake = gen.next()
    assert_well_formed(flake)
    assert flake.split("-")[2] == "2345"
    assert parse_flake(flake).pid == 0x2345


def test_generator_refuses_node_wider_than_48_bits() -> None:
    with pytest.raises(InvalidFlakeError):
        FlakeGenerator(node=1 << 48, pid=1)
    with pytest.raises(InvalidFlakeError):
        FlakeGenerator(node=-1, pid=1)
    assert (
        FlakeGenerator(node=(1 << 48) - 1, pid=1, clock=lambda: 5).next().endswith("ffffffffffff")
    )


def test_generator_strictly_increasing_when_clock_steps_back() -> None:
    readings = [5000, 5001, 5002, 4000, 4000, 3000, 5002, 5002, 6000, 10, 6000, 6001]
    gen = FlakeGenerator(node=42, pid=7, clock=StepClock(readings))
    ids = [gen.next() for _ in readings]
    for flake in ids:
        assert_well_formed(flake)
    assert all(a < b for a, b in itertools.pairwise(ids)), ids
    assert len(set(ids)) == len(ids)
    # the ids never go back to the clock's earlier time
    assert min(parse_flake(f).time_ms for f in ids) == 5000
    # once the clock passes the last issued millisecond, ids follow it again
    assert parse_flake(ids[8]).time_ms == 6000
    assert parse_flake(ids[8]).counter == 0
    assert parse_flake(ids[-1]) == Flake(6001, 0, 7, 42)


@given(st.lists(st.integers(0, 2000), min_size=1, max_size=200))
def test_generator_strictly_increasing_for_any_clock(readings: list[int]) -> None:
    gen = FlakeGenerator(node=3, pid=4, clock=StepClock(readings))
    ids = [gen.next() for _ in readings]
    for flake in ids:
        assert_well_formed(flake)
    assert all(a < b for a, b in itertools.pairwise(ids))
    # never ahead of the clock's maximum so far by more than the borrowed milliseconds
    assert parse_flake(ids[-1]).time_ms <= max(readings) + len(readings) // 65536 + 1


def test_generator_more_than_65536_ids_in_one_millisecond() -> None:
    gen = FlakeGenerator(node=0xABCDEF, pid=0x1234, clock=lambda: 1_000_000)
    ids = [gen.next() for _ in range(70_000)]
    assert len(set(ids)) == 70_000
    assert all(len(f) == 35 for f in ids)
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert ids == sorted(ids)
    assert_well_formed(ids[0])
    assert_well_formed(ids[-1])
    first, last = parse_flake(ids[0]), parse_flake(ids[-1])
    assert first == Flake(1_000_000, 0, 0x1234, 0xABCDEF)
    assert parse_flake(ids[65535]) == Flake(1_000_000, 0xFFFF, 0x1234, 0xABCDEF)
    # the 65,537th id borrows the next millisecond
    assert parse_flake(ids[65536]) == Flake(1_000_001, 0, 0x1234, 0xABCDEF)
    assert last.time_ms == 1_000_001
    assert last.counter == 70_000 - 65_536 - 1


def test_generator_is_thread_safe() -> None:
    gen = FlakeGenerator(node=1, pid=1, clock=lambda: 77)
    out: list[list[str]] = [[] for _ in range(4)]

    def work(i: int) -> None:
        out[i].extend(gen.next() for _ in range(2000))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [f for chunk in out for f in chunk]
    assert len(set(every)) == 8000
    for chunk in out:
        assert chunk == sorted(chunk)


def test_new_flake_is_well_formed_and_increasing() -> None:
    ids = [new_flake() for _ in range(1000)]
    for flake in ids:
        assert_well_formed(flake)
    assert all(a < b for a, b in itertools.pairwise(ids))
