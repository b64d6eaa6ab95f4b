"""Scale: 100,000 ops over 4 partitions, two workers in one group, one stopped midway.

The surviving worker takes over the stopped worker's partitions with an empty store for them
(each worker has its own data dir), so it replays those partitions from their beginning. At
the end every item's last snapshot must equal the reference model's replay of the ops produced
for it (bench/reference.py).
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from helpers import Reference, running_partitions

from dyno_stream.client import DynoClient, Receipt
from dyno_stream.config import Settings
from dyno_stream.core.events import OpModel, make_op
from dyno_stream.core.flake import new_flake
from dyno_stream.store import DynoStore

N_OPS = 100_000
N_ITEMS = 1_000
PARTITIONS = 4
CATCH_UP_S = 150.0

SET_VALUES: list[Any] = ["red", "green", "blue", 1, True]
FIELDS = ["a", "b", "n", "s", "tags"]


def random_op(rnd: random.Random, i: int) -> tuple[str, str, Any]:
    name = f"item-{rnd.randrange(N_ITEMS):04d}"
    r = rnd.random()
    if r < 0.25:
        return name, "putAttrs", {"a": i, "b": f"v{rnd.randrange(100)}"}
    if r < 0.50:
        return name, "incAttrBy", {"field": "n", "by": rnd.randrange(-5, 11)}
    if r < 0.70:
        return name, "append", {"field": "s", "str": rnd.choice("xyz")}
    if r < 0.90:
        return name, "addToSet", {"field": "tags", "value": rnd.choice(SET_VALUES)}
    return name, "delAttrs", rnd.sample(FIELDS, rnd.randrange(1, 3))


def test_100k_ops_two_workers_one_stopped_midway(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    s_a = make_settings(partitions=PARTITIONS)
    s_b = s_a.model_copy(
        update={"worker": s_a.worker.model_copy(update={"data_dir": tmp_path / "data-b"})}
    )
    assert s_a.worker.group_id == s_b.worker.group_id
    assert s_a.worker.data_dir != s_b.worker.data_dir

    wa = start_worker(s_a)
    wb = start_worker(s_b)
    deadline = time.monotonic() + 60
    while not (
        running_partitions(wa.worker)
        and running_partitions(wb.worker)
        and len(running_partitions(wa.worker)) + len(running_partitions(wb.worker)) == PARTITIONS
    ):
        if time.monotonic() > deadline:
            pytest.fail(
                f"the two workers did not share the {PARTITIONS} partitions within 60s: "
                f"{wa.worker.health.partitions} / {wb.worker.health.partitions}"
            )
        assert wa.thread.is_alive() and wb.thread.is_alive()
        time.sleep(0.1)

    # produce on a thread; stop worker A once half the ops are produced
    rnd = random.Random(20240601)
    models: list[OpModel] = []
    futures: list[Future[Receipt]] = []
    produced = 0
    failure: list[BaseException] = []

    def produce() -> None:
        nonlocal produced
        try:
            with DynoClient(s_a) as client:
                for i in range(N_OPS):
                    name, op, change = random_op(rnd, i)
                    model = make_op(op, name, change, new_flake())
                    models.append(model)
                    futures.append(client.send(model))
                    produced = i + 1
        except BaseException as exc:
            failure.append(exc)

    producer = threading.Thread(target=produce, name="test-producer", daemon=True)
    producer.start()
    while produced < N_OPS // 2 and producer.is_alive():
        time.sleep(0.01)
    assert not failure, failure
    half_at = time.monotonic() - started
    wa.stop()
    a_stopped_at = time.monotonic() - started
    producer.join(120)
    assert not producer.is_alive(), "producing 100k ops took over 2 minutes"
    assert not failure, failure
    produced_at = time.monotonic() - started
    deliveries = [f.result(0) for f in futures]
    assert len(deliveries) == N_OPS
    assert all(d.ts == m.ts for d, m in zip(deliveries, models, strict=True))

    # the reference: each item's ops in flake order (one generator: production order)
    assert all(a.ts < b.ts for a, b in itertools.pairwise(models))
    ref = Reference()
    for m in models:
        ref.add(m)
    assert len(ref.changes) == N_ITEMS
    # one item's ops all on one partition
    part_of: dict[str, int] = {}
    for d in deliveries:
        assert part_of.setdefault(d.item, d.partition) == d.partition, d

    # wait until worker B has every partition and every item's snapshot is caught up
    consumer = Consumer(
        {
            **s_a.kafka.librdkafka(),
            "group.id": f"test-scale-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign(
        [TopicPartition(s_a.topics.snapshots, p, OFFSET_BEGINNING) for p in range(PARTITIONS)]
    )
    last: dict[str, dict[str, Any]] = {}
    n_snapshots = 0
    deadline = time.monotonic() + CATCH_UP_S

    def behind() -> list[str]:
        return [n for n, c in ref.changes.items() if n not in last or last[n]["changes"] != c]

    try:
        lagging = behind()
        while lagging:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{len(lagging)} items not caught up within {CATCH_UP_S:.0f}s after "
                    f"producing; e.g. {lagging[:3]}: "
                    f"{[(last.get(n, {}).get('changes'), ref.changes[n]) for n in lagging[:3]]}; "
                    f"worker B partitions {wb.worker.health.partitions}, alive "
                    f"{wb.thread.is_alive()}, error {wb.error!r}"
                )
            for msg in consumer.consume(10_000, 0.5):
                err = msg.error()
                if err is not None:
                    assert err.code() == KafkaError._PARTITION_EOF, err
                    continue
                snap = json.loads(msg.value())
                assert msg.key() == snap["item"].encode()
                last[snap["item"]] = snap
                n_snapshots += 1
            lagging = behind() if len(last) == N_ITEMS else list(ref.changes)
        caught_up_at = time.monotonic() - started
        # anything published after that point would be a stale or duplicate snapshot
        for msg in consumer.consume(10_000, 1.0):
            if msg.error() is None:
                snap = json.loads(msg.value())
                last[snap["item"]] = snap
                n_snapshots += 1
    finally:
        consumer.close()

    assert wb.thread.is_alive(), f"worker B died: {wb.error!r}"
    assert running_partitions(wb.worker) == sorted(
        f"{s_a.topics.ops}/{p}" for p in range(PARTITIONS)
    )

    # values, change counts and hashes against the reference model
    mismatches = []
    for name, changes in ref.changes.items():
        snap = last[name]
        want = (ref.value(name), changes, ref.hashes[name], part_of[name])
        got = (snap["value"], snap["changes"], snap["hash"], snap["source"]["partition"])
        if got != want:
            mismatches.append((name, got, want))
    assert not mismatches, f"{len(mismatches)} items differ, e.g. {mismatches[:2]}"

    wb.stop()
    total = time.monotonic() - started
    ma, mb = wa.worker.metrics, wb.worker.metrics
    for m in (ma, mb):
        assert (
            sum(
                s.value
                for c in m.dead_lettered.collect()
                for s in c.samples
                if s.name.endswith("_total")
            )
            == 0
        )
    applied_a = sum(
        s.value for c in ma.ops_applied.collect() for s in c.samples if s.name.endswith("_total")
    )
    applied_b = sum(
        s.value for c in mb.ops_applied.collect() for s in c.samples if s.name.endswith("_total")
    )
    # B kept its own partitions (and their offsets) throughout and restored A's partitions
    # into empty stores from A's snapshots, replaying only the ops after them: between them
    # every op was applied (the exact changes above show none twice), and B applied fewer
    # than all, because A's published work was not redone
    assert applied_a > 0, "worker A applied nothing before it was stopped"
    assert applied_a + applied_b >= N_OPS
    restored = sum(
        s.value for c in mb.restored_items.collect() for s in c.samples if s.name.endswith("_total")
    )
    assert restored > 0, "worker B took A's partitions without restoring them"
    assert applied_b < N_OPS

    # worker B's stores hold every item exactly once, as the reference says
    seen = 0
    for p in range(PARTITIONS):
        with DynoStore(s_b.worker.data_dir / s_b.topics.ops / f"{p:04d}") as store:
            for name, item in store.scan(lambda _n, _i: True):
                assert part_of[name] == p, name
                assert (item.value, item.changes) == (ref.values[name], ref.changes[name]), name
                seen += 1
    assert seen == sum(1 for v in ref.values.values() if v)

    print(
        f"\nscale: half produced at {half_at:.1f}s, A stopped at {a_stopped_at:.1f}s, "
        f"all produced at {produced_at:.1f}s, caught up at {caught_up_at:.1f}s, "
        f"total {total:.1f}s; {n_snapshots} snapshots; A applied {applied_a:.0f}, "
        f"B applied {applied_b:.0f}"
    )
