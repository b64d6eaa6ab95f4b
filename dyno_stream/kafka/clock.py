"""Clock skew: how far ahead of its time an op's flake may be, and how we tell.

Items are ordered by flake, so an op from a producer whose clock runs a year fast would
freeze its item for a year. ``[worker] max_clock_skew_s`` bounds it: the worker compares an
op's flake time with the Kafka message's own timestamp (``LogAppendTime``: the broker's
clock), never its own clock; the client refuses an explicit ``ts`` beyond the bound and
learns the broker's clock from its acknowledgements (``BrokerClockWatch``). An op far in the
past is not skew. Details: ``docs/design/clock-skew.md``.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME

from dyno_stream.core.errors import ClockSkewError

log = logging.getLogger(__name__)

#: The local clock may differ from the broker's by this much before the client warns: more
#: than a produce round trip and the producer's linger, far less than the default bound.
CLIENT_WARN_SKEW_S = 5.0

TIMESTAMP_TYPES = {TIMESTAMP_CREATE_TIME: "CreateTime", TIMESTAMP_LOG_APPEND_TIME: "LogAppendTime"}


def flake_ms(flake: str) -> int:
    """A well-formed flake's time in ms since the epoch (its first 12 hex digits)."""
    return int(flake[:12], 16)


def describe_ms(ms: int) -> str:
    """An epoch-ms time as ISO 8601 UTC, or as plain ms when past year 9999 (a flake's 48 bits
    reach year 10889)."""
    try:
        when = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return f"{ms} ms since the epoch"
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def too_far_ahead(
    field: str, flake_time_ms: int, reference_ms: int, max_skew_s: float, against: str
) -> ClockSkewError:
    """The error for a flake more than ``max_skew_s`` ahead of ``reference_ms`` (``against``
    names that time: "the message's LogAppendTime", "this machine's clock")."""
    ahead_s = (flake_time_ms - reference_ms) / 1000
    return ClockSkewError(
        field,
        f"flake time {describe_ms(flake_time_ms)} is {ahead_s:,.3f} s ahead of {against} "
        f"{describe_ms(reference_ms)}; at most {max_skew_s:g} s is accepted "
        "(worker.max_clock_skew_s): is the producer's clock wrong?",
        flake_time_ms,
        reference_ms,
    )


def check_explicit_ts(
    field: str, flake: str, max_skew_s: float, now: Callable[[], float] = time.time
) -> None:
    """The client's check of a flake the caller chose: refused when beyond the bound of the
    local clock (``now``), as the worker would refuse it."""
    flake_time = flake_ms(flake)
    local_ms = int(now() * 1000)
    if flake_time - local_ms > max_skew_s * 1000:
        raise too_far_ahead(field, flake_time, local_ms, max_skew_s, "this machine's clock")


class BrokerClockWatch:
    """Compares the local clock with the broker's, read from produce acknowledgements.

    On a ``LogAppendTime`` topic an acknowledged message carries the broker's append time,
    which fell between our send and our receipt of the acknowledgement. A local clock more
    than ``warn_s`` outside that window is off by at least that much: ops it stamps may be
    refused (``clock-skew``) or sort wrongly, so we warn (once per direction, and again if
    it gets worse by another ``warn_s``). On a ``CreateTime`` topic the acknowledgement only
    echoes our own clock, so nothing can be learned: said once, at INFO.
    """

    def __init__(self, topic: str, warn_s: float = CLIENT_WARN_SKEW_S) -> None:
        self.topic = topic
        self.warn_s = warn_s
        #: the last offset measured: local clock minus broker clock, in seconds (0 inside
        #: the window), or None before an acknowledgement from a LogAppendTime topic
        self.offset_s: float | None = None
        self._warned_at = 0.0
        self._said_create_time = False
        self._lock = threading.Lock()

    def acknowledged(self, timestamp: tuple[int, int], sent_s: float, acked_s: float) -> None:
        """One acknowledgement: its (type, ms) timestamp, our clock at send and at receipt."""
        kind, broker_ms = timestamp
        if kind != TIMESTAMP_LOG_APPEND_TIME:
            if kind == TIMESTAMP_CREATE_TIME and not self._said_create_time:
                self._said_create_time = True
                log.info(
                    "topic %s uses CreateTime: its acknowledgements carry this machine's own "
                    "time, so the local clock cannot be compared with the broker's",
                    self.topic,
                )
            return
        broker_s = broker_ms / 1000
        if broker_s < sent_s:  # appended "before" we sent it: our clock is ahead
            offset = sent_s - broker_s
        elif broker_s > acked_s:  # appended "after" we heard back: our clock is behind
            offset = acked_s - broker_s
        else:
            offset = 0.0
        with self._lock:
            self.offset_s = offset
            if abs(offset) <= self.warn_s or abs(offset) < self._warned_at + self.warn_s:
                return
            self._warned_at = abs(offset)
        log.warning(
            "this machine's clock is %.1f s %s the Kafka broker's (from the LogAppendTime of "
            "an acknowledged op on %s): ops it stamps %s",
            abs(offset),
            "ahead of" if offset > 0 else "behind",
            self.topic,
            "are refused as clock-skew once beyond worker.max_clock_skew_s"
            if offset > 0
            else "may sort before ops they follow, or be late",
        )
