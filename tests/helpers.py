"""Helpers the test modules share.

Running the ``dyno-stream`` command line as a user would; the reference model
(bench/reference.py) fed the ops the tests produce; waiting on and reading the snapshot
topic; and worker processes (``python -m dyno_stream worker``) that a test can kill and start again.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import reference
from confluent_kafka import TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from dyno_stream.cli.demo import settings_env
from dyno_stream.client import DynoClient, MaterializedView, Receipt
from dyno_stream.config import Settings
from dyno_stream.core.events import OpModel, make_op
from dyno_stream.core.flake import format_flake, new_flake
from dyno_stream.core.keys import split_key
from dyno_stream.core.ops import HISTORY
from dyno_stream.devtools.broker import GROUP_TIMING
from dyno_stream.devtools.broker import free_port_pair as free_port_pair  # tests import it here
from dyno_stream.kafka.group_protocol import resolve_group_protocol
from dyno_stream.kafka.reading import topic_reader
from dyno_stream.store import DynoStore, Item
from dyno_stream.stream.metrics import SKEW_BUCKETS_S, WorkerMetrics

REPO = Path(__file__).resolve().parent.parent


def cli_env(s: Settings | None = None, **extra: str) -> dict[str, str]:
    """This process's environment without any DYNO_* setting, then ``s`` (HTTP off) and extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNO_")}
    if s is not None:
        env.update(settings_env(s))
        env["DYNO_WORKER__HTTP_PORT"] = "0"
    env.update(extra)
    return env


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``python -m dyno_stream ARGS`` in the repository, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "dyno_stream", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


SET_VALUES: list[Any] = ["red", "green", "blue", 7, True]
#: A killed consumer leaves the group only when its session times out: 3 s (the test
#: broker's, FAST_GROUP_TIMING; the local broker's default is 10 s) keeps the test short.
FAST_SESSION_S = 3.0
FAST_HEARTBEAT_S = 0.25


def fast_group(s: Settings) -> dict[str, str]:
    """Give ``s``'s consumer group a 3 s session, returning the worker's environment for it.

    Classic protocol (set or chosen by "auto"): the client sets it (the returned variables,
    which make the protocol explicit). KIP-848's: the broker
    does, so the group's own config is set on the broker (``consumer.session.timeout.ms``,
    as ``kafka-configs --entity-type groups`` would) and nothing is returned.
    """
    if resolve_group_protocol(s).protocol == "classic":
        return {
            # explicit: the timing below is refused under "auto"
            "DYNO_WORKER__GROUP_PROTOCOL": "classic",
            "DYNO_WORKER__SESSION_TIMEOUT_S": str(FAST_SESSION_S),
            "DYNO_WORKER__HEARTBEAT_INTERVAL_S": str(FAST_HEARTBEAT_S),
        }
    set_group_config(
        s,
        {
            "consumer.session.timeout.ms": str(int(FAST_SESSION_S * 1000)),
            "consumer.heartbeat.interval.ms": str(int(FAST_HEARTBEAT_S * 1000)),
        },
    )
    return {}


def default_group_timing(s: Settings) -> None:
    """Give ``s``'s consumer group (KIP-848) the local broker's default session and heartbeat
    (``GROUP_TIMING``, 10 s and 1 s), which the test broker lowers for every other group. A
    classic group (a Kafka 3 broker under "auto") has its client's defaults already."""
    if resolve_group_protocol(s).protocol == "classic":
        return
    set_group_config(
        s,
        {
            "consumer.session.timeout.ms": GROUP_TIMING["group.consumer.session.timeout.ms"],
            "consumer.heartbeat.interval.ms": GROUP_TIMING["group.consumer.heartbeat.interval.ms"],
        },
    )


def set_group_config(s: Settings, config: dict[str, str]) -> None:
    """Set ``s``'s consumer group's own config on the broker (Kafka >= 4.0 group configs)."""
    admin = AdminClient(s.kafka.librdkafka())
    resource = ConfigResource(
        ResourceType.GROUP,
        s.worker.group_id,
        incremental_configs=[
            ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
            for key, value in config.items()
        ],
    )
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)


# ---------------------------------------------------------------------------------------------
# the reference model and the ops
# ---------------------------------------------------------------------------------------------


class Reference(reference.Replay):
    """The reference model (bench/reference.py, independent of dyno_stream) of the ops a
    test produced, fed as op models in flake order."""

    def add(self, m: OpModel) -> None:
        self.apply(m.item, m.ts, m.op, m.change_value)


def random_op(rnd: random.Random, i: int, n_items: int, prefix: str = "item") -> OpModel:
    name = f"{prefix}-{rnd.randrange(n_items):04d}"
    r = rnd.random()
    change: Any
    if r < 0.28:
        op, change = "putAttrs", {"a": i, "b": f"v{rnd.randrange(100)}"}
    elif r < 0.56:
        op, change = "incAttrBy", {"field": "n", "by": rnd.randrange(-5, 11)}
    elif r < 0.76:
        op, change = "append", {"field": "s", "str": rnd.choice("xyz")}
    elif r < 0.96:
        op, change = "addToSet", {"field": "tags", "value": rnd.choice(SET_VALUES)}
    else:
        op, change = "delAttrs", rnd.sample(["a", "b", "s"], rnd.randrange(1, 3))
    return make_op(op, name, change, new_flake())


class Produced:
    """Every op sent, in production (= flake) order, and where Kafka put it."""

    def __init__(self) -> None:
        self.models: list[OpModel] = []
        self.futures: list[Future[Receipt]] = []

    def send(self, client: DynoClient, models: Iterable[OpModel]) -> None:
        for m in models:
            self.models.append(m)
            self.futures.append(client.send(m))

    def reference(self) -> Reference:
        ref = Reference()
        for m in self.models:
            ref.add(m)
        return ref

    def partitions(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.futures:
            d = f.result(60)
            assert out.setdefault(d.item, d.partition) == d.partition, f"{d.item} on 2 partitions"
        return out


# ---------------------------------------------------------------------------------------------
# waiting and reading
# ---------------------------------------------------------------------------------------------


def wait_until(pred: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f}s: {what()}")
        time.sleep(0.1)


def wait_caught_up(view: MaterializedView, ref: Reference, timeout: float, why: str = "") -> None:
    """Until every item's snapshot in the view has all its ops; fail at once on too many."""

    def behind() -> list[tuple[str, int | None, int]]:
        out = []
        for name, want in ref.changes.items():
            snap = view.get(name)
            got = None if snap is None else snap["changes"]
            if got is not None and got > want:
                pytest.fail(
                    f"{name}: a snapshot with {got} changes but only {want} ops were produced "
                    f"for it (an op applied twice): {snap}"
                )
            if got != want:
                out.append((name, got, want))
        return out

    lagging = behind()
    deadline = time.monotonic() + timeout
    while lagging:
        if time.monotonic() > deadline:
            pytest.fail(
                f"{len(lagging)} of {len(ref.changes)} items not caught up within "
                f"{timeout:.0f}s (item, snapshot changes, ops produced): {lagging[:5]} {why}"
            )
        time.sleep(0.2)
        lagging = behind()


def high_watermark(settings: Settings, topic: str, partition: int = 0) -> tuple[int, int]:
    consumer = topic_reader(settings, "test")
    try:
        lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        return lo, hi
    finally:
        consumer.close()


@dataclass(frozen=True)
class Record:
    """One message read back from a topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def read_topic(settings: Settings, topic: str, timeout: float = 120.0) -> list[Record]:
    """Every message of every partition of ``topic``, up to the ends it has now; in offset
    order within each partition (partitions interleaved as they arrive)."""
    consumer = topic_reader(settings, "test")
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        ends = {}
        for p in meta.partitions:
            _, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi > 0:
                ends[p] = hi
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        out: list[Record] = []
        deadline = time.monotonic() + timeout
        while ends:
            assert time.monotonic() < deadline, f"reading {topic} to its end took too long"
            for msg in consumer.consume(10_000, 0.5):
                if msg.error():
                    continue
                p, off = msg.partition() or 0, msg.offset() or 0
                raw = msg.headers() or []
                out.append(Record(p, off, msg.key(), msg.value(), {k: v or b"" for k, v in raw}))
                if off + 1 >= ends.get(p, 0):
                    ends.pop(p, None)
        return out
    finally:
        consumer.close()


def last_snapshots_by_offset(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each item's last snapshot in topic order: what log compaction keeps."""
    last: dict[str, dict[str, Any]] = {}
    for rec in read_topic(settings, settings.topics.snapshots):
        snap = json.loads(rec.value or b"null")
        last[snap["item"]] = snap
    return last


def store_items(path: Path) -> dict[str, Item]:
    with DynoStore(path) as store:
        return dict(store.scan(lambda _n, _i: True))


def history_rows(path: Path) -> dict[str, int]:
    """Per item, the number of ``history`` rows in the store."""
    out: Counter[str] = Counter()
    with DynoStore(path) as store:
        for key, _value in store.rows():
            name, _flake, op = split_key(key.encode())
            if op == HISTORY:
                out[name] += 1
    return dict(out)


def counter_total(counter: Any) -> float:
    total: float = sum(
        s.value for c in counter.collect() for s in c.samples if s.name.endswith("_total")
    )
    return total


def check_against_reference(got: dict[str, Any], ref: reference.Replay, where: str) -> None:
    """``got``: name -> snapshot dict or Item, for every item of the reference: its value,
    changes and hash are the reference's."""
    wrong: list[Any] = []
    for name, changes in ref.changes.items():
        g = got.get(name)
        if g is None:
            wrong.append((name, "missing"))
            continue
        value, n, h = (
            (g["value"], g["changes"], g["hash"])
            if isinstance(g, dict)
            else (g.value, g.changes, g.hash)
        )
        want = (ref.value(name), changes, ref.hashes[name])
        if (value, n, h) != want:
            wrong.append((name, (value, n, h), want))
    assert not wrong, f"{len(wrong)} items in {where} differ from the reference: {wrong[:3]}"


# ---------------------------------------------------------------------------------------------
# worker processes
# ---------------------------------------------------------------------------------------------

_ASSIGNED = re.compile(r"started (\S+)/(\d+) from offset")
_RELEASED = re.compile(r"released (\S+)/(\d+) at offset")
_RESTORED = re.compile(r"restored (\S+)/(\d+): (\d+) items from snapshots")


def _default_timing(s: Settings) -> dict[str, str]:
    default_group_timing(s)
    return {}


class WorkerProcess:
    """``python -m dyno_stream worker`` with its own data dir, logging to a file.

    ``data_dir`` (default ``tmp_path/data-<name>``) may be another run's, to start a killed
    worker again on its own disk; ``env`` adds or overrides environment variables. Its group
    gets a 3 s session (``fast_group``), or with ``default_group_timing`` the local broker's
    default (10 s, ``default_group_timing()``).
    """

    def __init__(
        self,
        settings: Settings,
        name: str,
        tmp_path: Path,
        *,
        data_dir: Path | None = None,
        env: dict[str, str] | None = None,
        default_group_timing: bool = False,
    ) -> None:
        self.name = name
        self.ops_topic = settings.topics.ops
        self.data_dir = data_dir or tmp_path / f"data-{name}"
        self.log = tmp_path / f"{name}.log"
        full_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DYNO_")},
            **settings_env(settings),
            "DYNO_WORKER__DATA_DIR": str(self.data_dir),
            "DYNO_WORKER__HTTP_PORT": "0",
            "DYNO_WORKER__BATCH_TIMEOUT_S": "0.02",
            **(_default_timing(settings) if default_group_timing else fast_group(settings)),
            "DYNO_KAFKA__CLIENT_ID": f"dyno-test-{name}",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        with self.log.open("wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dyno_stream", "worker"],
                env=full_env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def partitions(self) -> set[int]:
        """The partitions it holds now, from its 'started' and 'released' log lines."""
        held: set[int] = set()
        for line in self.text().splitlines():
            if (m := _ASSIGNED.search(line)) and m.group(1) == self.ops_topic:
                held.add(int(m.group(2)))
            elif (m := _RELEASED.search(line)) and m.group(1) == self.ops_topic:
                held.discard(int(m.group(2)))
        return held

    def restored(self) -> dict[int, int]:
        """Partition -> items restored from snapshots, by its last 'restored' line."""
        out = {}
        for m in _RESTORED.finditer(self.text()):
            if m.group(1) == self.ops_topic:
                out[int(m.group(2))] = int(m.group(3))
        return out

    def store(self, partition: int) -> Path:
        return self.data_dir / self.ops_topic / f"{partition:04d}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 1500) -> str:
        return f"\n--- {self.name} log (exit {self.proc.poll()}) ---\n{self.text()[-n:]}"

    def wait_exit(self, timeout: float = 30.0) -> int:
        """The exit status after SIGTERM (sent once: a second one makes it exit at once)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            pytest.fail(f"worker {self.name} did not stop within {timeout:.0f}s of SIGTERM")

    def cleanup(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)


def assignment(workers: list[WorkerProcess]) -> str:
    return ", ".join(f"{w.name}={sorted(w.partitions())}/alive={w.alive()}" for w in workers)


def only_items(ref: reference.Replay, names: set[str]) -> reference.Replay:
    return ref.only(names)


def reference_item(ref: reference.Replay, name: str) -> Item:
    """An item as the reference model has it (one row per op: nothing flattened), in the
    shape a store reads back, to publish as a snapshot."""
    n = ref.changes[name]
    return Item(
        name, ref.value(name), ref.timestamps[name], n, ref.hashes[name], n, ref.deleted[name]
    )


# ---------------------------------------------------------------------------------------------
# the fault suite: sizes, figures, and the published history held to the ops
# ---------------------------------------------------------------------------------------------

#: ``DYNO_FAULTS_FULL=1`` (``make faults``) runs the fault suite at the issue's full size; CI
#: runs a reduced form of each test.
FAULTS_FULL = os.environ.get("DYNO_FAULTS_FULL", "") not in ("", "0")


def faults_size(ci: int, full: int) -> int:
    return full if FAULTS_FULL else ci


def kill_plan(kills: int, rnd: random.Random) -> list[str]:
    """Each kill's intended phase: ``start-up`` (before the worker holds its partitions),
    ``backlog`` (holding them while ops are still being produced: the backlog its
    predecessor's downtime left, then live ops), ``idle`` (every op produced and applied).

    Every plan has all three, whatever the seed: kill 0 meets the first worker, which holds
    its partitions before any op is sent, so it is a backlog kill; the idle kills come last,
    once every op is in; one kill in between is a start-up kill for sure, the others are
    start-up kills by chance (one in four), else backlog kills.
    """
    assert kills >= 3, "a plan needs a backlog, a start-up and an idle kill"
    idle = max(1, kills // 10)
    streaming = kills - idle
    sure = rnd.randrange(1, streaming)
    plan = ["backlog"]
    plan += [
        "start-up" if k == sure or rnd.random() < 0.25 else "backlog" for k in range(1, streaming)
    ]
    return plan + ["idle"] * idle


def record_figures(test: str, **figures: Any) -> None:
    """Print a fault test's figures, and keep them in ``$DYNO_FAULTS_REPORT`` (JSON) when set,
    with the totals the benchmarks page (docs/benchmarks.md) reads."""
    print(f"\n{test}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    path = os.environ.get("DYNO_FAULTS_REPORT")
    if not path:
        return
    report_path = Path(path)
    report: dict[str, Any] = (
        json.loads(report_path.read_text()) if report_path.is_file() else {"tests": {}}
    )
    report["tests"][test] = figures
    report["full_size"] = FAULTS_FULL
    totals: Counter[str] = Counter()
    for figs in report["tests"].values():
        for key in (
            "kills_survived",
            "broker_restarts",
            "broker_hangs",
            "leveldb_faults_survived",
            "poison_inputs",
            "ops_produced",
            "ops_lost",
            "ops_applied_twice",
        ):
            totals[key] += int(figs.get(key, 0))
    report["totals"] = dict(totals)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def prefix_hashes(models: Iterable[OpModel]) -> dict[str, list[str]]:
    """Per item, the chain hash after each of its first k ops (index k; index 0 is "").

    A published snapshot with ``changes == k`` must carry exactly the hash after the item's
    first k ops: an op applied twice, skipped or out of order would change it.
    """
    out: dict[str, list[str]] = {}
    for m in models:
        chain = out.setdefault(m.item, [""])
        text = reference.change_json(m.op, m.change_value)
        chain.append(reference.chain_hash(chain[-1], m.item, m.ts, m.op, text))
    return out


@dataclass
class PublishedHistory:
    """Every snapshot ever published, held to the ops that were produced (see ``published``)."""

    #: over every item, the ops missing from its last snapshot
    ops_lost: int
    #: over every item, the ops its snapshots hold beyond those produced
    ops_applied_twice: int
    #: snapshots whose hash is not the chain hash of their item's first ``changes`` ops
    wrong: list[Any]
    #: snapshots with fewer changes than an earlier one of the same item (a lost write)
    backwards: list[Any]
    last: dict[str, dict[str, Any]]
    snapshots: int

    def check(self) -> None:
        assert not self.wrong, (
            f"{len(self.wrong)} snapshots are not a prefix of the ops produced: {self.wrong[:3]}"
        )
        assert not self.backwards, f"snapshots went back in changes: {self.backwards[:3]}"
        assert self.ops_applied_twice == 0, f"{self.ops_applied_twice} ops applied twice"
        assert self.ops_lost == 0, f"{self.ops_lost} ops missing from the last snapshots"


def published(records: list[Record], models: list[OpModel]) -> PublishedHistory:
    """Hold every snapshot in ``records`` (the snapshot topic, in offset order) to ``models``.

    A snapshot with ``changes == k`` must carry the chain hash of its item's first k ops: an
    op applied twice, skipped or out of order changes it.
    """
    chains = prefix_hashes(models)
    last: dict[str, dict[str, Any]] = {}
    wrong: list[Any] = []
    backwards: list[Any] = []
    twice: dict[str, int] = {}
    for rec in records:
        snap = json.loads(rec.value or b"null")
        name, changes = snap["item"], snap["changes"]
        chain = chains.get(name, [""])
        if changes >= len(chain):
            twice[name] = max(twice.get(name, 0), changes - (len(chain) - 1))
            wrong.append((name, changes, "more changes than ops produced"))
        elif snap["hash"] != (chain[changes] or None):
            wrong.append((name, changes, snap["hash"], chain[changes]))
        prev = last.get(name)
        if prev is not None and prev["changes"] > changes:
            backwards.append((name, prev["changes"], changes))
        last[name] = snap
    lost = sum(
        max(0, len(chain) - 1 - last.get(name, {"changes": 0})["changes"])
        for name, chain in chains.items()
    )
    return PublishedHistory(lost, sum(twice.values()), wrong, backwards, last, len(records))


# ---------------------------------------------------------------------------------------------
# clock skew: ops stamped by a producer whose clock is wrong
# ---------------------------------------------------------------------------------------------

#: A year in seconds: how far ahead a broken producer clock stamps an op.
YEAR_S = 365 * 86400


def flake_at(time_s: float, node: int = 0x5EC) -> str:
    """A well-formed flake at ``time_s``, as a producer whose clock reads that would stamp."""
    return format_flake(int(time_s * 1000), 0, 0x1234, node)


def op_bytes(item: str, op: str, ts: str, change: Any) -> bytes:
    return json.dumps({"item": item, "op": op, "ts": ts, "change": change}).encode()


def skew_samples(metrics: WorkerMetrics) -> dict[str, float]:
    """``dyno_clock_skew_seconds``' cumulative buckets by ``le``, and its count."""
    reg = metrics.registry
    out = {
        le: reg.get_sample_value("dyno_clock_skew_seconds_bucket", {"le": le}) or 0.0
        for le in [repr(b) for b in SKEW_BUCKETS_S] + ["+Inf"]
    }
    out["count"] = reg.get_sample_value("dyno_clock_skew_seconds_count") or 0.0
    return out


# ---------------------------------------------------------------------------------------------
# secrets that must show up in no output (test_security in unit/ and integration/)
# ---------------------------------------------------------------------------------------------

# Unique per run, so finding one in an output cannot be a coincidence.
PASSWORD = f"pw512-{uuid.uuid4().hex}"
PASSWORD_256 = f"pw256-{uuid.uuid4().hex}"
WRONG = f"wrong-{uuid.uuid4().hex}"
SECRETS = (PASSWORD, PASSWORD_256, WRONG)


def assert_no_secret(where: str, text: str | bytes) -> None:
    body = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    for secret in SECRETS:
        assert secret not in body, f"a password appears in {where}"


def with_compaction(s: Settings, **kw: Any) -> Settings:
    """``s`` with these ``[compaction]`` settings (a worker's scheduled pass, a policy)."""
    return s.model_copy(update={"compaction": s.compaction.model_copy(update=kw)})


def running_partitions(worker: Any) -> list[str]:
    """The partitions a worker (``dyno_stream.stream.worker.Worker``) processes now, sorted:
    held and past their restore (RUNNING on /healthz)."""
    states = worker.health.partition_states
    return sorted(label for label, state in states.items() if state == "RUNNING")
