"""The worker on a Kafka 3.x broker (3.9.1), with default settings, beside the suite's 4.x one.

Kafka 3.9 lists only KIP-848's early-access ConsumerGroupHeartbeat v0, so the default
``group_protocol = "auto"`` must choose the classic protocol (cooperative-sticky) and say so;
an explicit ``consumer`` must stop the worker with one line naming the setting. A smoke set,
kept short: a worker, ops, snapshots, a routed ``get`` and ``ls``, an online compaction, and
a rebalance onto a second worker, everything applied exactly once.

The module starts its own 3.9 broker (the jars are fetched on first use, like the default
version's; ``make jars`` fetches both).
"""

from __future__ import annotations

import gc
import io
import json
import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    Produced,
    WorkerProcess,
    assignment,
    cli_env,
    random_op,
    run_cli,
    wait_caught_up,
    wait_until,
)
from rich.console import Console

from dyno_stream.client import DynoClient, MaterializedView
from dyno_stream.config import CompactionSettings, Settings, load_settings
from dyno_stream.devtools.broker import LocalBroker, free_port_pair
from dyno_stream.jobs.compaction import compact_online
from dyno_stream.kafka.topics import ensure_topics

pytestmark = pytest.mark.kafka

#: The 3.x release this set runs against (``make jars`` fetches it).
KAFKA_3 = os.environ.get("DYNO_TEST_KAFKA_3_VERSION", "3.9.1")
PARTITIONS = 4
ITEMS = 60
OPS = 600


@pytest.fixture(scope="module")
def kafka3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Kafka 3.x broker of this module's own, on free ports."""
    broker = LocalBroker(
        home=tmp_path_factory.mktemp("kafka-3"), port=free_port_pair(), kafka_version=KAFKA_3
    )
    bootstrap = broker.start(timeout=180)
    try:
        yield bootstrap
    finally:
        gc.collect()  # the tests' idle clients first: no reconnect noise after
        broker.stop()


@pytest.fixture
def s3(kafka3: str, tmp_path: Path) -> Settings:
    """Default settings but for the broker, this test's topics and group, and HTTP off."""
    tag = uuid.uuid4().hex[:8]
    return load_settings(
        kafka={"bootstrap_servers": kafka3},
        topics={
            "ops": f"k3-{tag}.ops",
            "snapshots": f"k3-{tag}.snapshots",
            "dead_letter": f"k3-{tag}.dead-letter",
            "partitions": PARTITIONS,
        },
        worker={"group_id": f"g-{tag}", "data_dir": str(tmp_path / "data"), "http_port": 0},
    )


def _worker(s: Settings, name: str, tmp_path: Path, port: int) -> WorkerProcess:
    # default_group_timing: nothing set for the group, so "auto" is what decides
    return WorkerProcess(
        s,
        name,
        tmp_path,
        env={"DYNO_WORKER__HTTP_PORT": str(port)},
        default_group_timing=True,
    )


def _produce(client: DynoClient, produced: Produced, rnd: random.Random, n: int) -> None:
    start = len(produced.models)
    produced.send(client, (random_op(rnd, start + i, ITEMS, "k3") for i in range(n)))
    client.flush()


def test_default_settings_on_kafka_3_apply_every_op_read_compact_and_rebalance(
    s3: Settings, tmp_path: Path
) -> None:
    s = s3
    ensure_topics(s)
    port_a, port_b = free_port_pair(), free_port_pair()
    a = _worker(s, "a", tmp_path, port_a)
    workers = [a]
    try:
        wait_until(
            lambda: len(a.partitions()) == PARTITIONS,
            90,
            lambda: f"the worker took no partitions: {assignment(workers)}{a.tail()}",
        )
        chosen = [ln for ln in a.text().splitlines() if "group protocol" in ln]
        assert len(chosen) == 1, a.tail()
        assert "group protocol classic" in chosen[0]
        assert "does not offer KIP-848" in chosen[0]
        assert "ConsumerGroupHeartbeat up to v0" in chosen[0]

        rnd = random.Random(27)
        produced = Produced()
        with_port = s.model_copy(
            update={"worker": s.worker.model_copy(update={"http_port": port_a})}
        )
        with DynoClient(with_port) as client, MaterializedView(s) as view:
            _produce(client, produced, rnd, OPS)
            wait_caught_up(view, produced.reference(), 60, a.tail())

            # a second worker: the group rebalances (cooperative-sticky) and both hold some
            b = _worker(s, "b", tmp_path, port_b)
            workers.append(b)
            wait_until(
                lambda: (
                    a.partitions().isdisjoint(b.partitions())
                    and len(a.partitions() | b.partitions()) == PARTITIONS
                    and bool(a.partitions())
                    and bool(b.partitions())
                ),
                90,
                lambda: f"no rebalance onto the second worker: {assignment(workers)}{b.tail()}",
            )
            _produce(client, produced, rnd, OPS)
            ref = produced.reference()
            wait_caught_up(view, ref, 60, a.tail() + b.tail())  # fails at once on a double

            # routed reads: every item through the first worker's address, owned by either
            for name in ref.changes:
                item = client.get(name, timeout=30)
                assert item is not None and item["value"] == ref.value(name), (name, item)
            env = cli_env(s, DYNO_WORKER__HTTP_PORT=str(port_b))
            name = sorted(ref.changes)[0]
            got = run_cli(env, "get", name)
            assert got.returncode == 0, got.stderr
            assert json.loads(got.stdout)["value"] == ref.value(name)
            listed = run_cli(env, "ls", "--prefix", "k3-")
            assert listed.returncode == 0, listed.stderr
            names = listed.stdout.split()
            assert names == sorted(set(names)), "ls lists in name order, each once"
            assert {n for n in ref.changes if ref.value(n)} <= set(names) <= set(ref.changes)

            # an online compaction: both workers fold their items' histories, values unchanged
            policy = CompactionSettings(min_rows=5, lateness_s=0, wait_s=60)
            summary = compact_online(s, policy, Console(file=io.StringIO()))
            assert summary.chosen > 0 and summary.flattened == summary.chosen, summary
            assert summary.unconfirmed == 0 and summary.refused == 0, summary
            for name in ref.changes:
                item = client.get(name, timeout=30)
                assert item is not None and item["value"] == ref.value(name), (name, item)
        for w in workers:
            w.proc.terminate()
            assert w.wait_exit(60) == 0, w.tail()
    finally:
        for w in workers:
            w.cleanup()


def test_an_explicit_consumer_protocol_on_kafka_3_stops_the_worker_naming_the_setting(
    s3: Settings,
) -> None:
    env = cli_env(s3, DYNO_WORKER__GROUP_PROTOCOL="consumer")
    # the deadline: the broker answers at once, so the connect timeout bounds the refusal
    res = run_cli(env, "worker", timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    output = (res.stdout + res.stderr).splitlines()
    said = [ln for ln in output if "worker.group_protocol is 'consumer'" in ln]
    assert len(said) == 1, output
    assert "does not offer it" in said[0] and "DYNO_WORKER__GROUP_PROTOCOL" in said[0]
    assert "Traceback" not in res.stderr


def test_the_doctor_on_kafka_3_says_which_protocol_the_workers_will_run(s3: Settings) -> None:
    """Kafka 3.9 lists ConsumerGroupHeartbeat at v0 only (early access, which librdkafka does
    not speak): "auto" runs the classic protocol, an explicit "consumer" would apply nothing."""
    ensure_topics(s3)
    env = cli_env(s3)
    auto = run_cli(env, "doctor", "--json", timeout=120)
    assert auto.returncode in (0, 1), auto.stdout + auto.stderr
    found = {f["check"]: f for f in json.loads(auto.stdout)}
    assert found["group protocol"]["status"] == "pass", found["group protocol"]
    assert found["group protocol"]["detail"].startswith("classic:"), found["group protocol"]
    assert "ConsumerGroupHeartbeat v0-v0" in found["broker"]["detail"], found["broker"]
    consumer = run_cli(cli_env(s3, DYNO_WORKER__GROUP_PROTOCOL="consumer"), "doctor", "--json")
    assert consumer.returncode == 1, consumer.stdout + consumer.stderr
    found = {f["check"]: f for f in json.loads(consumer.stdout)}
    assert found["group protocol"]["status"] == "fail", found["group protocol"]


def test_the_cli_fetches_a_3x_release_into_a_cache_dir_of_its_own(kafka3: str) -> None:
    """``broker fetch --kafka-version`` (the module's broker fetched the jars already)."""
    res = run_cli(cli_env(), "broker", "fetch", "--kafka-version", KAFKA_3)
    assert res.returncode == 0, res.stderr
    libs = Path(res.stdout.strip())
    assert libs.parent.name == f"kafka-{KAFKA_3}"
    assert (libs / f"kafka_2.13-{KAFKA_3}.jar").is_file()
    assert list(libs.glob("slf4j-reload4j-*.jar")), (
        "no logging binding: the broker would log nothing"
    )
