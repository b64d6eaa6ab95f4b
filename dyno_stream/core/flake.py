"""Flake ids: the time-ordered timestamps every op is stored under.

Format (lower-case hex, fixed width so that byte order is time order)::

    tttttttttttt-ssss-pppp-mmmmmmmmmmmm
    48-bit ms    16-bit  16-bit 48-bit node id
    since epoch  counter pid

This is npm flake's layout, which level-dyno used. Unlike npm flake, :class:`FlakeGenerator`
never repeats or goes backwards: when the clock steps back, or more than 65,536 ids fall in one
millisecond, it keeps counting on from the last id it issued (borrowing the next millisecond).
The pid is masked to 16 bits so the width never breaks.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from typing import NamedTuple

from dyno_stream.core.errors import InvalidFlakeError

FLAKE_RE = re.compile(r"^[0-9a-f]{12}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
FLAKE_LEN = 35

_MAX_MS = (1 << 48) - 1
_MAX_COUNTER = 0xFFFF
_MAX_NODE = (1 << 48) - 1


class Flake(NamedTuple):
    """The four fields of a flake id."""

    time_ms: int
    counter: int
    pid: int
    node: int

    def __str__(self) -> str:
        return format_flake(self.time_ms, self.counter, self.pid, self.node)


def format_flake(time_ms: int, counter: int, pid: int, node: int) -> str:
    """Render the fields; each must already fit its width."""
    return f"{time_ms:012x}-{counter:04x}-{pid:04x}-{node:012x}"


def parse_flake(text: str, field: str = "ts") -> Flake:
    """Split a flake id into its fields, or raise :class:`InvalidFlakeError` naming ``field``."""
    if not isinstance(text, str) or not FLAKE_RE.fullmatch(text):
        raise InvalidFlakeError(
            field,
            f"{text!r} is not a flake id (tttttttttttt-ssss-pppp-mmmmmmmmmmmm, lower-case hex)",
        )
    t, s, p, m = text.split("-")
    return Flake(int(t, 16), int(s, 16), int(p, 16), int(m, 16))


def is_flake(text: object) -> bool:
    return isinstance(text, str) and FLAKE_RE.fullmatch(text) is not None


def flake_time(text: str) -> float:
    """The flake's time in seconds since the epoch (for lateness windows and display)."""
    return parse_flake(text).time_ms / 1000.0


def flake_floor(time_s: float) -> str:
    """The smallest flake at ``time_s``: every id issued at or after that time sorts >= it."""
    ms = max(0, min(_MAX_MS, int(time_s * 1000)))
    return format_flake(ms, 0, 0, 0)


class FlakeGenerator:
    """Issues strictly increasing flake ids; thread-safe.

    ``node`` defaults to this host's MAC address (``uuid.getnode``), ``pid`` to the process id,
    masked to 16 bits. ``clock`` returns milliseconds and exists so tests can step time back.
    """

    def __init__(
        self,
        node: int | None = None,
        pid: int | None = None,
        clock: object = None,
    ) -> None:
        node = uuid.getnode() if node is None else node
        if not 0 <= node <= _MAX_NODE:
            raise InvalidFlakeError("node", f"node id {node} does not fit in 48 bits")
        self.node = node
        self.pid = (os.getpid() if pid is None else pid) & 0xFFFF
        self._clock = clock if callable(clock) else (lambda: time.time_ns() // 1_000_000)
        self._last_ms = -1
        self._counter = 0
        self._lock = threading.Lock()
        self._suffix = f"-{self.pid:04x}-{self.node:012x}"

    def next(self) -> str:
        with self._lock:
            now = int(self._clock())
            if now > self._last_ms:
                self._last_ms, self._counter = now, 0
            elif self._counter < _MAX_COUNTER:
                self._counter += 1
            else:  # counter exhausted (or clock behind): borrow the next millisecond
                self._last_ms, self._counter = self._last_ms + 1, 0
            if self._last_ms > _MAX_MS:
                raise InvalidFlakeError("ts", "clock beyond the 48-bit flake range")
            return f"{self._last_ms:012x}-{self._counter:04x}{self._suffix}"

    __call__ = next


_default: FlakeGenerator | None = None
_default_lock = threading.Lock()


def new_flake() -> str:
    """A flake from the process-wide generator (made on first use, and again after a fork)."""
    global _default
    gen = _default
    if gen is None or gen.pid != os.getpid() & 0xFFFF:
        with _default_lock:
            if _default is None or _default.pid != os.getpid() & 0xFFFF:
                _default = FlakeGenerator()
            gen = _default
    return gen.next()
