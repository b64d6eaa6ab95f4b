"""librdkafka's lines collapsed and mapped; Kafka's reachability as the worker tells it."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError

from dyno_stream.config import KafkaSettings, load_settings
from dyno_stream.core.librdkafka_log import LIBRDKAFKA_LOG, LibrdkafkaLog
from dyno_stream.kafka.connection import ConnectionWatch
from dyno_stream.stream.http import Health


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _refused(client: str, conn: str, after_ms: int) -> tuple[str, tuple[object, ...]]:
    """A line as confluent-kafka hands it to a ``logger``: a format and its arguments."""
    return "%s [%s] %s", (
        "FAIL",
        client,
        f"[thrd:{conn}]: {conn}: Connect to ipv4#127.0.0.1:1 failed: Connection refused "
        f"(after {after_ms}ms in state CONNECT)",
    )


def test_a_repeated_line_is_logged_once_then_counted_each_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    relay = LibrdkafkaLog(logging.getLogger("test.librdkafka"), every_s=30, clock=clock)
    with caplog.at_level(logging.DEBUG, "test.librdkafka"):
        # 20 a second for 29 s, from a producer's and a consumer's connections alike
        for i in range(580):
            client = "dyno#producer-1" if i % 2 else "dyno#consumer-2"
            conn = "127.0.0.1:1/bootstrap" if i % 3 else "GroupCoordinator: 127.0.0.1:1"
            fmt, args = _refused(client, conn, i % 7)
            relay.log(logging.ERROR, fmt, *args)
            clock.now += 0.05
        assert len(caplog.records) == 1
        clock.now += 2  # past the interval: the next one says how many there were
        fmt, args = _refused("dyno#producer-1", "127.0.0.1:1/1", 0)
        relay.log(logging.ERROR, fmt, *args)
    assert len(caplog.records) == 2
    assert "and 579 times more in 31 s" in caplog.records[1].getMessage()
    # librdkafka retries its errors itself: warnings, not errors
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]
    assert relay.last_connect_failure == "Connection refused"


def test_different_lines_are_each_logged_and_levels_below_warning_are_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay = LibrdkafkaLog(logging.getLogger("test.librdkafka2"), clock=Clock())
    with caplog.at_level(logging.DEBUG, "test.librdkafka2"):
        relay.log(logging.INFO, "%s [%s] %s", "FAIL", "c#consumer-1", "Disconnected")
        relay.log(logging.ERROR, "%s [%s] %s", "GETPID", "c#producer-1", "Failed to acquire PID")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "FAIL [c#consumer-1] Disconnected"),
        (logging.WARNING, "GETPID [c#producer-1] Failed to acquire PID"),
    ]


def test_every_client_config_sends_librdkafkas_log_through_python_logging() -> None:
    s = load_settings()
    assert s.kafka.librdkafka()["logger"] is LIBRDKAFKA_LOG
    assert "logger" not in s.kafka.redacted()  # not a setting worth a log line


class _Err:
    """What ``error_cb`` receives (KafkaError cannot be made with a message of our own)."""

    def __init__(self, code: int, text: str) -> None:
        self._code, self._text = code, text

    def code(self) -> int:
        return self._code

    def str(self) -> str:
        return self._text


def test_connection_watch_says_an_outage_once_every_interval_and_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    watch = ConnectionWatch(KafkaSettings(bootstrap_servers="b:9"), every_s=30, clock=clock)
    with caplog.at_level(logging.INFO, "dyno_stream.kafka.connection"):
        watch.error(_Err(KafkaError._TRANSPORT, "Connect to ipv4#b:9 failed: Connection refused"))  # type: ignore[arg-type]
        assert watch.connected  # one failed connection is not an outage
        for _ in range(50):  # librdkafka says it once per reconnect
            watch.error(_Err(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))  # type: ignore[arg-type]
        assert not watch.connected and watch.reason == "connection refused"
        for _ in range(65):  # the loop ticks every second for 65 s
            clock.now += 1
            watch.tick()
        watch.answered()
        watch.answered()
        assert watch.connected
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "Kafka at b:9 is unreachable (connection refused); retrying, nothing is lost meanwhile",
        "Kafka at b:9 still unreachable after 30 s (connection refused)",
        "Kafka at b:9 still unreachable after 60 s (connection refused)",
        "Kafka at b:9 answers again after 65 s",
    ]


def test_healthz_says_degraded_with_the_reason_and_still_answers_ok() -> None:
    health = Health(state="running")
    health.degraded = "Kafka at b:9 unreachable (connection refused)"
    ok, body = health.snapshot()
    assert ok  # restarting a worker does not bring Kafka back
    assert body["status"] == "degraded"
    assert body["reason"] == "Kafka at b:9 unreachable (connection refused)"
    health.degraded = None
    assert health.snapshot()[1]["status"] == "ok"


def test_client_fails_each_op_after_its_timeout_but_logs_the_outage_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from concurrent.futures import wait

    from helpers import free_port_pair

    from dyno_stream.client import DynoClient
    from dyno_stream.core.errors import PublishError

    s = load_settings(kafka={"bootstrap_servers": f"127.0.0.1:{free_port_pair()}"})
    with caplog.at_level(logging.INFO), DynoClient(s, **{"message.timeout.ms": 2000}) as client:
        futures = [client.put_attrs(f"item-{i}", {"i": i}) for i in range(50)]
        wait(futures, timeout=30)
        errors = [f.exception(0) for f in futures]
    assert all(isinstance(e, PublishError) for e in errors), errors
    outage = [r for r in caplog.records if r.name == "dyno_stream.kafka.connection"]
    assert [r.getMessage() for r in outage] == [
        f"Kafka at {s.kafka.bootstrap_servers} is unreachable (connection refused); "
        "retrying, nothing is lost meanwhile"
    ]
    librdkafka = [r for r in caplog.records if r.name == "dyno_stream.librdkafka"]
    assert len(librdkafka) <= 3, [r.getMessage() for r in librdkafka]
