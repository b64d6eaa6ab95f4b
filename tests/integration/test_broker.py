"""Tests of the local Kafka broker (dyno_stream.devtools.broker) that run it.

They run the real Apache Kafka broker with java (jars fetched once by Maven into the user
cache) on free loopback ports in a temporary home, so they never touch a broker a developer
has running. The error paths that need neither Java nor the network are in
``tests/unit/test_broker_offline.py``.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

# confluent_kafka.admin re-exports NewTopic without marking it public for type checkers (2.16);
# it is defined, and typed, in cimpl.
from confluent_kafka.cimpl import NewTopic
from helpers import cli_env, run_cli

from dyno_stream.core.errors import LocalBrokerError
from dyno_stream.devtools.broker import (
    KAFKA_VERSION,
    LocalBroker,
    bootstrap_reachable,
    ensure_jars,
    free_port_pair,
)
from dyno_stream.devtools.broker.jvm import find_java, new_cluster_id


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A LocalBroker in a temporary home on free ports, always stopped afterwards."""
    instance = LocalBroker(home=tmp_path / "broker", port=free_port_pair())
    try:
        yield instance
    finally:
        instance.stop(timeout=10)


# ---------------------------------------------------------------------------------------------
# The real broker
# ---------------------------------------------------------------------------------------------


@pytest.mark.kafka
def test_broker_lifecycle_and_roundtrip(broker: LocalBroker) -> None:
    assert not broker.is_running()
    assert broker.status().running is False

    bootstrap = broker.start(timeout=120)
    assert bootstrap == f"127.0.0.1:{broker.port}"

    status = broker.status()
    assert status.running and broker.is_running()
    assert status.pid is not None and status.pid > 0
    assert status.bootstrap == bootstrap
    assert status.home == broker.home
    assert bootstrap_reachable(bootstrap, timeout=5)

    # Idempotent: a second start (also from another instance, as a CLI would make) returns the
    # same address and leaves the same JVM running.
    assert broker.start() == bootstrap
    other = LocalBroker(home=broker.home, port=broker.port)
    assert other.start() == bootstrap
    assert broker.status().pid == status.pid == other.status().pid

    topic = f"test-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    futures[topic].result(timeout=30)

    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=b"k", value=b"hello dyno")
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        received = None
        while received is None and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            received = (msg.key(), msg.value())
    finally:
        consumer.close()
    assert received == (b"k", b"hello dyno")

    assert (broker.home / "logs" / "server.log").exists()

    assert broker.stop() is True
    assert not broker.is_running()
    assert not (broker.home / "broker.pid").exists()
    assert not bootstrap_reachable(bootstrap, timeout=2)
    assert broker.stop() is False
    assert broker.status().running is False


@pytest.mark.kafka
def test_jvm_dying_at_start_reports_its_log(broker: LocalBroker) -> None:
    broker.heap = "-Xmx1m"  # the JVM refuses to start with so small a heap
    with pytest.raises(LocalBrokerError, match="exited during start-up") as excinfo:
        broker.start(timeout=60)
    assert "heap" in str(excinfo.value).lower()
    assert not broker.is_running()
    assert not (broker.home / "broker.pid").exists()


@pytest.mark.kafka
def test_ensure_jars_is_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    libs = ensure_jars()
    assert (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file()
    assert any(libs.glob("log4j-slf4j-impl-*.jar"))
    before = {p.name: p.stat().st_mtime_ns for p in libs.iterdir()}
    # cached: a second call needs no Maven (a download without it raises) and leaves the jars
    monkeypatch.setenv("PATH", str(tmp_path))
    assert ensure_jars() == libs
    assert {p.name: p.stat().st_mtime_ns for p in libs.iterdir()} == before


@pytest.mark.kafka
def test_storage_formats_with_a_kept_id_that_starts_with_a_dash(tmp_path: Path) -> None:
    """A home whose ``cluster.id`` an older version drew with a leading dash still formats."""
    b = LocalBroker(home=tmp_path / "broker", port=free_port_pair())
    b.home.mkdir(parents=True)
    (b.home / "cluster.id").write_text("-" + new_cluster_id()[1:] + "\n", encoding="utf-8")
    b._write_config()
    b._format_storage(find_java(), ensure_jars(b.cache_dir))
    meta = (b.data_dir / "meta.properties").read_text(encoding="utf-8")
    assert "cluster.id=-" in meta


# ---------------------------------------------------------------------------------------------
# The CLI: dyno-stream broker start|stop|status
# ---------------------------------------------------------------------------------------------


@pytest.mark.kafka
def test_cli_broker_start_status_stop(tmp_path: Path) -> None:
    """The docs' ``dyno-stream broker start|stop|status``, as a user types them, in a home
    and on ports of the test's own (``DYNO_BROKER_HOME``, ``DYNO_BROKER_PORT``)."""
    home = (tmp_path / "home").resolve()
    port = free_port_pair()
    env = cli_env(DYNO_BROKER_HOME=str(home), DYNO_BROKER_PORT=str(port))
    bootstrap = f"127.0.0.1:{port}"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(env, "broker", *args, timeout=180)

    try:
        stopped = cli("status")
        assert stopped.returncode == 3, stopped.stderr  # scripts can test for "not running"
        assert stopped.stdout.split()[0] == "stopped" and f"home={home}" in stopped.stdout

        started = cli("start")
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip() == bootstrap
        assert f"starting Kafka {KAFKA_VERSION} broker in {home}" in started.stderr
        assert bootstrap_reachable(bootstrap, timeout=10)

        running = cli("status")
        assert running.returncode == 0, running.stderr
        fields = dict(f.split("=", 1) for f in running.stdout.split()[1:])
        assert running.stdout.split()[0] == "running"
        assert fields["bootstrap"] == bootstrap and fields["home"] == str(home)
        pid = int(fields["pid"])
        assert pid == LocalBroker(home=home, port=port).status().pid

        again = cli("start")  # idempotent: the same broker, not a second one
        assert again.returncode == 0 and again.stdout.strip() == bootstrap, again.stderr
        assert LocalBroker(home=home, port=port).status().pid == pid

        stop = cli("stop")
        assert stop.returncode == 0 and stop.stdout.strip() == "stopped", stop.stderr
        assert not bootstrap_reachable(bootstrap, timeout=2)
        assert cli("status").returncode == 3
        twice = cli("stop")
        assert twice.returncode == 0 and twice.stdout.strip() == "not running", twice.stderr
    finally:
        LocalBroker(home=home, port=port).stop(timeout=10)
