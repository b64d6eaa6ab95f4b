"""Which consumer group protocol the broker offers, and so which one the worker runs.

KIP-848's protocol (``group.protocol=consumer``) needs a broker whose group coordinator
serves it: Kafka 4.0 and later, where it is generally available as ConsumerGroupHeartbeat
(API key 68) version 1. Kafka 3.7 to 3.9 list only version 0, the early-access one that
librdkafka does not speak. A consumer of that protocol on such a broker joins nothing and
says nothing: the worker would apply no op, silently. (A 4.x cluster that disables the
protocol still lists the API, and refuses the first heartbeat instead, a fatal error for the
consumer: :func:`check_group_error` names the fix.)

The broker's API versions are what its ApiVersions answer lists. confluent-kafka has no call
for them, but librdkafka logs the whole list under its ``feature`` debug context when it
connects; a short-lived admin client with that debug context and a logger of its own reads
them, over the same connection settings (TLS, SASL) as every other client.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Final

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from dyno_stream.config import GroupProtocol, Settings
from dyno_stream.core.errors import ConfigError, KafkaUnreachableError
from dyno_stream.core.librdkafka_log import LIBRDKAFKA_LOG
from dyno_stream.kafka.security import AuthWatch

__all__ = [
    "CONSUMER_GROUP_HEARTBEAT",
    "GroupProtocolChoice",
    "broker_api_versions",
    "check_group_error",
    "choose_group_protocol",
    "resolve_group_protocol",
]

#: The API key of ConsumerGroupHeartbeat, KIP-848's one request.
CONSUMER_GROUP_HEARTBEAT: Final = 68
#: Its first generally available version (Kafka 4.0); version 0 was early access (3.7-3.9).
_KIP848_MIN_VERSION: Final = 1

#: "127.0.0.1:9092/1:   ApiKey ConsumerGroupHeartbeat (68) Versions 0..1": the broker's
#: address (librdkafka names its connections "<address>/<node id or bootstrap>") and one
#: API's key and version range.
_API_LINE: Final = re.compile(r"(\S+?)(?:/\w*)?:\s+ApiKey .*?\((\d+)\) Versions (\d+)\.\.(\d+)\s*$")


class _ApiVersionLog:
    """A confluent-kafka ``logger`` that keeps the API versions librdkafka lists per broker;
    its other lines (a refused connection) go to the log every client shares."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.brokers: dict[str, dict[int, tuple[int, int]]] = {}

    def log(self, level: int, msg: str, *args: object) -> None:
        text = msg % args if args else msg
        if level > logging.DEBUG:  # confluent-kafka hands over Python's logging levels
            LIBRDKAFKA_LOG.log(level, "%s", text)
            return
        match = _API_LINE.search(text)
        if match is None:
            return
        broker, key, low, high = match.groups()
        with self._lock:
            self.brokers.setdefault(broker, {})[int(key)] = (int(low), int(high))


def broker_api_versions(
    settings: Settings, timeout: float
) -> dict[str, dict[int, tuple[int, int]]]:
    """Each broker's API versions (key: (min, max)), as the brokers that answered within
    ``timeout`` list them; raises :class:`KafkaUnreachableError` when none did, and
    :class:`~dyno_stream.core.errors.KafkaAuthError` for a refused login or TLS handshake."""
    seen = _ApiVersionLog()
    auth = AuthWatch(settings.kafka)  # a refused login is said as such, not as "no answer"
    conf = {**settings.kafka.librdkafka(), **auth.config(), "debug": "feature", "logger": seen}
    admin = AdminClient(conf)
    deadline = time.monotonic() + timeout
    answered = False
    while True:
        remaining = deadline - time.monotonic()
        try:
            # a metadata answer comes after the connection's ApiVersions exchange, which
            # librdkafka logs as it handles it: the lines are queued by then
            # in 1 s slices: a refused login shows between two (see kafka.security)
            admin.list_topics(settings.topics.ops, timeout=max(0.05, min(1.0, remaining)))
            answered = True
        except KafkaException:
            pass
        admin.poll(0)  # serves the queued log lines to ``seen`` (and errors to ``auth``)
        auth.check()
        if seen.brokers or answered or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if not seen.brokers and answered:
        admin.poll(0.5)  # lines of a connection still being handled
    if seen.brokers:
        return seen.brokers
    if answered:
        raise ConfigError(
            "the broker answered but librdkafka listed no API versions to tell whether it "
            "offers KIP-848's group protocol: set worker.group_protocol to 'consumer' "
            "(Kafka 4.0+) or 'classic' (DYNO_WORKER__GROUP_PROTOCOL)"
        )
    why = LIBRDKAFKA_LOG.last_connect_failure or "no answer"
    raise KafkaUnreachableError(settings.kafka.bootstrap_servers, why.lower())


@dataclass(frozen=True)
class GroupProtocolChoice:
    """The protocol the worker runs, and why, said in one log line at start."""

    protocol: GroupProtocol
    reason: str


def choose_group_protocol(
    setting: str, brokers: dict[str, dict[int, tuple[int, int]]]
) -> GroupProtocolChoice:
    """What ``[worker] group_protocol = setting`` means with these brokers' API versions.

    KIP-848 is offered when every broker that answered lists ConsumerGroupHeartbeat at
    version 1 or later (a cluster in a rolling upgrade offers it once all brokers do).
    Raises :class:`ConfigError` for an explicit ``consumer`` that the brokers do not offer.
    """
    lacking = sorted(
        f"{name} lists ConsumerGroupHeartbeat up to v{apis[CONSUMER_GROUP_HEARTBEAT][1]}"
        if CONSUMER_GROUP_HEARTBEAT in apis
        else f"{name} does not list ConsumerGroupHeartbeat"
        for name, apis in brokers.items()
        if apis.get(CONSUMER_GROUP_HEARTBEAT, (0, -1))[1] < _KIP848_MIN_VERSION
    )
    offered = not lacking
    if setting == "classic":
        return GroupProtocolChoice("classic", "worker.group_protocol is 'classic'")
    if setting == "consumer":
        if not offered:
            raise ConfigError(
                "worker.group_protocol is 'consumer' (KIP-848) but the broker does not offer it "
                f"({', '.join(lacking)}; it needs Kafka 4.0+ with the consumer protocol "
                "enabled): set worker.group_protocol to 'auto' or 'classic' "
                "(DYNO_WORKER__GROUP_PROTOCOL)"
            )
        return GroupProtocolChoice("consumer", "worker.group_protocol is 'consumer'")
    if offered:
        return GroupProtocolChoice(
            "consumer",
            "worker.group_protocol is 'auto' and the broker offers KIP-848 "
            "(ConsumerGroupHeartbeat v1+)",
        )
    return GroupProtocolChoice(
        "classic",
        "worker.group_protocol is 'auto' and the broker does not offer KIP-848 "
        f"({', '.join(lacking)}): classic protocol, cooperative-sticky assignor",
    )


def check_group_error(err: KafkaError | None) -> None:
    """Raise :class:`ConfigError` if ``err`` (a consumer's poll) is the broker refusing
    KIP-848's heartbeat: a Kafka 4.x cluster lists ConsumerGroupHeartbeat even with the
    consumer protocol disabled (``group.coordinator.rebalance.protocols=classic``) and
    refuses the first heartbeat, a fatal error for librdkafka's consumer."""
    # a consumer's message carries the _FATAL code without the fatal flag set
    if err is None or not (err.fatal() or err.code() == KafkaError._FATAL):
        return
    text = err.str() or ""
    if "ConsumerGroupHeartbeat" in text:
        raise ConfigError(
            f"the broker refused KIP-848's group protocol ({text}): the cluster lists it but "
            "does not serve it (group.coordinator.rebalance.protocols without 'consumer'); set "
            "worker.group_protocol to 'classic' (DYNO_WORKER__GROUP_PROTOCOL)"
        )


def resolve_group_protocol(settings: Settings) -> GroupProtocolChoice:
    """Ask the broker (within ``[kafka] connect_timeout_s``) and choose the group protocol.

    ``classic`` needs no question. Raises :class:`ConfigError` for an explicit ``consumer``
    the broker does not offer, :class:`KafkaUnreachableError` when no broker answered.
    """
    setting = settings.worker.group_protocol
    if setting == "classic":
        return choose_group_protocol(setting, {})
    brokers = broker_api_versions(settings, settings.kafka.connect_timeout_s)
    return choose_group_protocol(setting, brokers)
