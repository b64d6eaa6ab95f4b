"""``dyno-stream doctor`` against a healthy deployment and a broken one, on the real broker:
a worker with its HTTP endpoint, its topics as ``dyno-stream topics`` makes them, ops and a
bad event; then topics made by hand the wrong way, a member advertising an address nobody
answers at, and an op from a producer whose clock runs a year fast."""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic
from conftest import free_port
from helpers import (
    YEAR_S,
    Produced,
    WorkerProcess,
    cli_env,
    flake_at,
    op_bytes,
    random_op,
    read_topic,
    run_cli,
    wait_caught_up,
    wait_until,
)

from dyno_stream.client import DynoClient, MaterializedView
from dyno_stream.config import Settings
from dyno_stream.core.flake import new_flake
from dyno_stream.kafka.partitioning import crc32_partition, kafka_partition
from dyno_stream.kafka.topics import ensure_topics


def _doctor(s: Settings, table: bool = True) -> tuple[int, dict[str, dict[str, Any]], str]:
    """Exit status, findings by check, and the table, of ``dyno-stream doctor``."""
    env = cli_env(s, COLUMNS="150")
    out = run_cli(env, "doctor", "--json")
    assert out.returncode in (0, 1), out.stderr
    findings = {f["check"]: f for f in json.loads(out.stdout)}
    if not table:
        return out.returncode, findings, ""
    shown = run_cli(env, "doctor")
    assert shown.returncode == out.returncode, shown.stdout + shown.stderr
    print(shown.stdout)
    return out.returncode, findings, shown.stdout


def _worker(s: Settings, name: str, tmp_path: Path, advertised: str | None = None) -> WorkerProcess:
    port = free_port()
    env = {"DYNO_WORKER__HTTP_PORT": str(port)}
    if advertised is not None:
        env["DYNO_WORKER__ADVERTISED_HTTP"] = advertised
    return WorkerProcess(s, name, tmp_path, env=env, default_group_timing=True)


def _misplaced(name: str, partitions: int) -> bool:
    key = name.encode()
    return crc32_partition(key, partitions) != kafka_partition(key, partitions)


def _member_joined(s: Settings) -> bool:
    admin = AdminClient(s.kafka.librdkafka())
    [fut] = admin.describe_consumer_groups([s.worker.group_id], request_timeout=10).values()
    return bool(fut.result().members)


def test_a_healthy_deployment_passes(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    s = make_settings(partitions=2)
    ensure_topics(s)
    worker = _worker(s, "healthy", tmp_path)
    view = MaterializedView(s).start()
    try:
        wait_until(lambda: len(worker.partitions()) == 2, 60, worker.tail)
        produced = Produced()
        rnd = random.Random(27)
        with DynoClient(s) as client:
            produced.send(client, (random_op(rnd, i, 50) for i in range(500)))
            client.flush(30)
        wait_caught_up(view, produced.reference(), 60, worker.tail())
        wait_until(lambda: _member_joined(s), 30, lambda: "the worker is not in the group")

        status, findings, table = _doctor(s)
        assert status == 0, table
        for check in (
            "broker",
            "group protocol",
            "topics",
            "partitions",
            "snapshot compaction",
            "ops timestamps",
            "lag and retention",
            "clock",
            "members",
            "dead letters",
            "disk",
        ):
            assert findings[check]["status"] == "pass", findings[check]
        # the local broker is one node: one replica is worth a warning, not a failure
        assert findings["replication"]["status"] == "warn"
        assert "min.insync.replicas" in findings["replication"]["fix"]
        assert "ConsumerGroupHeartbeat" in findings["broker"]["detail"]
        assert "lag 0 ops over 2 partitions" in findings["lag and retention"]["detail"]
        assert "reached 127.0.0.1:" in findings["members"]["detail"]
        assert "healthz 200" in findings["members"]["detail"]
        assert findings["placement"]["status"] == "pass", findings["placement"]

        # ops from confluent-kafka at its default partitioner (CRC32): forwarded, and said
        off_rule = [n for n in (f"crc-{i}" for i in range(20)) if _misplaced(n, 2)][:3]
        plain = Producer({"bootstrap.servers": s.kafka.bootstrap_servers})
        for name in off_rule:
            op = op_bytes(name, "putItem", new_flake(), {"v": 1})
            plain.produce(s.topics.ops, op, name.encode())
        assert plain.flush(30) == 0
        with DynoClient(s) as client:
            wait_until(lambda: all(client.get(n) is not None for n in off_rule), 60, worker.tail)
        status, findings, table = _doctor(s)
        assert status == 0, table  # a warning, not a failure
        assert findings["placement"]["status"] == "warn", findings["placement"]
        assert "placed by crc32 3" in findings["placement"]["detail"]
        assert "murmur2_random" in findings["placement"]["fix"]
    finally:
        view.close()
        worker.proc.send_signal(signal.SIGTERM)
        worker.wait_exit(60)


def test_a_broken_deployment_fails_naming_each_fault_and_its_fix(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    s = make_settings(partitions=2)
    t = s.topics
    admin = AdminClient(s.kafka.librdkafka())
    made = admin.create_topics(
        [
            NewTopic(t.ops, 2, 1, config={"message.timestamp.type": "LogAppendTime"}),
            NewTopic(t.snapshots, 2, 1, config={"cleanup.policy": "delete"}),
            NewTopic(t.dead_letter, 1, 1),
        ]
    )
    for fut in made.values():
        fut.result(30)
    # a member that advertises an address where nothing listens
    nowhere = f"127.0.0.1:{free_port()}"
    worker = _worker(s, "broken", tmp_path, advertised=nowhere)
    try:
        wait_until(lambda: len(worker.partitions()) == 2, 60, worker.tail)
        wait_until(lambda: _member_joined(s), 30, lambda: "the worker is not in the group")
        # a producer whose clock runs a year fast: its op is refused as clock-skew
        producer = Producer(s.kafka.librdkafka())
        ahead = flake_at(time.time() + YEAR_S)
        producer.produce(
            t.ops, op_bytes("skewed", "putAttrs", ahead, {"a": 1}), key=b"skewed", partition=0
        )
        producer.flush(30)
        wait_until(
            lambda: any(
                dict(r.headers).get("dyno.error.reason") == b"clock-skew"
                for r in read_topic(s, t.dead_letter, timeout=30)
            ),
            60,
            worker.tail,
        )

        status, findings, table = _doctor(s)
        assert status == 1, table
        assert findings["snapshot compaction"]["status"] == "fail"
        assert "cleanup.policy=delete" in findings["snapshot compaction"]["detail"]
        assert "cleanup.policy=compact" in findings["snapshot compaction"]["fix"]
        assert findings["members"]["status"] == "fail"
        assert f"not reachable from here: {nowhere}" in findings["members"]["detail"]
        assert "advertised_http" in findings["members"]["fix"]
        assert findings["dead letters"]["status"] == "warn"
        assert "clock-skew 1" in findings["dead letters"]["detail"]
        assert "days ahead" in findings["dead letters"]["detail"]
        assert "NTP" in findings["dead letters"]["fix"]
        # what is right is still said to be right
        assert findings["broker"]["status"] == "pass"
        assert findings["ops timestamps"]["status"] == "pass"
        assert findings["disk"]["status"] == "pass"
        assert findings["partitions"]["status"] == "pass"

        # the ops topic resized in place, with the workers stopped (they refuse to go on)
        worker.proc.send_signal(signal.SIGTERM)
        worker.wait_exit(60)
        [fut] = admin.create_partitions([NewPartitions(t.ops, 3)]).values()
        fut.result(30)
        status, findings, _ = _doctor(s, table=False)
        assert status == 1
        assert findings["partitions"]["status"] == "fail"
        assert f"{t.ops} has 3 partitions, {t.snapshots} 2" in findings["partitions"]["detail"]
        assert "dyno-stream repartition" in findings["partitions"]["fix"]
        assert findings["members"]["status"] == "warn"  # no worker left in the group
    finally:
        worker.cleanup()


def test_no_broker_is_one_failure_naming_the_address(tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(
        None,
        DYNO_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{port}",
        DYNO_KAFKA__CONNECT_TIMEOUT_S="3",
        DYNO_WORKER__DATA_DIR=str(tmp_path / "data"),
    )
    out = run_cli(env, "doctor", "--json")
    assert out.returncode == 1, out.stderr
    findings = {f["check"]: f for f in json.loads(out.stdout)}
    assert findings["broker"]["status"] == "fail"
    assert f"127.0.0.1:{port}" in findings["broker"]["detail"]
    assert set(findings) == {"broker", "disk"}


pytestmark = pytest.mark.kafka
