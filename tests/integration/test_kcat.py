"""Interop: a service with a plain Kafka client (Debian's kcat) and no dyno-stream code.

kcat produces op events (hand-written JSON, hand-made flakes, key = item name, Java's
partitioner) to the same items a ``DynoClient`` writes to, and reads the worker's snapshots
back as JSON. If kcat placed an item on another partition than the client does, the item's
ops would land in two stores and no snapshot would hold all of them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from dyno_stream.client import DynoClient
from dyno_stream.config import Settings

WAIT_S = 60.0
ITEMS = ["kc-alpha", "kc-beta", "kc-gamma", "kc-delta", "kc-épsilon", "kc/zeta"]


def kcat() -> str:
    path = shutil.which("kcat")
    if path is None:
        pytest.fail("kcat is not installed: run `make debs` (it installs Debian's kcat package)")
    return path


class Flakes:
    """Flake ids made by hand, as a service without dyno-stream would make them."""

    def __init__(self, after: str | None = None) -> None:
        ms = int(time.time() * 1000)
        if after is not None:
            ms = max(ms, int(after[:12], 16) + 1)
        self.ms, self.counter = ms, 0

    def __call__(self) -> str:
        self.counter += 1
        return f"{self.ms:012x}-{self.counter:04x}-{os.getpid() & 0xFFFF:04x}-00000c0ffee0"


def kcat_produce(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    lines = "".join(f"{e['item']}|{json.dumps(e, ensure_ascii=False)}\n" for e in events)
    assert all("|" not in e["item"] for e in events)
    proc = subprocess.run(
        [
            kcat(),
            "-b",
            bootstrap,
            "-P",
            "-t",
            topic,
            "-K",
            "|",
            "-X",
            "partitioner=murmur2_random",
            "-X",
            "enable.idempotence=true",
        ],
        input=lines.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"kcat -P failed: {proc.stderr.decode()}"


def kcat_read(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every message of the topic, as kcat's JSON envelopes, in per-partition order."""
    proc = subprocess.run(
        [kcat(), "-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-J"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"kcat -C failed: {proc.stderr.decode()}"
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]


def test_kcat_producer_and_consumer_interoperate(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    kafka_bootstrap: str,
) -> None:
    kcat()
    s = make_settings(partitions=4)
    worker = start_worker(s)

    # 1. kcat: a putItem, an incAttrBy and an append per item
    flake = Flakes()
    first: list[dict[str, Any]] = []
    for name in ITEMS:
        first += [
            {"item": name, "op": "putItem", "ts": flake(), "change": {"src": "kcat", "n": 0}},
            {"item": name, "op": "incAttrBy", "ts": flake(), "change": {"field": "n", "by": 2}},
            {"item": name, "op": "append", "ts": flake(), "change": {"field": "log", "str": "k"}},
        ]
    kcat_produce(kafka_bootstrap, s.topics.ops, first)

    # 2. dyno-stream's client on the same items
    time.sleep(0.01)
    with DynoClient(s) as client:
        futures = []
        for name in ITEMS:
            futures += [client.inc_attr_by(name, "n", 3), client.append(name, "log", "d")]
        deliveries = [f.result(30) for f in futures]
    client_partition = {d.item: d.partition for d in deliveries}
    assert len(set(client_partition.values())) > 1, "all items on one partition: a weak test"

    # 3. kcat again, after the client's ops
    flake = Flakes(after=max(d.ts or "" for d in deliveries))
    second = [
        {"item": name, "op": "putAttrs", "ts": flake(), "change": {"last": "kcat", "ü": "ß"}}
        for name in ITEMS
    ]
    kcat_produce(kafka_bootstrap, s.topics.ops, second)

    # every op of an item is on the partition the client chose for it
    ops = kcat_read(kafka_bootstrap, s.topics.ops)
    assert len(ops) == len(first) + len(deliveries) + len(second)
    for env in ops:
        event = json.loads(env["payload"])
        assert env["key"] == event["item"]
        assert env["partition"] == client_partition[event["item"]], (
            f"kcat put {event['item']!r} on partition {env['partition']}, the client on "
            f"{client_partition[event['item']]}"
        )

    # 4. kcat reads the snapshots
    want = {"src": "kcat", "n": 5, "log": "kd", "last": "kcat", "ü": "ß"}
    deadline = time.monotonic() + WAIT_S
    while True:
        last: dict[str, dict[str, Any]] = {}
        for env in kcat_read(kafka_bootstrap, s.topics.snapshots):
            snap = json.loads(env["payload"])
            assert env["key"] == snap["item"]
            last[snap["item"]] = snap
        if all(name in last and last[name]["changes"] == 6 for name in ITEMS):
            break
        if time.monotonic() > deadline:
            pytest.fail(
                f"kcat did not read caught-up snapshots within {WAIT_S:.0f}s: "
                f"{ {n: (sn['changes'], sn['value']) for n, sn in last.items()} }; "
                f"worker alive {worker.thread.is_alive()}, error {worker.error!r}"
            )
        time.sleep(0.3)

    assert set(last) == set(ITEMS)
    for name in ITEMS:
        snap = last[name]
        assert snap["value"] == want, name
        assert snap["changes"] == 6 and snap["count"] == 6, name
        assert snap["timestamp"] == second[ITEMS.index(name)]["ts"], name
        assert snap["source"]["topic"] == s.topics.ops
        assert snap["source"]["partition"] == client_partition[name]
        assert len(snap["hash"]) == 32
    assert worker.thread.is_alive() and worker.error is None
    worker.stop()
    assert (
        sum(
            smp.value
            for c in worker.worker.metrics.dead_lettered.collect()
            for smp in c.samples
            if smp.name.endswith("_total")
        )
        == 0
    )


def test_kcat_reads_a_deleted_items_tombstone(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    kafka_bootstrap: str,
) -> None:
    """The tombstone as a plain Kafka client sees it: the item's key, a null value
    and the headers saying where it was deleted (kcat's JSON envelope; the producing page's example
    prints the same with -Z -f)."""
    kcat()
    s = make_settings(partitions=2)
    start_worker(s)
    with DynoClient(s) as client:
        client.put_attrs("kc-gone", {"secret": "x"}).result(30)
        deleted = client.del_item("kc-gone").result(30)
    deadline = time.monotonic() + WAIT_S
    while True:
        tombs = [
            env
            for env in kcat_read(kafka_bootstrap, s.topics.snapshots)
            if env["key"] == "kc-gone" and env["payload"] is None
        ]
        if tombs or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(tombs) == 1, tombs
    headers = tombs[0]["headers"]  # kcat -J: a flat list, name then value
    pairs = dict(zip(headers[::2], headers[1::2], strict=True))
    assert pairs["dyno.source.topic"] == s.topics.ops
    assert pairs["dyno.source.partition"] == str(deleted.partition)
    assert pairs["dyno.source.offset"] == str(deleted.offset)
    assert tombs[0]["partition"] == deleted.partition
    assert "secret" not in json.dumps(tombs[0])
