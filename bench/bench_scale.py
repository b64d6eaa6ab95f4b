"""Scale-out scenario: workers join and leave under a steady load; what it costs.

16 partitions; an external producer sends a steady load (8,000 ops/s by default) over items
pre-filled so that restores have work (300 per partition by default). Workers, each a
``dyno-stream worker`` subprocess configured by DYNO_* variables alone (so this runs against
any version of the worker), go 1 -> 2 -> 3 -> 2 -> 1: two join, one gets SIGTERM (a graceful
leave), one gets SIGKILL (its partitions wait for the group's session timeout). Each phase
lasts ``--phase-s`` and then until it settles (every partition with waiting ops progressing).

``--disks separate``: each worker has its own data dir, as on separate machines, so a
partition that moves to a worker that never held it is restored from the snapshot topic.
``--disks shared``: one data dir for all.

Measured, in this process (one monotonic clock):

- produce-to-visible lag of each op: from its produce acknowledgement (delivery report) to
  the moment a snapshot of its item whose ``source.offset`` is at least the op's offset
  arrives on the snapshot topic. Counted in the window (membership change to the next) in
  which the op became visible;
- stalls: a partition with acknowledged ops waiting whose visible offset (the largest
  ``source.offset`` of its snapshots) does not advance. Counted in the window in which the
  stall ended, apart for partitions that moved in that change (their owner in the group
  before the change differs from their owner once the group settled) and those that did not;
- a timeline: each membership change, the group's assignment as the broker describes it,
  the workers' log lines about assignment, revoke and restore, and each partition resuming
  after a stall of a second or more;
- the end state: once the load stops and the workers catch up, each item's newest snapshot
  against ``item_reference.ItemReference``. The load's ops are ``append``s of a token unique
  to the op and ``incAttrBy`` counters of 1: the tokens in an item's ``log`` show each op
  lost or applied twice exactly; the counter shows the net difference of the others.

Writes bench/results/scale-<disks>.json and prints the figures as tables.
Run: ``python bench/bench_scale.py --disks separate`` (starts a private broker), or
``--quick`` for a short run (``--steps join`` for one membership change only).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from array import array
from bisect import bisect_left
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from harness.broker import bench_broker, scratch
from harness.machine import busiest
from harness.output import write_json
from harness.settings import bench_settings
from item_reference import ItemReference, canonical
from rich.console import Console
from rich.table import Table

from dyno_stream.cli.demo import settings_env
from dyno_stream.config import Settings, producer_config
from dyno_stream.core.flake import FlakeGenerator
from dyno_stream.kafka.partitioning import kafka_partition
from dyno_stream.kafka.topics import ensure_topics

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
PARTITIONS = 16
#: Gaps between two advances of a partition shorter than this are its normal cadence (a
#: worker's loop serves every partition in turn), not stalls worth keeping.
STALL_KEEP_S = 0.1
#: Stalls at least this long appear in the timeline ("p3 resumed after 17.2 s").
STALL_SHOWN_S = 1.0
#: A phase has settled when no partition with waiting ops has gone this long without progress
SETTLED_STALL_S = 1.0
#: ... and no op acknowledged this long ago is still waiting (a backlog being worked off
#: progresses all the time: without this, its lag spilled over into the next change's window)
SETTLED_LAG_S = 2.0
STEPS = ("join", "join", "term", "kill")

out = Console(width=None if sys.stdout.isatty() else 170)


# -- what is measured ----------------------------------------------------------------------


@dataclass
class Event:
    """One line of the timeline: seconds since the start, who said it, what."""

    t: float
    source: str
    text: str


@dataclass
class Stall:
    """A partition with acknowledged ops waiting, whose visible offset did not advance."""

    partition: int
    start: float
    end: float
    resolved: bool = True

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Change:
    """One membership change (or the start of the load, or its end) and its window."""

    label: str
    kind: str  # start | join | term | kill | drain
    at: float
    workers_after: int
    owners_before: dict[int, str] = field(default_factory=dict)
    owners_after: dict[int, str] = field(default_factory=dict)
    #: the worker that left (term, kill), whose partitions had to go elsewhere
    leaver: str | None = None
    settled_at: float | None = None
    load_avg: list[float] = field(default_factory=list)
    #: the processes that used the most CPU once it settled (ours and others' beside us)
    busiest: list[dict[str, Any]] = field(default_factory=list)

    def moved(self) -> set[int]:
        return {p for p, owner in self.owners_after.items() if self.owners_before.get(p) != owner}


@dataclass
class ChangeFigures:
    """The figures of one window: from its change to the next one."""

    label: str
    at_s: float
    window_s: float
    settled_after_s: float | None
    moved: list[int]
    ops_visible: int
    worst_lag_s: float
    p99_lag_s: float
    p50_lag_s: float
    longest_stall_moved_s: float
    longest_stall_unmoved_s: float
    #: the moved (or the leaver's) partitions processed again: per partition the end of its
    #: longest stall in the window (the hand-over), the latest of those, after the change
    moved_resumed_after_s: float | None
    unresolved_stalls: int
    #: the workers' log lines saying a partition was restored, and the seconds they name
    restores: int
    restore_s: float
    load_avg: list[float]
    busiest: list[dict[str, Any]]


@dataclass
class EndState:
    """The newest snapshot of every item against the reference of the ops produced."""

    items: int
    equal: int
    differ: int
    missing: int
    ops_produced: int
    ops_failed: int
    lost: int
    twice: int
    dead_letters: int
    #: when every op was visible, or None: then ``ops_waiting`` were not, and count as lost
    caught_up_s: float | None
    ops_waiting: int
    examples: list[str]


# -- the tracker: acknowledgements in, snapshots in, lags and stalls out -----------------------


class Tracker:
    """Per item the ops acknowledged and not yet visible; per partition its progress.

    Fed by the producer's delivery reports (one thread) and the snapshot consumer (another),
    so every method holds the lock.
    """

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.lock = threading.Lock()
        self.pending: dict[str, deque[tuple[int, float]]] = {}
        self.item_visible: dict[str, int] = {}
        self.acked_max = [-1] * PARTITIONS
        self.visible = [-1] * PARTITIONS
        self.waiting_since = [0.0] * PARTITIONS
        self.last_progress = [0.0] * PARTITIONS
        #: (seconds since t0 at which the op became visible, its lag), in arrival order
        self.visible_at = array("d")
        self.lags = array("d")
        self.stalls: list[Stall] = []
        self.acked = 0
        self.failed = 0
        self.latest: dict[str, dict[str, Any]] = {}
        self.snapshots = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def acknowledged(self, item: str, partition: int, offset: int) -> None:
        with self.lock:
            now = self.now()
            self.acked += 1
            if self.item_visible.get(item, -1) >= offset:  # its snapshot came first
                self.visible_at.append(now)
                self.lags.append(0.0)
            else:
                self.pending.setdefault(item, deque()).append((offset, now))
            if (
                self.acked_max[partition] <= self.visible[partition]
                and offset > self.visible[partition]
            ):
                self.waiting_since[partition] = now
            self.acked_max[partition] = max(self.acked_max[partition], offset)

    def delivery_failed(self) -> None:
        with self.lock:
            self.failed += 1

    def snapshot(self, snap: dict[str, Any]) -> None:
        item, source = snap["item"], snap["source"]
        partition, offset = source["partition"], source["offset"]
        with self.lock:
            now = self.now()  # taken under the lock, so ``visible_at`` stays in order
            self.snapshots += 1
            self.latest[item] = snap
            if offset > self.item_visible.get(item, -1):
                self.item_visible[item] = offset
            waiting = self.pending.get(item)
            while waiting and waiting[0][0] <= offset:
                _, acked_at = waiting.popleft()
                self.visible_at.append(now)
                self.lags.append(now - acked_at)
            if offset > self.visible[partition]:
                if self.acked_max[partition] > self.visible[partition]:
                    start = max(self.last_progress[partition], self.waiting_since[partition])
                    if now - start >= STALL_KEEP_S:
                        self.stalls.append(Stall(partition, start, now))
                self.visible[partition] = offset
                self.last_progress[partition] = now

    def open_stalls(self) -> list[Stall]:
        """Stalls still going on now (a partition with waiting ops and no progress)."""
        now = self.now()
        with self.lock:
            return [
                Stall(p, start, now, resolved=False)
                for p in range(PARTITIONS)
                if self.acked_max[p] > self.visible[p]
                and now - (start := max(self.last_progress[p], self.waiting_since[p]))
                >= STALL_KEEP_S
            ]

    def oldest_waiting_s(self) -> float:
        """How long ago the oldest op still waiting was acknowledged (0 when none waits)."""
        with self.lock:
            heads = [q[0][1] for q in self.pending.values() if q]
            return self.now() - min(heads) if heads else 0.0

    def settled(self) -> bool:
        return self.oldest_waiting_s() <= SETTLED_LAG_S and not any(
            s.seconds >= SETTLED_STALL_S for s in self.open_stalls()
        )

    def ops_waiting(self) -> int:
        with self.lock:
            return sum(len(q) for q in self.pending.values())


# -- workers -----------------------------------------------------------------------------------

#: Worker log lines that belong in the timeline: assignment, revoke, restore, leaving.
_INTERESTING = re.compile(
    r"assign|revok|releas|restor|lost|rebalanc|signal|stopp|locked|replay|pause|resum|moved|"
    r"partitions|error",
    re.IGNORECASE,
)
#: A restore's line, with the seconds it took (the worker's wording: "restored ... in 2.31s")
_RESTORED = re.compile(r"restored .* in (\d+(?:\.\d+)?) ?s\b")
#: Lines about one partition each, merged into one timeline line per worker and burst.
_PER_PARTITION = re.compile(r"^(assigned|released) (\S+)/(\d+)")


class WorkerProcess:
    """One ``dyno-stream worker`` process; its JSON log lines are read into the timeline."""

    def __init__(
        self, name: str, s: Settings, data_dir: Path, log_dir: Path, extra_env: dict[str, str]
    ) -> None:
        self.name = name
        self.client_id = f"bench-scale-{name}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DYNO_")},
            **settings_env(s),
            "DYNO_WORKER__DATA_DIR": str(data_dir),
            "DYNO_WORKER__HTTP_PORT": "0",
            "DYNO_WORKER__LOG_FORMAT": "json",
            "DYNO_WORKER__LOG_LEVEL": "INFO",
            "DYNO_KAFKA__CLIENT_ID": self.client_id,
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }
        self.log_path = log_dir / f"{name}.log"
        self.events: list[Event] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dyno_stream", "worker"],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._read, name=f"log-{name}", daemon=True)

    def start_reading(self, t0_wall: float, t0: float) -> None:
        self._t0_wall, self._t0 = t0_wall, t0
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.log_path.open("wb") as keep:
            for raw in self.proc.stderr:
                keep.write(raw)
                keep.flush()
                self._note(raw)

    def _note(self, raw: bytes) -> None:
        arrived = time.monotonic() - self._t0
        try:
            line = orjson.loads(raw)
            text = str(line["msg"])
            wall = datetime.fromisoformat(line["ts"].replace("Z", "+00:00")).timestamp()
            t = wall - self._t0_wall
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            text, t = raw.decode(errors="replace").rstrip(), arrived
        if text and _INTERESTING.search(text) and "dead letter" not in text:
            self.events.append(Event(round(t, 3), self.name, text))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.alive():
            self.signal(signal.SIGTERM)
            if self.wait_exit(60) is None:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)


# -- the group as the broker sees it -----------------------------------------------------------


class GroupWatch:
    """The consumer group's assignment, asked of the broker (so whatever protocol the
    workers use): partition -> the owning member's client id."""

    def __init__(self, s: Settings, tracker: Tracker) -> None:
        self.admin = AdminClient(s.kafka.librdkafka())
        self.group = s.worker.group_id
        self.topic = s.topics.ops
        self.tracker = tracker
        self.events: list[Event] = []
        self._last: tuple[str, tuple[tuple[int, str], ...]] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="group-watch", daemon=True)

    def owners(self) -> tuple[str, dict[int, str], set[str]]:
        """(group state, partition -> client id, client ids of the members)."""
        desc = self.admin.describe_consumer_groups([self.group])[self.group].result(10)
        owners: dict[int, str] = {}
        for member in desc.members:
            for tp in member.assignment.topic_partitions if member.assignment else []:
                if tp.topic == self.topic:
                    owners[tp.partition] = member.client_id
        state = getattr(desc.state, "name", str(desc.state))
        return state, owners, {m.client_id for m in desc.members}

    def wait_complete(self, clients: set[str], timeout: float) -> dict[int, str]:
        """Until exactly ``clients`` are members and own every partition between them, the
        same on two looks in a row."""
        deadline = time.monotonic() + timeout
        previous: dict[int, str] | None = None
        while True:
            try:
                _state, owners, members = self.owners()
            except Exception:  # a describe during a coordinator move: ask again
                owners, members = {}, set()
            complete = members == clients and len(owners) == PARTITIONS
            if complete and owners == previous:
                return owners
            previous = owners if complete else None
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"the group did not settle on members {sorted(clients)} within "
                    f"{timeout:.0f}s: members {sorted(members)}, owners {owners}"
                )
            time.sleep(0.5)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            try:
                state, owners, _members = self.owners()
            except Exception:
                continue
            key = (state, tuple(sorted(owners.items())))
            if key != self._last:
                self._last = key
                self.events.append(
                    Event(round(self.tracker.now(), 3), "group", describe(state, owners))
                )


def describe(state: str, owners: dict[int, str]) -> str:
    by_owner: dict[str, list[int]] = {}
    for p, owner in sorted(owners.items()):
        by_owner.setdefault(owner.removeprefix("bench-scale-"), []).append(p)
    held = "; ".join(f"{w}: {ranges(ps)}" for w, ps in sorted(by_owner.items()))
    return f"{state.lower()}, {len(owners)}/{PARTITIONS} assigned" + (f" ({held})" if held else "")


def ranges(ps: list[int] | set[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out: list[str] = []
    for p in sorted(ps):
        if out and "-" not in out[-1].split(",")[-1] and int(out[-1].split(",")[-1]) == p - 1:
            out[-1] = f"{out[-1]}-{p}"
        elif out and "-" in out[-1] and int(out[-1].rsplit("-", 1)[1]) == p - 1:
            out[-1] = f"{out[-1].rsplit('-', 1)[0]}-{p}"
        else:
            out.append(str(p))
    return ",".join(out) or "none"


# -- the load --------------------------------------------------------------------------------


def item_names(per_partition: int) -> list[str]:
    """``per_partition`` item names on each partition (by Java's partitioner, as produced)."""
    names: list[str] = []
    count = [0] * PARTITIONS
    i = 0
    while len(names) < per_partition * PARTITIONS:
        name = f"user-{i:06d}"
        p = kafka_partition(name.encode(), PARTITIONS)
        if count[p] < per_partition:
            count[p] += 1
            names.append(name)
        i += 1
    return names


def prefill_change(name: str) -> dict[str, Any]:
    """About 100 bytes of attributes: what a restore has to carry over."""
    return {
        "email": f"{name}@example.com",
        "city": "Wellington",
        "plan": "pro",
        "n": 0,
        "note": "x" * 40,
    }


def load_op(seq: int) -> tuple[str, dict[str, Any]]:
    """Even ops append a token unique to the op (``<seq in base 36>;``), odd ones count."""
    if seq % 2 == 0:
        return "append", {"field": "log", "str": f"{base36(seq)};"}
    return "incAttrBy", {"field": "n", "by": 1}


def base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        n, r = divmod(n, 36)
        text = digits[r] + text
        if n == 0:
            return text


class Load:
    """Produces ops at a steady rate on a thread of its own, every op fed to the reference
    first (in flake order: one generator), each acknowledgement handed to the tracker."""

    def __init__(self, s: Settings, tracker: Tracker, names: list[str], rate: int) -> None:
        self.s, self.tracker, self.names, self.rate = s, tracker, names, rate
        self.ref = ItemReference()
        self.gen = FlakeGenerator(node=13, pid=13)
        self.rnd = random.Random(13)
        self.producer = Producer(producer_config(s))
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self.achieved_rate = 0.0

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.tracker.delivery_failed()
            return
        key, partition, offset = msg.key(), msg.partition(), msg.offset()
        assert key is not None and partition is not None and offset is not None
        self.tracker.acknowledged(key.decode(), partition, offset)

    def _send(self, name: str, op: str, change: dict[str, Any]) -> None:
        ts = self.gen()
        self.ref.apply(name, ts, op, change)
        value = orjson.dumps({"item": name, "op": op, "ts": ts, "change": change})
        while True:
            try:
                self.producer.produce(
                    self.s.topics.ops, value, name.encode(), on_delivery=self._delivered
                )
                break
            except BufferError:
                self.producer.poll(0.05)
        self.sent += 1

    def prefill(self) -> None:
        for name in self.names:
            self._send(name, "putAttrs", prefill_change(name))
        if self.producer.flush(120):
            raise SystemExit("the pre-fill was not acknowledged within 120 s")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        if self.producer.flush(120):
            raise SystemExit("the load's last ops were not acknowledged within 120 s")

    def _run(self) -> None:
        # Send what is due, then wait at least 1 ms for delivery reports: shorter waits make
        # librdkafka poll without waiting, a busy loop that took bench_worker half a core.
        started, seq = time.monotonic(), 0
        while not self._stop.is_set():
            due = int((time.monotonic() - started) * self.rate) + 1
            while seq < due:
                self._send(self.rnd.choice(self.names), *load_op(seq))
                seq += 1
            self.producer.poll(max(0.001, started + seq / self.rate - time.monotonic()))
        self.achieved_rate = seq / (time.monotonic() - started)


class SnapshotReader:
    """Reads every partition of the snapshot topic from its beginning into the tracker."""

    def __init__(self, s: Settings, tracker: Tracker) -> None:
        self.tracker = tracker
        self.consumer = Consumer(
            {
                **s.kafka.librdkafka(),
                "group.id": f"bench-scale-reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
            }
        )
        self.consumer.assign(
            [TopicPartition(s.topics.snapshots, p, OFFSET_BEGINNING) for p in range(PARTITIONS)]
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snapshots", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self.consumer.consume(10_000, 0.05):
                if msg.error() is None:
                    self.tracker.snapshot(orjson.loads(msg.value() or b"null"))


# -- the scenario, phase by phase --------------------------------------------------------------


class Scenario:
    """The run: pre-fill, one worker, then each step of ``steps`` as a phase of its own."""

    def __init__(self, args: argparse.Namespace, s: Settings, tmp: Path) -> None:
        self.args, self.s, self.tmp = args, s, tmp
        self.t0_wall, self.t0 = time.time(), time.monotonic()
        self.tracker = Tracker(self.t0)
        self.reader = SnapshotReader(s, self.tracker)
        self.group = GroupWatch(s, self.tracker)
        self.load = Load(s, self.tracker, item_names(args.items), args.rate)
        self.events: list[Event] = []
        self.changes: list[Change] = []
        self.workers: list[WorkerProcess] = []  # every worker started, in order
        #: the workers that should be running now (not yet signalled)
        self.alive_expected: list[WorkerProcess] = []
        self.log_dir = tmp / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.extra_env = dict(kv.split("=", 1) for kv in args.worker_env)
        self.caught_up_at: float | None = None
        self.prefill_caught_up_s = 0.0

    # -- helpers

    def note(self, text: str) -> None:
        event = Event(round(self.tracker.now(), 3), "bench", text)
        self.events.append(event)
        out.print(f"[dim]{event.t:8.2f}s[/dim] {text}")

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive()]

    def data_dir(self, name: str) -> Path:
        shared = self.args.disks == "shared"
        return self.tmp / "data" / ("shared" if shared else name)

    def start_worker(self) -> WorkerProcess:
        name = f"w{len(self.workers) + 1}"
        worker = WorkerProcess(name, self.s, self.data_dir(name), self.log_dir, self.extra_env)
        worker.start_reading(self.t0_wall, self.t0)
        self.workers.append(worker)
        return worker

    def check_workers(self, expected: list[WorkerProcess]) -> None:
        for w in expected:
            if not w.alive():
                tail = w.log_path.read_text(errors="replace")[-3000:]
                raise SystemExit(f"worker {w.name} exited with {w.proc.returncode}:\n{tail}")

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check_workers(self.alive_expected)
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def settle(self, change: Change) -> None:
        """Let the phase run its time, then until the group is complete with the workers
        alive and no partition with waiting ops has stood still for a second."""
        self.wait(self.args.kill_phase_s if change.kind == "kill" else self.args.phase_s)
        deadline = time.monotonic() + self.args.settle_max_s
        clients = {w.client_id for w in self.alive_expected}
        change.owners_after = self.group.wait_complete(clients, self.args.settle_max_s)
        while not self.tracker.settled():
            self.check_workers(self.alive_expected)
            if time.monotonic() > deadline:
                stalled = ", ".join(
                    f"p{st.partition} {st.seconds:.0f}s" for st in self.tracker.open_stalls()
                )
                self.note(f"not settled within {self.args.settle_max_s:.0f}s: {stalled}")
                break
            time.sleep(0.2)
        change.owners_after = self.group.wait_complete(clients, self.args.settle_max_s)
        change.settled_at = self.tracker.now()
        self.note(f"settled: {describe('stable', change.owners_after)}")
        change.busiest = busiest(0.5, top=5)

    def begin(self, label: str, kind: str, leaver: str | None = None) -> Change:
        before = self.changes[-1].owners_after if self.changes else {}
        change = Change(
            label, kind, self.tracker.now(), len(self.alive_expected), dict(before), {}, leaver
        )
        change.load_avg = [round(x, 2) for x in os.getloadavg()]
        self.changes.append(change)
        self.note(f"{label} (load average {' '.join(f'{x:.2f}' for x in change.load_avg)})")
        return change

    # -- the phases

    def prefill_and_first_worker(self) -> None:
        """Every item's first op, then one worker catches up with them: the state that
        every later restore has to carry."""
        self.reader.start()
        self.group.start()
        self.load.prefill()
        self.note(f"pre-filled {len(self.load.names):,} items ({self.args.items} a partition)")
        self.alive_expected = [self.start_worker()]
        self.note("w1 started")
        self.wait_caught_up(self.args.settle_max_s)
        self.prefill_caught_up_s = self.tracker.now()
        self.note("w1 caught up with the pre-fill")

    def start_load(self) -> None:
        change = self.begin(f"load starts at {self.args.rate:,} ops/s, 1 worker", "start")
        change.owners_before = self.group.wait_complete({self.workers[0].client_id}, 60)
        self.load.start()
        self.settle(change)

    def join(self) -> None:
        name = f"w{len(self.workers) + 1}"
        change = self.begin(f"{name} joins ({len(self.alive_expected) + 1} workers)", "join")
        self.alive_expected = [*self.alive_expected, self.start_worker()]
        self.settle(change)

    def leave(self, sig: signal.Signals) -> None:
        """SIGTERM goes to the second-oldest worker alive, SIGKILL to the oldest."""
        victim = self.alive_expected[
            1 if sig == signal.SIGTERM and len(self.alive_expected) > 1 else 0
        ]
        kind = "term" if sig == signal.SIGTERM else "kill"
        change = self.begin(
            f"{victim.name} gets {sig.name} ({len(self.alive_expected) - 1} workers)",
            kind,
            leaver=victim.client_id,
        )
        self.alive_expected = [w for w in self.alive_expected if w is not victim]
        change.workers_after = len(self.alive_expected)
        victim.signal(sig)
        if sig == signal.SIGTERM:
            code = victim.wait_exit(120)
            self.note(f"{victim.name} exited with {code}")
        else:
            victim.wait_exit(10)
        self.settle(change)

    def drain(self) -> None:
        """Stop the load; the workers left catch up with every op."""
        change = self.begin("load stops; the workers catch up", "drain")
        change.owners_before = change.owners_after = dict(self.changes[-2].owners_after)
        self.load.stop()
        self.note(
            f"load stopped: {self.load.sent:,} ops sent, {self.load.achieved_rate:,.0f} ops/s"
        )
        if self.wait_caught_up(self.args.drain_max_s):
            self.caught_up_at = self.tracker.now()
            change.settled_at = self.caught_up_at
            self.note(f"caught up: no op waiting ({self.tracker.snapshots:,} snapshots read)")
        # anything later would be a stale or duplicate snapshot: it counts in the end state
        time.sleep(2.0)

    def wait_caught_up(self, timeout: float) -> bool:
        """Until every op sent is acknowledged and visible; False if not within ``timeout``."""
        deadline = time.monotonic() + timeout
        while (
            self.tracker.acked + self.tracker.failed < self.load.sent or self.tracker.ops_waiting()
        ):
            self.check_workers(self.alive_expected)
            if time.monotonic() > deadline:
                self.note(f"{self.tracker.ops_waiting():,} ops not visible after {timeout:.0f}s")
                return False
            time.sleep(0.2)
        return True

    def run(self) -> None:
        self.prefill_and_first_worker()
        self.start_load()
        for step in self.args.steps:
            if step == "join":
                self.join()
            elif step == "term":
                self.leave(signal.SIGTERM)
            elif step == "kill":
                self.leave(signal.SIGKILL)
            else:
                raise SystemExit(f"unknown step {step!r}: join, term or kill")
        self.drain()

    def close(self) -> None:
        self.reader.stop()
        self.group.stop()
        for w in self.workers:
            w.stop()

    # -- the figures

    def end_state(self) -> EndState:
        """Each item's newest snapshot against the reference: the tokens of its ``log`` show
        each append lost or applied twice; its counter the net of the increments."""
        ref = self.load.ref
        lost = twice = equal = missing = 0
        examples: list[str] = []
        with self.tracker.lock:
            latest = dict(self.tracker.latest)
        for name, (changes, hash_, value_json) in ref.items.items():
            snap = latest.get(name)
            if snap is None:
                missing += 1
                lost += changes
                continue
            if (snap["changes"], snap["hash"], canonical(snap["value"])) == (
                changes,
                hash_,
                value_json,
            ):
                equal += 1
                continue
            want = orjson.loads(value_json)
            got = snap["value"] or {}
            want_log = Counter(t for t in want.get("log", "").split(";") if t)
            got_log = Counter(t for t in str(got.get("log", "")).split(";") if t)
            lost += sum((want_log - got_log).values())
            twice += sum((got_log - want_log).values())
            n_diff = int(got.get("n", 0)) - int(want.get("n", 0))
            lost, twice = lost + max(0, -n_diff), twice + max(0, n_diff)
            if len(examples) < 5:
                examples.append(
                    f"{name}: changes {snap['changes']} want {changes}, n {got.get('n')} "
                    f"want {want.get('n')}, log tokens missing {len(want_log - got_log)} "
                    f"extra {len(got_log - want_log)}"
                )
        return EndState(
            items=len(ref.items),
            equal=equal,
            differ=len(ref.items) - equal - missing,
            missing=missing,
            ops_produced=ref.ops,
            ops_failed=self.tracker.failed,
            lost=lost,
            twice=twice,
            dead_letters=dead_letters(self.s),
            caught_up_s=None if self.caught_up_at is None else round(self.caught_up_at, 3),
            ops_waiting=self.tracker.ops_waiting(),
            examples=examples,
        )

    def all_stalls(self) -> list[Stall]:
        with self.tracker.lock:
            done = list(self.tracker.stalls)
        return done + self.tracker.open_stalls()

    def figures(self) -> list[ChangeFigures]:
        stalls = self.all_stalls()
        with self.tracker.lock:
            visible_at, lags = array("d", self.tracker.visible_at), array("d", self.tracker.lags)
        end = self.tracker.now()
        result = []
        for k, change in enumerate(self.changes):
            until = self.changes[k + 1].at if k + 1 < len(self.changes) else end
            window = sorted(
                lags[bisect_left(visible_at, change.at) : bisect_left(visible_at, until)]
            )
            moved = change.moved()
            if change.leaver is not None:
                moved |= {p for p, o in change.owners_before.items() if o == change.leaver}
            in_window = [st for st in stalls if change.at <= st.end < until]

            def longest(group: list[Stall]) -> float:
                return round(max((st.seconds for st in group), default=0.0), 3)

            handover: dict[int, Stall] = {}
            for st in in_window:
                if st.partition not in moved or st.seconds < STALL_SHOWN_S:
                    continue
                if st.partition not in handover or st.seconds > handover[st.partition].seconds:
                    handover[st.partition] = st
            resumed = [st.end - change.at for st in handover.values()]
            result.append(
                ChangeFigures(
                    label=change.label,
                    at_s=round(change.at, 3),
                    window_s=round(until - change.at, 3),
                    settled_after_s=None
                    if change.settled_at is None
                    else round(change.settled_at - change.at, 3),
                    moved=sorted(moved),
                    ops_visible=len(window),
                    worst_lag_s=round(window[-1], 3) if window else 0.0,
                    p99_lag_s=round(percentile(window, 0.99), 3),
                    p50_lag_s=round(percentile(window, 0.50), 3),
                    longest_stall_moved_s=longest([s for s in in_window if s.partition in moved]),
                    longest_stall_unmoved_s=longest(
                        [s for s in in_window if s.partition not in moved]
                    ),
                    moved_resumed_after_s=round(max(resumed), 3) if resumed else None,
                    unresolved_stalls=sum(1 for s in in_window if not s.resolved),
                    restores=len(restores := self.restores(change.at, until)),
                    restore_s=round(sum(restores), 3),
                    load_avg=change.load_avg,
                    busiest=change.busiest,
                )
            )
        return result

    def restores(self, since: float, until: float) -> list[float]:
        """The seconds of each restore a worker logged in the window ("restored ... in 1.2s")."""
        found = []
        for w in self.workers:
            for e in w.events:
                if since <= e.t < until and (m := _RESTORED.search(e.text)):
                    found.append(float(m.group(1)))
        return found

    def timeline(self) -> list[Event]:
        """Every event in time order; a worker's run of per-partition lines as one line."""
        resumed = [
            Event(
                round(st.end, 3),
                "bench",
                f"p{st.partition} resumed after {st.seconds:.1f}s without progress"
                + ("" if st.resolved else " (still stalled at the end)"),
            )
            for st in self.all_stalls()
            if st.seconds >= STALL_SHOWN_S
        ]
        raw = sorted(
            [
                *self.events,
                *self.group.events,
                *resumed,
                *(e for w in self.workers for e in w.events),
            ],
            key=lambda e: e.t,
        )
        merged: list[Event] = []
        runs: dict[tuple[str, str], tuple[int, list[int], float]] = {}
        for e in raw:
            m = _PER_PARTITION.match(e.text)
            if m is None:
                merged.append(e)
                continue
            key = (e.source, m.group(1))
            run = runs.get(key)
            if run is not None and e.t - run[2] < 1.0:
                index, parts, _ = run
                parts.append(int(m.group(3)))
                runs[key] = (index, parts, e.t)
                first = merged[index]
                merged[index] = Event(
                    first.t, first.source, f"{m.group(1)} {ranges(parts)} (until {e.t:.2f}s)"
                )
            else:
                runs[key] = (len(merged), [int(m.group(3))], e.t)
                merged.append(Event(e.t, e.source, f"{m.group(1)} {m.group(3)}"))
        return merged


def percentile(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else 0.0


def dead_letters(s: Settings) -> int:
    """Messages in the dead-letter topic (an op refused as late would be one)."""
    consumer = Consumer({**s.kafka.librdkafka(), "group.id": f"bench-dl-{uuid.uuid4().hex}"})
    try:
        meta = consumer.list_topics(s.topics.dead_letter, timeout=10).topics[s.topics.dead_letter]
        total = 0
        for p in meta.partitions:
            lo, hi = consumer.get_watermark_offsets(
                TopicPartition(s.topics.dead_letter, p), timeout=10
            )
            total += hi - lo
        return total
    finally:
        consumer.close()


# -- the report --------------------------------------------------------------------------------


def print_report(
    args: argparse.Namespace, timeline: list[Event], figures: list[ChangeFigures], end: EndState
) -> None:
    out.rule(f"timeline ({args.disks} disks)")
    for e in timeline:
        out.print(f"{e.t:8.2f}s  {e.source:<6} {e.text}", highlight=False, markup=False)
    table = Table(
        title=f"bench_scale: {PARTITIONS} partitions, {args.rate:,} ops/s, {args.disks} disks, "
        f"{args.items} items a partition",
        caption="lag: produce acknowledgement to a snapshot of the op's item that includes it; "
        "stall: a partition with waiting ops whose visible offset did not advance; moved "
        "processed again: the end of each moved partition's longest stall",
    )
    for col in (
        "change",
        "at s",
        "moved",
        "worst lag s",
        "p99 / p50 lag s",
        "longest stall, moved s",
        "longest stall, unmoved s",
        "moved processed again after s",
        "restores (s)",
        "settled after s",
    ):
        table.add_column(col, justify="left" if col in ("change", "moved") else "right")
    for f in figures:
        table.add_row(
            f.label,
            f"{f.at_s:.1f}",
            ranges(f.moved),
            f"{f.worst_lag_s:.2f}",
            f"{f.p99_lag_s:.2f} / {f.p50_lag_s:.3f}",
            f"{f.longest_stall_moved_s:.2f}",
            f"{f.longest_stall_unmoved_s:.2f}",
            "-" if f.moved_resumed_after_s is None else f"{f.moved_resumed_after_s:.2f}",
            f"{f.restores} ({f.restore_s:.1f})",
            "-" if f.settled_after_s is None else f"{f.settled_after_s:.1f}",
        )
    out.print(table)
    print_end_state(end)


def print_end_state(end: EndState) -> None:
    state = Table(title="end state against the reference")
    columns = ("items", "equal", "differ", "missing", "ops", "failed", "lost", "twice", "dead")
    for col in (*columns, "caught up at s"):
        state.add_column(col, justify="right")
    state.add_row(
        f"{end.items:,}",
        f"{end.equal:,}",
        f"{end.differ:,}",
        f"{end.missing:,}",
        f"{end.ops_produced:,}",
        f"{end.ops_failed:,}",
        f"{end.lost:,}",
        f"{end.twice:,}",
        f"{end.dead_letters:,}",
        "no" if end.caught_up_s is None else f"{end.caught_up_s:.1f}",
    )
    out.print(state)
    if end.caught_up_s is None:
        out.print(f"  not caught up: {end.ops_waiting:,} ops not visible", highlight=False)
    for example in end.examples:
        out.print(f"  differs: {example}", highlight=False)


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--disks", choices=("separate", "shared"), default="separate")
    ap.add_argument("--rate", type=int, default=8_000, help="ops/s of the steady load")
    ap.add_argument("--items", type=int, default=300, help="items pre-filled per partition")
    ap.add_argument("--phase-s", type=float, default=25.0, help="each phase at least this long")
    ap.add_argument(
        "--kill-phase-s",
        type=float,
        default=25.0,
        help="the SIGKILL phase at least this long (it lasts until the group settles anyway)",
    )
    ap.add_argument(
        "--settle-max-s",
        type=float,
        default=600.0,
        help="a phase goes on to the next after this long unsettled (noted in the timeline); "
        "the current worker took up to 7 minutes to settle a SIGKILL at the default load",
    )
    ap.add_argument(
        "--drain-max-s",
        type=float,
        default=900.0,
        help="how long the workers may take to catch up once the load stops",
    )
    ap.add_argument(
        "--steps",
        type=lambda text: text.split(","),
        default=list(STEPS),
        help="membership changes after the first worker, comma-separated: join, term, kill",
    )
    ap.add_argument("--quick", action="store_true", help="2,000 ops/s, 50 items, 8 s phases")
    ap.add_argument("--bootstrap", help="an existing broker; default: a private local broker")
    ap.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="DYNO_X=Y",
        help="extra environment of every worker (e.g. a group protocol to compare)",
    )
    ap.add_argument("--json", type=Path, help="default bench/results/scale-<disks>.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.rate, args.items, args.phase_s = 2_000, 50, 8.0
        args.kill_phase_s = min(args.kill_phase_s, 8.0)
    if args.json is None:
        args.json = RESULTS / f"scale-{args.disks}.json"
    return args


def run_bench(args: argparse.Namespace, bootstrap: str, tmp: Path) -> dict[str, Any]:
    """The scenario on ``bootstrap``; its report. Its Kafka clients are gone on return."""
    load_before = os.getloadavg()
    beside = busiest()
    s = bench_settings(bootstrap, tmp / "data", PARTITIONS)
    ensure_topics(s)
    scenario = Scenario(args, s, tmp)
    try:
        try:
            scenario.run()
        finally:
            scenario.close()
        timeline = scenario.timeline()
        figures = scenario.figures()
        end = scenario.end_state()
    finally:
        kept = args.json.with_suffix(".logs")
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(scenario.log_dir, kept)
    print_report(args, timeline, figures, end)
    return {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "busiest_before": beside,
        },
        "prefill_caught_up_s": round(scenario.prefill_caught_up_s, 3),
        "ops_sent": scenario.load.sent,
        "achieved_rate": round(scenario.load.achieved_rate),
        "changes": [asdict(f) for f in figures],
        "end_state": asdict(end),
        "timeline": [asdict(e) for e in timeline],
    }


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # so the workers and the private broker are stopped


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with scratch("dyno-bench-scale-") as tmp:
        own = None if args.bootstrap else tmp / "broker"
        with bench_broker(args.bootstrap, own_in=own) as bootstrap:
            report = run_bench(args, bootstrap, tmp)
            gc.collect()  # the scenario's Kafka clients, before their broker goes
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, report)
    out.print(f"figures in {args.json}; worker logs in {args.json.with_suffix('.logs')}")
    end = report["end_state"]
    if end["lost"] or end["twice"] or end["missing"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
