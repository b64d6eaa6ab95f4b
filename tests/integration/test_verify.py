"""``dyno-stream verify`` on two real clusters (the session's broker and a second one): fed
the same ops in different orders, with duplicates, they agree; an item on one side only is
named; ``--deep`` finds a row changed inside a store."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import plyvel
from confluent_kafka import Producer
from conftest import RunningWorker
from helpers import cli_env, op_bytes, run_cli, wait_until

from dyno_stream.config import Settings, producer_config
from dyno_stream.core.flake import FlakeGenerator
from dyno_stream.devtools.broker import LocalBroker
from dyno_stream.jobs.verify import read_summaries

ITEMS = 40
OPS = 5


def _ops() -> list[tuple[str, bytes]]:
    gen = FlakeGenerator(node=9, pid=9)
    out = []
    for i in range(ITEMS):
        name = f"v-{i:03d}"
        out.append((name, op_bytes(name, "putItem", gen(), {"n": 0})))
        out += [
            (name, op_bytes(name, "incAttrBy", gen(), {"field": "n", "by": k}))
            for k in range(1, OPS)
        ]
    return out


def _produce(s: Settings, ops: list[tuple[str, bytes]]) -> None:
    producer = Producer(producer_config(s))
    for name, value in ops:
        producer.produce(s.topics.ops, value, name.encode())
    assert producer.flush(30) == 0


def _caught_up(s: Settings, changes: int) -> Callable[[], bool]:
    def done() -> bool:
        got = read_summaries(s, s.topics.snapshots)
        return len(got) == ITEMS and all(c == changes for c, _h, _d in got.values())

    return done


def test_two_clusters_fed_alike_agree_and_differences_are_named(
    make_settings: Callable[..., Settings],
    own_broker: LocalBroker,
    start_worker: Callable[[Settings], RunningWorker],
) -> None:
    a = make_settings(partitions=2)
    b = a.model_copy(
        update={
            "kafka": a.kafka.model_copy(update={"bootstrap_servers": own_broker.bootstrap}),
            "worker": a.worker.model_copy(update={"data_dir": a.worker.data_dir.parent / "b"}),
        }
    )
    worker_a = start_worker(a)
    start_worker(b)
    ops = _ops()
    shuffled = ops + random.Random(7).sample(ops, 30)  # the same ops, and duplicates
    random.Random(8).shuffle(shuffled)
    _produce(a, ops)
    _produce(b, shuffled)
    for s in (a, b):
        wait_until(_caught_up(s, OPS), 90, lambda: "a cluster did not apply every op")

    env = cli_env(a)
    same = run_cli(env, "verify", "--against", own_broker.bootstrap)
    assert same.returncode == 0, same.stdout + same.stderr
    assert f"{ITEMS} items compared" in same.stdout and "0 differ" in same.stdout, same.stdout

    _produce(a, [("only-in-a", op_bytes("only-in-a", "putItem", FlakeGenerator()(), {"x": 1}))])
    wait_until(
        lambda: "only-in-a" in read_summaries(a, a.topics.snapshots), 60, lambda: "not applied"
    )
    differ = run_cli(env, "verify", "--against", own_broker.bootstrap)
    assert differ.returncode == 1, differ.stdout + differ.stderr
    assert "only-in-a" in differ.stdout and "missing" in differ.stdout, differ.stdout

    # a row's value changed inside a store: the hashes still agree, --deep replays and finds it
    worker_a.stop()
    changed = _change_a_row(a.worker.data_dir / a.topics.ops, "v-007")
    deep = run_cli(env, "verify", "--deep")
    assert deep.returncode == 1, deep.stdout + deep.stderr
    assert "'v-007'" in deep.stdout and "changed row" in deep.stdout, deep.stdout
    assert changed


def _change_a_row(root: Path, name: str) -> bool:
    for path in sorted(root.iterdir()):
        db = plyvel.DB(str(path))
        try:
            for key, value in db.iterator(prefix=f"{name}/".encode()):
                if key.endswith(b"/putItem"):
                    db.put(key, value.replace(b'"n":0', b'"n":100'))
                    return True
        finally:
            db.close()
    return False
