"""Which group protocol ``[worker] group_protocol`` means, given the brokers' API versions.

The versions are read from librdkafka's ``feature`` debug lines (``kafka.group_protocol``);
the lines below are as librdkafka 2.16 writes them for Kafka 3.9.1 and 4.1.2 brokers.
"""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError

from dyno_stream.core.errors import ConfigError
from dyno_stream.core.librdkafka_log import LIBRDKAFKA_LOG
from dyno_stream.kafka.group_protocol import (
    CONSUMER_GROUP_HEARTBEAT,
    _ApiVersionLog,
    check_group_error,
    choose_group_protocol,
)

KAFKA_3_9 = {"127.0.0.1:9092": {CONSUMER_GROUP_HEARTBEAT: (0, 0), 11: (0, 9)}}
KAFKA_4_1 = {"127.0.0.1:9092": {CONSUMER_GROUP_HEARTBEAT: (0, 1), 11: (0, 9)}}
#: a 4.x cluster with the consumer protocol disabled lists no ConsumerGroupHeartbeat
DISABLED = {"127.0.0.1:9092": {11: (0, 9)}}


def test_librdkafkas_api_version_lines_are_read_per_broker_address() -> None:
    seen = _ApiVersionLog()
    for line in (
        "127.0.0.1:29592/bootstrap: Broker API support:",
        "127.0.0.1:29592/bootstrap:   ApiKey JoinGroup (11) Versions 0..9",
        "127.0.0.1:29592/bootstrap:   ApiKey ConsumerGroupHeartbeat (68) Versions 0..0",
        "127.0.0.1:29592/1:   ApiKey ConsumerGroupHeartbeat (68) Versions 0..%d",
        "kafka-2.example:9093/2:   ApiKey Unknown-74? (74) Versions 0..0",
        "127.0.0.1:29592/1: Updated enabled protocol features +ApiVersion to ApiVersion",
    ):
        seen.log(logging.DEBUG, line, *((0,) if "%d" in line else ()))
    assert seen.brokers == {
        "127.0.0.1:29592": {11: (0, 9), 68: (0, 0)},
        "kafka-2.example:9093": {74: (0, 0)},
    }


def test_the_probes_other_librdkafka_lines_reach_the_shared_log() -> None:
    """A refused connection is logged as every client's is, and names the reason a worker
    gives for a broker that does not answer."""
    _ApiVersionLog().log(
        logging.ERROR,
        "FAIL [dyno-stream#producer-1] [thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: "
        "Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)",
    )
    assert LIBRDKAFKA_LOG.last_connect_failure == "Connection refused"


def test_auto_takes_kip_848_where_the_broker_offers_it() -> None:
    choice = choose_group_protocol("auto", KAFKA_4_1)
    assert choice.protocol == "consumer"
    assert "offers KIP-848" in choice.reason


@pytest.mark.parametrize(
    ("brokers", "why"),
    [
        (KAFKA_3_9, "127.0.0.1:9092 lists ConsumerGroupHeartbeat up to v0"),
        (DISABLED, "127.0.0.1:9092 does not list ConsumerGroupHeartbeat"),
        # a rolling upgrade: not until every broker offers it
        ({**KAFKA_4_1, "old:9092": KAFKA_3_9["127.0.0.1:9092"]}, "old:9092 lists"),
    ],
)
def test_auto_falls_back_to_classic_cooperative_sticky_and_says_why(
    brokers: dict[str, dict[int, tuple[int, int]]], why: str
) -> None:
    choice = choose_group_protocol("auto", brokers)
    assert choice.protocol == "classic"
    assert why in choice.reason
    assert "cooperative-sticky" in choice.reason


def test_an_explicit_consumer_protocol_the_broker_lacks_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError) as err:
        choose_group_protocol("consumer", KAFKA_3_9)
    assert "worker.group_protocol is 'consumer'" in str(err.value)
    assert "DYNO_WORKER__GROUP_PROTOCOL" in str(err.value)
    assert "\n" not in str(err.value)


def test_explicit_protocols_the_broker_serves_are_kept() -> None:
    assert choose_group_protocol("consumer", KAFKA_4_1).protocol == "consumer"
    assert choose_group_protocol("classic", KAFKA_4_1).protocol == "classic"
    assert choose_group_protocol("classic", KAFKA_3_9).protocol == "classic"


def test_a_refused_kip_848_heartbeat_stops_with_the_setting_named() -> None:
    """A 4.x cluster with the consumer protocol disabled lists ConsumerGroupHeartbeat but
    refuses it: librdkafka's fatal error (its text as 2.16 gives it) becomes a ConfigError."""
    text = (
        "Fatal error: Broker: API version not supported: ConsumerGroupHeartbeat fatal error: "
        "Broker: API version not supported"
    )
    # as poll() hands it over: the _FATAL code, the fatal flag unset
    for fatal in (KafkaError(KafkaError._FATAL, text), KafkaError(-150, text, fatal=True)):
        with pytest.raises(ConfigError, match=r"set worker\.group_protocol to 'classic'"):
            check_group_error(fatal)
    check_group_error(None)
    check_group_error(KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))
    check_group_error(KafkaError(KafkaError._FATAL, "Fatal error: producer fenced", fatal=True))
