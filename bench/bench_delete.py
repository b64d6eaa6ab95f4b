"""Disk and topic sizes before and after deleting half of the items and compacting.

On a broker of its own: ``--items`` items (100,000) get one ``putItem`` each (about 150
bytes of value) and a second op, through a ``dyno-stream worker`` process on 4 partitions.
Then half of them get a ``delItem``. Sizes are printed at each step:

- the worker's data dir (``du``: every file of its LevelDB stores);
- each topic's log segments in the broker's log dir (the sum of its ``.log`` files).

Steps: filled; compacted (the worker stopped, an offline pass on each store with a 2 s
lateness, which ends with LevelDB's own compaction, and Kafka's log cleaner on the snapshot
topic, which is given a small ``segment.ms``, ``delete.retention.ms`` and
``min.cleanable.dirty.ratio``: sizes are read once they stop falling); half deleted (their
tombstones published); an online compaction pass (lateness 2 s: the deleted items' rows go,
their markers stay); compacted again as before; cleaned once more after the tombstones'
``delete.retention.ms``. The ops topic is not compacted (it keeps its ops until its
retention). Results: ``bench/results/delete.json``. Run:
``python bench/bench_delete.py``.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from harness.broker import bench_broker, scratch
from harness.output import write_json
from harness.settings import bench_settings
from rich.console import Console

from dyno_stream.config import CompactionSettings, Settings, producer_config
from dyno_stream.core.events import make_op
from dyno_stream.core.flake import new_flake
from dyno_stream.jobs.compaction import compact_offline, compact_online
from dyno_stream.kafka.topics import ensure_topics

RESULTS = Path(__file__).resolve().parent / "results" / "delete.json"
REPO = Path(__file__).resolve().parent.parent
PARTITIONS = 4


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def topic_bytes(broker_home: Path, topic: str) -> int:
    """The bytes of a topic's log segments in the broker's log dir."""
    return sum(
        f.stat().st_size
        for d in broker_home.joinpath("data").rglob(f"{topic}-*")
        if d.is_dir()
        for f in d.glob("*.log")
    )


def produce(s: Settings, ops: list[tuple[str, str, Any]]) -> None:
    producer = Producer({**producer_config(s), "linger.ms": 20, "batch.size": 1_000_000})
    for op, name, change in ops:
        value = make_op(op, name, change, new_flake()).model_dump_json().encode()
        while True:
            try:
                producer.produce(s.topics.ops, value, name.encode())
                break
            except BufferError:
                producer.poll(0.1)
    if producer.flush(120):
        raise SystemExit("ops not acknowledged")


def wait_applied(s: Settings, timeout: float = 600) -> None:
    """Until the worker's group has committed the end of every ops partition."""
    c = Consumer({**s.kafka.librdkafka(), "group.id": s.worker.group_id})
    try:
        tps = [TopicPartition(s.topics.ops, p) for p in range(PARTITIONS)]
        ends = [c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
        deadline = time.monotonic() + timeout
        while True:
            done = [tp.offset for tp in c.committed(tps, timeout=10)]
            if all(d >= e for d, e in zip(done, ends, strict=True)):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"not applied within {timeout}s: {done} of {ends}")
            time.sleep(1)
    finally:
        c.close()


def count_messages(s: Settings) -> tuple[int, int]:
    """Messages and tombstones in the snapshot topic now (the bench's own roll markers left
    out)."""
    c = Consumer({**s.kafka.librdkafka(), "group.id": f"count-{uuid.uuid4().hex}"})
    try:
        todo = {}
        for p in range(PARTITIONS):
            lo, hi = c.get_watermark_offsets(TopicPartition(s.topics.snapshots, p), timeout=10)
            if hi > lo:
                todo[p] = hi
        c.assign([TopicPartition(s.topics.snapshots, p, 0) for p in todo])
        messages = tombstones = 0
        while todo:
            for msg in c.consume(10_000, 1.0):
                if msg.error() is not None:
                    continue
                p, off = msg.partition(), msg.offset()
                if msg.key() != b"bench-roll":
                    messages += 1
                    tombstones += msg.value() is None
                if p is not None and off is not None and off + 1 >= todo.get(p, 0):
                    todo.pop(p, None)
        return messages, tombstones
    finally:
        c.close()


def settle(read: Any, quiet_s: float = 20.0, timeout: float = 300.0) -> int:
    """A size read until it has not fallen for ``quiet_s`` (Kafka's cleaner at work)."""
    best, since = read(), time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(2)
        now = read()
        if now < best:
            best, since = now, time.monotonic()
    return int(best)


class DeleteRun:
    """The worker, the broker's log dir and the sizes measured at each step."""

    def __init__(self, s: Settings, tmp: Path) -> None:
        self.s, self.tmp, self.broker_home = s, tmp, tmp / "broker"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DYNO_")},
            "DYNO_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
            "DYNO_TOPICS__OPS": s.topics.ops,
            "DYNO_TOPICS__SNAPSHOTS": s.topics.snapshots,
            "DYNO_TOPICS__DEAD_LETTER": s.topics.dead_letter,
            "DYNO_TOPICS__PARTITIONS": str(PARTITIONS),
            "DYNO_WORKER__GROUP_ID": s.worker.group_id,
            "DYNO_WORKER__DATA_DIR": str(s.worker.data_dir),
            "DYNO_WORKER__HTTP_PORT": "0",
        }
        self.admin = AdminClient(s.kafka.librdkafka())
        self.worker: subprocess.Popen[bytes] | None = None
        self.steps: list[dict[str, Any]] = []

    def start_worker(self) -> None:
        with (self.tmp / "worker.log").open("ab") as log:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "dyno_stream", "worker"], env=self.env, cwd=REPO,
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def stop_worker(self) -> None:
        assert self.worker is not None
        self.worker.send_signal(signal.SIGTERM)
        self.worker.wait(120)
        self.worker = None

    def kill_worker(self) -> None:
        if self.worker is not None:
            self.worker.kill()

    def offline_compaction(self) -> None:
        console = Console(file=io.StringIO())
        for store in sorted((self.s.worker.data_dir / self.s.topics.ops).iterdir()):
            compact_offline(store, CompactionSettings(lateness_s=2.0, min_rows=2), console)

    def snapshot_topic_config(self, **config: str) -> None:
        entries = [
            ConfigEntry(k.replace("_", "."), v, incremental_operation=AlterConfigOpType.SET)
            for k, v in config.items()
        ]
        res = ConfigResource("TOPIC", self.s.topics.snapshots, incremental_configs=entries)
        for f in self.admin.incremental_alter_configs([res]).values():
            f.result(30)

    def let_kafka_clean(self, ratio: str = "0.01") -> None:
        """Let the snapshot topic compact, and drop its tombstones, within seconds: roll
        its segments (a segment rolls when a message comes after segment.ms) until the
        cleaner has stopped shrinking it. Then back to Kafka's default tombstone
        retention (a day), which an online pass needs: it reads its answers, tombstones
        among them, after they were published."""
        self.snapshot_topic_config(
            segment_ms="1000", delete_retention_ms="1000", min_cleanable_dirty_ratio=ratio
        )
        roller = Producer(self.s.kafka.librdkafka())

        def rolled_size() -> int:
            for p in range(PARTITIONS):
                roller.produce(self.s.topics.snapshots, None, b"bench-roll", partition=p)
            roller.flush(10)
            return topic_bytes(self.broker_home, self.s.topics.snapshots)

        time.sleep(1.5)
        settle(rolled_size)
        self.snapshot_topic_config(delete_retention_ms="86400000", segment_ms="604800000")

    def measure(self, step: str) -> None:
        s = self.s
        messages, tombstones_ = count_messages(s)
        row = {
            "step": step,
            "data_dir_bytes": du(s.worker.data_dir),
            "ops_topic_bytes": topic_bytes(self.broker_home, s.topics.ops),
            "snapshot_topic_bytes": topic_bytes(self.broker_home, s.topics.snapshots),
            "snapshot_topic_messages": messages,
            "snapshot_topic_tombstones": tombstones_,
        }
        self.steps.append(row)
        print(
            f"{step:<58} data dir {row['data_dir_bytes']:>11,}  ops topic "
            f"{row['ops_topic_bytes']:>11,}  snapshot topic {row['snapshot_topic_bytes']:>11,}"
            f" ({messages:,} messages, {tombstones_:,} tombstones)",
            flush=True,
        )

    def fill(self, items: int) -> list[str]:
        """``items`` items of two ops each, then compacted offline and by Kafka."""
        s = self.s
        self.start_worker()
        names = [f"user-{i:06d}" for i in range(items)]
        value = {"email": "x@example.com", "city": "Wellington", "plan": "pro", "note": "n" * 80}
        produce(s, [("putItem", n, {**value, "name": n}) for n in names])
        produce(s, [("putAttrs", n, {"visits": 1}) for n in names])
        wait_applied(s)
        self.measure(f"{items:,} items, 2 ops each")
        time.sleep(3)  # the ops older than the 2 s lateness
        self.stop_worker()
        self.offline_compaction()
        self.let_kafka_clean()
        self.measure("compacted: offline pass, Kafka's log cleaner")
        return names

    def delete_half(self, names: list[str]) -> None:
        """Every other item deleted, an online pass, then compacted and cleaned again."""
        s = self.s
        self.start_worker()
        deleted = names[::2]
        produce(s, [("delItem", n, {}) for n in deleted])
        wait_applied(s)
        self.measure(f"{len(deleted):,} deleted (tombstones published)")
        time.sleep(3)  # the deletions older than the 2 s lateness below
        console = Console(file=io.StringIO())
        policy = CompactionSettings(lateness_s=2.0, min_rows=10, wait_s=300)
        summary = compact_online(s, policy, console)
        print("online compaction:", summary.log_line(), flush=True)
        self.measure("online compaction pass (lateness 2 s)")
        self.stop_worker()
        self.offline_compaction()
        self.let_kafka_clean()
        self.measure("compacted: offline pass, Kafka's log cleaner")
        # the tombstones outlive a cleaning by delete.retention.ms, and go at a later one:
        # with the topic this large, only a dirty ratio of 0 lets the few roll markers make
        # the cleaner come back
        self.let_kafka_clean(ratio="0")
        self.measure("tombstones past delete.retention.ms (1 s here), cleaned again")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--json", type=Path, default=RESULTS)
    return ap.parse_args()


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The steps on a broker of its own; each step's sizes."""
    with (
        scratch("dyno-bench-delete-") as tmp,
        bench_broker(own_in=tmp / "broker") as bootstrap,
    ):
        s = bench_settings(bootstrap, tmp / "data", PARTITIONS)
        ensure_topics(s)
        bench = DeleteRun(s, tmp)
        try:
            bench.delete_half(bench.fill(args.items))
        finally:
            bench.kill_worker()
    return bench.steps


def report(args: argparse.Namespace, steps: list[dict[str, Any]]) -> None:
    result: dict[str, Any] = {
        "items": args.items,
        "deleted": args.items // 2,
        "partitions": PARTITIONS,
        "steps": steps,
        "load_after": os.getloadavg()[0],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, result)
    print(f"results in {args.json}")


def main() -> None:
    args = parse()
    report(args, run(args))


if __name__ == "__main__":
    main()
