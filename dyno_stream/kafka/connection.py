"""Whether Kafka answers, as a fact the project tracks, and what the user is told about it.

librdkafka retries a lost broker for ever and says so in a log line per attempt (collapsed by
``core.librdkafka_log``). What a user needs is different: a CLI command that gives up within
``[kafka] connect_timeout_s`` with one line saying what to do (:func:`require_broker`), and a
worker that says once when Kafka went away, every 30 s while it stays away, and once when it
is back, with the outage's length (:class:`ConnectionWatch`, shown on ``/healthz`` and in
``dyno_kafka_connected``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient

from dyno_stream.config import KafkaSettings
from dyno_stream.core.errors import KafkaAdminError, KafkaUnreachableError
from dyno_stream.core.librdkafka_log import LIBRDKAFKA_LOG
from dyno_stream.kafka.security import AuthWatch, list_topics_checked

__all__ = ["ConnectionWatch", "require_broker"]

log = logging.getLogger(__name__)

#: librdkafka's words for a failed connection, and ours for a user.
_REASONS = {
    "connection refused": "connection refused",
    "name or service not known": "host name not found",
    "failed to resolve": "host name not found",
    "timed out": "no answer",
    "connection reset": "connection reset",
}
#: Errors that say a broker did not answer (librdkafka goes on retrying each).
_UNREACHABLE = (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE)


def _reason(text: str | None) -> str:
    low = (text or "").lower()
    for words, reason in _REASONS.items():
        if words in low:
            return reason
    return "no answer"


class ConnectionWatch:
    """Kafka reachable or not, from the clients' error callbacks and from what gets through.

    ``error`` takes every ``error_cb`` report (chain it from :class:`AuthWatch`); all brokers
    down makes Kafka unreachable. ``answered`` says a request got through (a metadata answer,
    an acknowledged message); ``tick`` repeats the outage line while it lasts. Thread-safe:
    the callbacks run on whichever thread polls each client.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bootstrap = kafka.bootstrap_servers
        self.every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        #: when the outage began (``None``: Kafka answers)
        self.down_since: float | None = None
        self.reason: str | None = None
        self._last_failure: str | None = None
        self._said_at = 0.0

    @property
    def connected(self) -> bool:
        return self.down_since is None

    def error(self, err: KafkaError) -> None:
        if err.code() not in _UNREACHABLE:
            return
        if err.code() != KafkaError._ALL_BROKERS_DOWN:
            self._last_failure = err.str()
            return
        self.lost(_reason(self._last_failure or LIBRDKAFKA_LOG.last_connect_failure))

    def lost(self, reason: str) -> None:
        """No broker answers (said once; ``tick`` repeats it while the outage lasts)."""
        with self._lock:
            if self.down_since is not None:
                return
            self.down_since = self._said_at = self._clock()
            self.reason = reason
        log.warning(
            "Kafka at %s is unreachable (%s); retrying, nothing is lost meanwhile",
            self.bootstrap,
            reason,
        )

    def answered(self) -> None:
        """A request got through: an outage, if there was one, is over."""
        if self.down_since is None:  # the usual case, without taking the lock
            return
        with self._lock:
            since, self.down_since, self.reason = self.down_since, None, None
        if since is not None:
            log.warning(
                "Kafka at %s answers again after %.0f s", self.bootstrap, self._clock() - since
            )

    def tick(self) -> None:
        """Say every ``every_s`` that the outage goes on."""
        since = self.down_since
        if since is None:
            return
        now = self._clock()
        with self._lock:
            if now - self._said_at < self.every_s:
                return
            self._said_at = now
        log.warning(
            "Kafka at %s still unreachable after %.0f s (%s)",
            self.bootstrap,
            now - since,
            self.reason,
        )


def require_broker(kafka: KafkaSettings, *, started: float | None = None) -> None:
    """Return once a broker answers; raise :class:`KafkaUnreachableError` when none has by
    ``kafka.connect_timeout_s`` after ``started`` (``time.monotonic()``; default: now). A
    refused login raises its own error at once."""
    started = time.monotonic() if started is None else started
    timeout = max(0.5, kafka.connect_timeout_s - (time.monotonic() - started))
    failures: list[str] = []

    def note(err: KafkaError) -> None:
        if err.code() in _UNREACHABLE and err.code() != KafkaError._ALL_BROKERS_DOWN:
            failures.append(err.str())

    auth = AuthWatch(kafka, also=note)
    admin = AdminClient({**kafka.librdkafka(), **auth.config()})
    try:
        list_topics_checked(admin, auth, timeout, kafka.bootstrap_servers)
    except KafkaAdminError:
        last = failures[-1] if failures else LIBRDKAFKA_LOG.last_connect_failure
        raise KafkaUnreachableError(kafka.bootstrap_servers, _reason(last)) from None
