"""The placement rule: an item's ops live in one store, whatever partitioner sent them.

kcat and confluent-kafka at their defaults place a key by CRC32 (``consistent_random``);
``DynoClient`` and Java by murmur2. Ops from all three, mixed on the same items of a
4-partition topic: every item is read back whole by ``get`` and ``ls``, erased by ``erase
--wait``, and its rows sit in exactly one store, its rule partition's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from conftest import RunningWorker, free_port
from helpers import cli_env, counter_total, read_topic, run_cli, store_items, wait_until

from dyno_stream.client import DynoClient
from dyno_stream.config import Settings
from dyno_stream.kafka.partitioning import crc32_partition, kafka_partition

PARTITIONS = 4
ITEMS = [f"pl-{i:03d}" for i in range(40)]
WAIT_S = 60.0


class Flakes:
    """Flake ids made by hand, as a service without dyno-stream makes them, in order."""

    def __init__(self) -> None:
        self.ms, self.counter = int(time.time() * 1000), 0

    def __call__(self) -> str:
        self.counter += 1
        return f"{self.ms:012x}-{self.counter:04x}-{os.getpid() & 0xFFFF:04x}-00000c0ffee0"


def kcat_at_its_default(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    """``kcat -P -K '|'``: no partitioner setting, so librdkafka's ``consistent_random``."""
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.fail("kcat is not installed: run `make debs` (it installs Debian's kcat package)")
    lines = "".join(f"{e['item']}|{json.dumps(e)}\n" for e in events)
    proc = subprocess.run(
        [kcat, "-b", bootstrap, "-P", "-t", topic, "-K", "|"],
        input=lines.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"kcat -P failed: {proc.stderr.decode()}"


def confluent_kafka_at_its_default(
    bootstrap: str, topic: str, events: list[dict[str, Any]]
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for e in events:
        producer.produce(topic, json.dumps(e).encode(), e["item"].encode())
    assert producer.flush(30) == 0


def produce_mixed(s: Settings, bootstrap: str) -> int:
    """Each item: a putItem and two incAttrBy from kcat, one from confluent-kafka, one and an
    append from ``DynoClient``, in that (flake) order. Returns how many messages the
    librdkafka clients put off the rule partition."""
    flake = Flakes()
    by_kcat = [
        e
        for name in ITEMS
        for e in (
            {"item": name, "op": "putItem", "ts": flake(), "change": {"n": 0}},
            {"item": name, "op": "incAttrBy", "ts": flake(), "change": {"field": "n", "by": 1}},
            {"item": name, "op": "incAttrBy", "ts": flake(), "change": {"field": "n", "by": 2}},
        )
    ]
    kcat_at_its_default(bootstrap, s.topics.ops, by_kcat)
    by_confluent = [
        {"item": name, "op": "incAttrBy", "ts": flake(), "change": {"field": "n", "by": 10}}
        for name in ITEMS
    ]
    confluent_kafka_at_its_default(bootstrap, s.topics.ops, by_confluent)
    time.sleep(0.002)  # the client's flakes come after the hand-made ones
    with DynoClient(s) as client:
        futures = [f for name in ITEMS for f in (client.inc_attr_by(name, "n", 100),)]
        futures += [client.append(name, "log", "d") for name in ITEMS]
        for f in futures:
            f.result(30)
    rule = s.kafka.partitioner
    place = kafka_partition if rule == "murmur2" else crc32_partition
    return sum(
        crc32_partition(e["item"].encode(), PARTITIONS) != place(e["item"].encode(), PARTITIONS)
        for e in by_kcat + by_confluent
    )


def stores_holding(data_dir: Path, topic: str, name: str) -> list[int]:
    return [
        p
        for p in range(PARTITIONS)
        if (data_dir / topic / f"{p:04d}").exists()
        and name in store_items(data_dir / topic / f"{p:04d}")
    ]


@pytest.mark.parametrize("rule", ["murmur2", "crc32"])
def test_ops_from_any_partitioner_make_one_item_in_its_rule_partitions_store(
    rule: str,
    make_settings: Callable[..., Settings],
    kafka_bootstrap: str,
    start_worker: Callable[[Settings], RunningWorker],
) -> None:
    port = free_port()
    s = make_settings(partitions=PARTITIONS, http_port=port)
    s = s.model_copy(update={"kafka": s.kafka.model_copy(update={"partitioner": rule})})
    crc32_off_murmur2 = [
        n
        for n in ITEMS
        if crc32_partition(n.encode(), PARTITIONS) != kafka_partition(n.encode(), PARTITIONS)
    ]
    assert len(crc32_off_murmur2) > len(ITEMS) // 2, "the two rules agree too often to test"
    worker = start_worker(s)
    misplaced = produce_mixed(s, kafka_bootstrap)
    assert misplaced == (len(crc32_off_murmur2) * 4 if rule == "murmur2" else 0)

    want = {"n": 113, "log": "d"}
    with DynoClient(s) as client:
        wait_until(
            lambda: all((client.get(n) or {}).get("value") == want for n in ITEMS),
            WAIT_S,
            lambda: f"not every item whole: { {n: client.get(n) for n in ITEMS[:5]} }",
        )
    erased = None
    if rule == "murmur2":  # the CLI as a user runs it (each command a process: once)
        env = cli_env(s, DYNO_WORKER__HTTP_PORT=str(port))
        # get, for items both librdkafka clients put elsewhere; ls
        for name in crc32_off_murmur2[:2]:
            got = run_cli(env, "get", name)
            assert got.returncode == 0, got.stderr
            assert json.loads(got.stdout)["value"] == want
        listed = run_cli(env, "ls", "--prefix", "pl-")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split() == ITEMS
        # erase --wait confirms for such an item: its value is gone from the snapshot topic
        erased = crc32_off_murmur2[0]
        done = run_cli(env, "erase", erased, "--wait", "--timeout", "60")
        assert done.returncode == 0, done.stdout + done.stderr
        newest = [r for r in read_topic(s, s.topics.snapshots) if r.key == erased.encode()][-1]
        assert newest.value is None, newest

    assert counter_total(worker.worker.metrics.forwarded) == misplaced
    assert counter_total(worker.worker.metrics.dead_lettered) == 0
    worker.stop()
    assert read_topic(s, s.topics.dead_letter) == []
    # never split: each item's rows in one store, its rule partition's
    place = kafka_partition if rule == "murmur2" else crc32_partition
    for name in ITEMS:
        home = place(name.encode(), PARTITIONS)
        held = stores_holding(s.worker.data_dir, s.topics.ops, name)
        assert held == ([] if name == erased else [home]), name
