"""librdkafka's log lines through Python logging, a repeated line said once per interval.

By default librdkafka writes its log to stderr itself. With no broker answering, the CLI's
``op`` against a closed port printed ``%3|...|FAIL|... Connection refused`` about 20 times a
second for over a minute, and a worker writes them as fast into its log. confluent-kafka
takes a ``logger`` setting instead (its log lines are then served by the client's ``poll``);
:class:`~dyno_stream.config.KafkaSettings` puts :data:`LIBRDKAFKA_LOG` into the settings of
every client the project makes, which is why this sits in the core, under the config.

The line is logged the first time; the same line again within ``every_s`` is counted, and the
first one after the interval says how many there were. librdkafka's errors become warnings:
it retries them itself (a refused login is told apart by ``kafka.security``, a broker that
stays away by ``kafka.connection``). Every refused or failed connection is remembered so that
a caller can name the reason ("connection refused") without parsing logs of its own.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LIBRDKAFKA_LOG", "LibrdkafkaLog"]

#: The parts of a line that change from one repetition to the next, or from one connection
#: to the same broker to another: the client's name, the thread, the connection's name
#: ("127.0.0.1:9092/bootstrap: ", "GroupCoordinator: 127.0.0.1:9092: "), how long the attempt
#: took. Lines that differ only there are one line.
_VARYING = re.compile(
    r"\[[^\]\s]+#[a-z]+-\d+\]|\[thrd:[^\]]*\]|\S+:\d+/\w+: |GroupCoordinator: (\S+:\d+: )?"
    r"|\(after \d+ms.*\)$|\s+"
)
#: "Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)"
_CONNECT_FAILED = re.compile(r"Connect to \S+ failed: ([^(]+?)\s*(?:\(|$)")
#: More distinct lines than this are not all remembered (the oldest are forgotten).
_MAX_LINES = 1000


@dataclass
class _Seen:
    logged_at: float
    repeats: int = 0


class LibrdkafkaLog:
    """A ``logger`` for confluent-kafka clients (it calls ``log(level, fmt, *args)``).

    Thread-safe: librdkafka's lines arrive on whichever thread polls each client.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.every_s = every_s
        self._clock = clock
        self._seen: dict[str, _Seen] = {}
        self._lock = threading.Lock()
        #: why the last connection attempt failed, as librdkafka put it ("Connection refused")
        self.last_connect_failure: str | None = None

    def log(self, level: int, msg: str, *args: object) -> None:
        text = msg % args if args else msg
        failed = _CONNECT_FAILED.search(text)
        if failed is not None:
            self.last_connect_failure = failed.group(1)
        shape = _VARYING.sub(" ", text)
        now = self._clock()
        with self._lock:
            seen = self._seen.get(shape)
            if seen is not None and now - seen.logged_at < self.every_s:
                seen.repeats += 1
                return
            repeats, since = (seen.repeats, seen.logged_at) if seen is not None else (0, now)
            if len(self._seen) >= _MAX_LINES and seen is None:
                del self._seen[next(iter(self._seen))]
            self._seen[shape] = _Seen(now)
        # librdkafka retries its errors itself: a warning, not an error of ours
        mapped = min(level, logging.WARNING)
        if repeats:
            self.logger.log(mapped, "%s (and %d times more in %.0f s)", text, repeats, now - since)
        else:
            self.logger.log(mapped, "%s", text)


#: The one log every client of this process shares, so that the same failure seen by a
#: producer, a consumer and an admin client of one process is one line.
LIBRDKAFKA_LOG = LibrdkafkaLog(logging.getLogger("dyno_stream.librdkafka"))
