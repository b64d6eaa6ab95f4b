"""The fault suite: a worker killed at random points, the broker restarted or hanging, a
failing disk.

Real parts throughout: worker processes (``python -m dyno_stream worker``), the real Kafka
broker, LevelDB on disk. Each test streams ops and then holds the outcome to the ops that were
produced: every item's last snapshot equal to the reference model (bench/reference.py: value,
``changes`` and hash exact), every snapshot ever published a true prefix
of its item's history (``helpers.published``: an op applied twice or skipped changes the hash),
the stores equal to the model, nothing dead-lettered.

CI runs each test at a reduced size; ``make faults`` (``DYNO_FAULTS_FULL=1``) runs the issue's
full size and writes the figures to ``bench/results/faults.json``. Every run draws a fresh
seed (printed; ``DYNO_FAULTS_SEED`` repeats it).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from helpers import (
    FAULTS_FULL,
    REPO,
    Produced,
    Reference,
    WorkerProcess,
    assignment,
    check_against_reference,
    faults_size,
    free_port_pair,
    kill_plan,
    only_items,
    published,
    random_op,
    read_topic,
    record_figures,
    set_group_config,
    store_items,
    wait_caught_up,
    wait_until,
)

from dyno_stream.client import DynoClient, MaterializedView
from dyno_stream.client.http import http_get
from dyno_stream.config import Settings
from dyno_stream.core.errors import PublishError
from dyno_stream.devtools.broker import LocalBroker
from dyno_stream.kafka.topics import ensure_topics
from dyno_stream.store.partition import PartitionStore

pytestmark = pytest.mark.faults

#: Each run draws its own seed, so CI tries new kill points, ops and faults every time; each
#: test prints it, and ``DYNO_FAULTS_SEED`` repeats a run.
SEED = int(os.environ.get("DYNO_FAULTS_SEED") or random.SystemRandom().randrange(2**32))
FAULT_INJECTOR = REPO / "tests" / "faultinject"


@pytest.fixture(autouse=True)
def _print_seed() -> None:
    """Shown with a failing test's output (pytest keeps what a test printed)."""
    print(f"\nfault suite seed {SEED} (DYNO_FAULTS_SEED={SEED} repeats this run)")


# ---------------------------------------------------------------------------------------------
# shared pieces
# ---------------------------------------------------------------------------------------------


class PacedProducer:
    """Sends ``n`` random ops over ``n_items`` items from a thread, at about ``rate`` ops/s,
    so that faults land while ops are still arriving."""

    def __init__(
        self, client: DynoClient, n: int, n_items: int, rate: float, rnd: random.Random
    ) -> None:
        self.produced = Produced()
        self.error: BaseException | None = None
        self._args = (client, n, n_items, rate, rnd)
        self.thread = threading.Thread(target=self._run, name="paced-producer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        client, n, n_items, rate, rnd = self._args
        started = time.monotonic()
        try:
            for i in range(0, n, 100):
                self.produced.send(
                    client, (random_op(rnd, j, n_items) for j in range(i, min(n, i + 100)))
                )
                ahead = started + (i + 100) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        except BaseException as exc:
            self.error = exc

    @property
    def count(self) -> int:
        return len(self.produced.models)

    def join(self, timeout: float) -> Produced:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"producing took over {timeout:.0f}s"
        assert self.error is None, f"the producer failed: {self.error!r}"
        return self.produced


def holds_all(w: WorkerProcess, partitions: int) -> bool:
    return w.partitions() == set(range(partitions))


def wait_assigned(w: WorkerProcess, partitions: int, timeout: float = 90) -> None:
    wait_until(
        lambda: holds_all(w, partitions) or not w.alive(),
        timeout,
        lambda: f"{w.name} holds {sorted(w.partitions())} of {partitions} partitions{w.tail()}",
    )
    assert w.alive(), f"{w.name} died while joining the group{w.tail()}"


def check_stores(
    data_dir: Path | dict[int, Path],
    s: Settings,
    ref: Reference,
    produced: Produced,
    *,
    restored: bool = False,
) -> None:
    """The worker's stores (after it stopped) hold every item exactly as the reference says,
    with one row per op (``count == changes``: no op stored twice).

    ``data_dir``: one for every partition, or each partition's own (its last owner's disk).
    ``restored``: the stores were restored from snapshots, so an item holds one row for its
    snapshot and one per op after it (``count <= changes``); the hash still proves every op
    applied once."""
    part_of = produced.partitions()
    seen = 0
    for p in range(s.topics.partitions):
        disk = data_dir if isinstance(data_dir, Path) else data_dir[p]
        path = disk / s.topics.ops / f"{p:04d}"
        items = store_items(path)
        mine = {n for n, q in part_of.items() if q == p and ref.value(n) is not None}
        assert set(items) == mine, f"partition {p}: items {len(items)}, expected {len(mine)}"
        check_against_reference(items, only_items(ref, mine), f"store {p}")
        doubled = [
            (n, i.count, i.changes)
            for n, i in items.items()
            if (i.count > i.changes if restored else i.count != i.changes)
        ]
        assert not doubled, f"items with rows beyond their ops: {doubled[:3]}"
        seen += len(items)
    assert seen == sum(1 for n in ref.changes if ref.value(n) is not None)


def dead_letters(s: Settings) -> int:
    return len(read_topic(s, s.topics.dead_letter))


# ---------------------------------------------------------------------------------------------
# SIGKILL at random points
# ---------------------------------------------------------------------------------------------

KILL_ITEMS = 1_000
KILL_PARTITIONS = 4
#: Seconds from one kill to the next worker holding the partitions: start-up, then the
#: killed member's session timing out (3 s) before the group rebalances.
CYCLE_S = 6.0
#: A start-up kill comes at most this long after the worker was started: before the killed
#: predecessor's session (3 s, fast_group) times out, so before the group can have handed
#: the new worker its partitions.
START_UP_KILL_WITHIN_S = 2.0


def test_worker_sigkilled_at_random_points_loses_nothing_applies_nothing_twice(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    n_ops = faults_size(20_000, 200_000)
    kills = faults_size(5, 20)
    rnd = random.Random(SEED)
    plan = kill_plan(kills, rnd)
    started = time.monotonic()
    s = make_settings(partitions=KILL_PARTITIONS)
    ensure_topics(s)
    data_dir = tmp_path / "data"
    runs: list[WorkerProcess] = []

    def start_worker() -> WorkerProcess:
        w = WorkerProcess(s, f"run{len(runs)}", tmp_path, data_dir=data_dir)
        runs.append(w)
        return w

    w = start_worker()
    kill_log: list[dict[str, Any]] = []
    try:
        wait_assigned(w, KILL_PARTITIONS)
        with DynoClient(s) as client, MaterializedView(s) as view:
            # spread the ops over the kills before the idle ones, so each restart finds a
            # backlog to work through
            streaming = sum(1 for p in plan if p != "idle")
            producer = PacedProducer(
                client, n_ops, KILL_ITEMS, n_ops / (streaming * CYCLE_S), random.Random(SEED + 1)
            )
            for k, intended in enumerate(plan):
                born = time.monotonic()
                if intended == "start-up":  # joining the group, or opening the stores
                    time.sleep(rnd.uniform(0.2, START_UP_KILL_WITHIN_S))
                elif intended == "backlog":
                    wait_assigned(w, KILL_PARTITIONS)
                    time.sleep(rnd.uniform(0, 0.5))
                else:  # idle: every op produced, and applied as far as the snapshots show
                    producer.join(600)
                    client.flush(120)
                    wait_assigned(w, KILL_PARTITIONS)
                    wait_caught_up(view, producer.produced.reference(), 300, w.tail())
                    time.sleep(rnd.uniform(0.5, 3.0))
                assert w.alive(), f"{w.name} died before it was killed{w.tail()}"
                held = sorted(w.partitions())
                still_producing = producer.count < n_ops
                w.proc.kill()  # SIGKILL: no revoke, no flush, no goodbye to the group
                assert w.proc.wait(10) == -signal.SIGKILL
                # the phase as observed at the kill, not as intended
                if len(held) < KILL_PARTITIONS:
                    phase = "start-up"
                elif intended == "idle":
                    phase = "idle"
                else:  # "draining": every op sent, its application not yet confirmed
                    phase = "backlog" if still_producing else "draining"
                kill_log.append(
                    {
                        "kill": k,
                        "phase": phase,
                        "after_s": round(time.monotonic() - born, 2),
                        "held": held,
                        "produced": producer.count,
                    }
                )
                w = start_worker()
            produced = producer.join(600)
            client.flush(120)
        assert len(produced.models) == n_ops
        ref = produced.reference()
        produced_at = time.monotonic() - started

        with MaterializedView(s) as view:
            wait_assigned(w, KILL_PARTITIONS)
            wait_caught_up(view, ref, 300, w.tail())
        caught_up_at = time.monotonic() - started
        w.proc.send_signal(signal.SIGTERM)
        assert w.wait_exit(60) == 0, w.tail()
        for run in runs[:-1]:
            assert run.proc.returncode == -signal.SIGKILL, run.tail()

        history = published(read_topic(s, s.topics.snapshots, timeout=300), produced.models)
        during = sum(1 for k in kill_log if k["produced"] < n_ops)
        phases = [k["phase"] for k in kill_log]
        record_figures(
            "sigkill",
            kills_survived=kills,
            kills_while_producing=during,
            kills_by_phase={p: phases.count(p) for p in sorted(set(phases))},
            kills=kill_log,
            ops_produced=n_ops,
            items=len(ref.changes),
            snapshots_published=history.snapshots,
            ops_lost=history.ops_lost,
            ops_applied_twice=history.ops_applied_twice,
            seed=SEED,
            produced_s=round(produced_at, 1),
            caught_up_s=round(caught_up_at, 1),
        )
        history.check()
        check_against_reference(history.last, ref, "the last snapshots")
        assert dead_letters(s) == 0, "ops were dead-lettered"
        check_stores(data_dir, s, ref, produced)
        # the kills really landed among the ops: most while they were still being produced
        assert during >= kills // 2, kill_log
        # and in every phase the plan promised (a start-up kill came after the group could
        # hand the worker its partitions: the machine was too slow for the plan)
        assert {"start-up", "backlog", "idle"} <= set(phases), kill_log
    finally:
        for run in runs:
            run.cleanup()


# ---------------------------------------------------------------------------------------------
# the broker stopped and started again mid-stream
# ---------------------------------------------------------------------------------------------


def test_broker_restarts_mid_stream_worker_and_client_ride_them_out(
    make_settings: Callable[..., Settings], own_broker: LocalBroker, tmp_path: Path
) -> None:
    restarts = faults_size(1, 3)
    n_ops = faults_size(6_000, 30_000)
    n_items = 300
    down_s = 5.0
    base = make_settings(partitions=2)
    s = base.model_copy(
        update={"kafka": base.kafka.model_copy(update={"bootstrap_servers": own_broker.bootstrap})}
    )
    ensure_topics(s)
    http_port = free_port_pair()
    w = WorkerProcess(s, "w", tmp_path, env={"DYNO_WORKER__HTTP_PORT": str(http_port)})
    failed_elsewhere: list[Any] = []
    try:
        wait_assigned(w, 2)
        pid = w.proc.pid
        # a client that waits out an outage (its default is the publish timeout, 60 s)...
        with DynoClient(s) as client:
            producer = PacedProducer(
                client, n_ops, n_items, n_ops / (restarts * 30.0), random.Random(SEED + 2)
            )
            outages = []
            for r in range(restarts):
                wait_until(
                    lambda r=r: producer.count >= (r + 1) * n_ops // (restarts + 1),  # type: ignore[misc]
                    120,
                    lambda: f"only {producer.count} ops produced",
                )
                went_down = time.monotonic()
                assert own_broker.stop(), "the broker was not running"
                # ... and one that gives up after 3 s: its ops fail, and it says so
                with DynoClient(s, **{"message.timeout.ms": 3000}) as impatient:
                    futures = [impatient.put_attrs(f"never-{r}-{i}", {"i": i}) for i in range(20)]
                    wait_futures(futures, timeout=60)
                    for f in futures:
                        exc = f.exception(0)
                        if not isinstance(exc, PublishError):
                            failed_elsewhere.append((r, exc))
                time.sleep(max(0.0, down_s - (time.monotonic() - went_down)))
                own_broker.start(timeout=180)
                outages.append(round(time.monotonic() - went_down, 1))
                assert w.alive(), f"the worker died with the broker down{w.tail()}"
            produced = producer.join(600)
            client.flush(120)
        assert not failed_elsewhere, (
            f"ops sent with the broker down, not failed: {failed_elsewhere}"
        )
        assert len(produced.models) == n_ops
        part_of = produced.partitions()  # every op of the patient client was acknowledged
        assert len(part_of) == n_items
        ref = produced.reference()

        with MaterializedView(s) as view:
            wait_caught_up(view, ref, 180, w.tail())
            snapshots = dict(view)
        assert w.alive() and w.proc.pid == pid, "the worker was restarted"
        status, body, _ = http_get(f"http://127.0.0.1:{http_port}/healthz", timeout=10)
        assert status == 200, body
        w.proc.send_signal(signal.SIGTERM)
        assert w.wait_exit(60) == 0, w.tail()
        assert w.text().count("worker starting") == 1

        history = published(read_topic(s, s.topics.snapshots), produced.models)
        record_figures(
            "broker_restart",
            broker_restarts=restarts,
            outages_s=outages,
            ops_produced=n_ops,
            ops_failed_and_reported=restarts * 20,
            snapshots_published=history.snapshots,
            ops_lost=history.ops_lost,
            ops_applied_twice=history.ops_applied_twice,
        )
        history.check()
        check_against_reference(history.last, ref, "the last snapshots")
        # the impatient client's ops never reached the worker
        assert not [n for n in snapshots if n.startswith("never-")]
        assert dead_letters(s) == 0, "ops were dead-lettered"
        check_stores(w.data_dir, s, ref, produced)
    finally:
        w.cleanup()


def caught_in_flight(w: WorkerProcess) -> bool:
    """Whether a batch's snapshots failed to publish (the worker says it pauses)."""
    return "pausing every partition until Kafka takes what is pending" in w.text()


def test_broker_hanging_past_the_publish_timeout_the_worker_waits_it_out(
    make_settings: Callable[..., Settings], own_broker: LocalBroker, tmp_path: Path
) -> None:
    """The broker stops answering (SIGSTOP: a long GC pause, a network partition) while the
    worker is publishing, for longer than the worker's publish timeout (3 s here, 60 s by
    default): the batch's snapshots fail, and the worker must publish them again once the
    broker answers, not exit."""
    # 5 s: past the publish timeout; 8 s: past the consumer's session timeout (6 s here, set
    # for the group below) too, so the group also loses the worker and takes it back
    hangs = [5.0] if not FAULTS_FULL else [5.0, 8.0, 5.0, 8.0, 5.0]
    n_ops = faults_size(4_000, 20_000)
    base = make_settings(partitions=2)
    s = base.model_copy(
        update={"kafka": base.kafka.model_copy(update={"bootstrap_servers": own_broker.bootstrap})}
    )
    ensure_topics(s)
    # one op per batch: with ops arriving steadily the worker is nearly always publishing,
    # so each hang catches a batch between produce and acknowledgement
    w = WorkerProcess(
        s,
        "w",
        tmp_path,
        env={"DYNO_WORKER__PUBLISH_TIMEOUT_S": "3", "DYNO_WORKER__BATCH_SIZE": "1"},
    )
    set_group_config(s, {"consumer.session.timeout.ms": "6000"})  # a 5 s hang stays within
    broker_pid = own_broker.status().pid
    assert broker_pid is not None
    try:
        wait_assigned(w, 2)
        pid = w.proc.pid
        with DynoClient(s, **{"message.timeout.ms": 300_000}) as client:
            producer = PacedProducer(client, n_ops, 200, 400, random.Random(SEED + 5))
            for h, hang_s in enumerate(hangs):
                wait_until(
                    lambda h=h: producer.count >= (h + 1) * n_ops // (len(hangs) + 1),  # type: ignore[misc]
                    120,
                    lambda: f"only {producer.count} ops produced",
                )
                os.kill(broker_pid, signal.SIGSTOP)
                try:
                    time.sleep(hang_s)
                finally:
                    os.kill(broker_pid, signal.SIGCONT)
                assert w.alive(), f"the worker died while the broker hung{w.tail(3000)}"
            # A hang that met no batch in flight (the worker idle between two ops) proves
            # nothing: hang again, while ops still flow, until one has (seen once in three
            # whole-suite runs with the one reduced hang)
            for _ in range(3):
                if caught_in_flight(w) or producer.count >= n_ops:
                    break
                os.kill(broker_pid, signal.SIGSTOP)
                try:
                    time.sleep(hangs[0])
                finally:
                    os.kill(broker_pid, signal.SIGCONT)
                wait_until(lambda: w.alive(), 5, w.tail)
            produced = producer.join(600)
            client.flush(120)
        ref = produced.reference()
        with MaterializedView(s) as view:
            wait_caught_up(view, ref, 180, w.tail())
        assert w.alive() and w.proc.pid == pid, f"the worker was restarted{w.tail(3000)}"
        w.proc.send_signal(signal.SIGTERM)
        assert w.wait_exit(60) == 0, w.tail()
        waited = w.text().count("publishing again")
        history = published(read_topic(s, s.topics.snapshots), produced.models)
        record_figures(
            "broker_hang",
            broker_hangs=len(hangs),
            hangs_s=hangs,
            publish_timeout_s=3,
            publish_failures_waited_out=waited,
            ops_produced=n_ops,
            ops_lost=history.ops_lost,
            ops_applied_twice=history.ops_applied_twice,
        )
        history.check()
        check_against_reference(history.last, ref, "the last snapshots")
        check_stores(w.data_dir, s, ref, produced)
        # the hangs really caught batches in flight (else this test proves nothing)
        assert waited >= 1, "no publish failed: no hang caught a batch in flight"
    finally:
        w.cleanup()


# ---------------------------------------------------------------------------------------------
# LevelDB refuses a write: an injected fault, and a real full disk
# ---------------------------------------------------------------------------------------------


def committed_offsets(s: Settings) -> dict[int, int]:
    consumer = Consumer({**s.kafka.librdkafka(), "group.id": s.worker.group_id})
    try:
        tps = [TopicPartition(s.topics.ops, p) for p in range(s.topics.partitions)]
        return {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=30)}
    finally:
        consumer.close()


def store_offsets(data_dir: Path, s: Settings) -> dict[int, int | None]:
    out = {}
    for p in range(s.topics.partitions):
        ps = PartitionStore.open(data_dir, s.topics.ops, p, sync=False)
        out[p] = ps.next_offset
        ps.close()
    return out


def run_write_fault(
    s: Settings,
    tmp_path: Path,
    data_dir: Path,
    produced: Produced,
    faulty_env: dict[str, str],
    clear_fault: Callable[[], None],
    name: str,
) -> dict[str, Any]:
    """A worker whose store refuses writes part-way through a backlog; then a restart.

    The faulty worker must exit with status 1, saying which store failed and why, with no
    Kafka offset committed past what its store holds; once the fault is cleared, a new worker
    on the same disk must end with every op applied exactly once.
    """
    ops_end = {p: 0 for p in range(s.topics.partitions)}
    for f in produced.futures:
        d = f.result(60)
        ops_end[d.partition] = max(ops_end[d.partition], d.offset + 1)
    ref = produced.reference()

    faulty = WorkerProcess(s, f"{name}-faulty", tmp_path, data_dir=data_dir, env=faulty_env)
    try:
        code = faulty.proc.wait(180)
    except subprocess.TimeoutExpired:
        faulty.cleanup()
        pytest.fail(f"the worker went on with a failing store{faulty.tail(3000)}")
    log = faulty.text()
    assert code == 1, f"exit status {code}, expected 1{faulty.tail(3000)}"
    assert f"LevelDB write to {data_dir}" in log, faulty.tail(3000)
    assert "stopping without committing the batch" in log, faulty.tail(3000)
    assert "Traceback" not in log, faulty.tail(3000)
    print(f"\n{name}: the worker's last words:\n" + "\n".join(log.splitlines()[-4:]))

    clear_fault()  # before reading the stores: LevelDB writes when it opens one
    stored = store_offsets(data_dir, s)
    committed = committed_offsets(s)
    for p in range(s.topics.partitions):
        # Kafka's committed offset is never past the store's own: nothing of the failed batch
        # counts as consumed anywhere
        assert committed[p] < 0 or committed[p] <= (stored[p] or 0), (p, committed, stored)
    behind = sum(ops_end[p] - (stored[p] or 0) for p in ops_end)
    assert behind > 0, f"the fault came after the last op: stored {stored}, ends {ops_end}"

    worker = WorkerProcess(s, f"{name}-after", tmp_path, data_dir=data_dir)
    try:
        with MaterializedView(s) as view:
            wait_caught_up(view, ref, 180, worker.tail())
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.wait_exit(60) == 0, worker.tail()
    finally:
        worker.cleanup()
    history = published(read_topic(s, s.topics.snapshots), produced.models)
    history.check()
    check_against_reference(history.last, ref, "the last snapshots")
    assert dead_letters(s) == 0, "ops were dead-lettered"
    check_stores(data_dir, s, ref, produced)
    return {
        "ops_produced": len(produced.models),
        "ops_behind_at_fault": behind,
        "leveldb_faults_survived": 1,
        "ops_lost": history.ops_lost,
        "ops_applied_twice": history.ops_applied_twice,
    }


def produce_backlog(s: Settings, n: int, n_items: int, seed: int, pad: int = 0) -> Produced:
    """``n`` ops, all acknowledged before any worker runs (a backlog to fail in the middle of);
    ``pad`` bytes of text in each putAttrs make the rows larger."""
    produced = Produced()
    rnd = random.Random(seed)
    filler = "x" * pad
    with DynoClient(s) as client:
        models = []
        for i in range(n):
            m = random_op(rnd, i, n_items)
            if pad and m.op == "putAttrs":
                m = m.model_copy(update={"change": {**m.change_value, "pad": filler}})
            models.append(m)
        produced.send(client, models)
        client.flush(120)
    return produced


def test_leveldb_write_failure_stops_the_worker_and_a_restart_recovers(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """An injected fault: the store's 8th write batch and every later one fail."""
    s = make_settings(partitions=2)
    ensure_topics(s)
    produced = produce_backlog(s, faults_size(10_000, 50_000), 500, SEED + 3)
    figures = run_write_fault(
        s,
        tmp_path,
        tmp_path / "data",
        produced,
        {
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(FAULT_INJECTOR), os.environ.get("PYTHONPATH")])
            ),
            "DYNO_FAULT_LEVELDB_WRITES": "8",
            # small batches, so the fault lands in the middle of the backlog
            "DYNO_WORKER__BATCH_SIZE": "500",
        },
        lambda: None,  # the next worker runs without the injector
        "injected",
    )
    record_figures("leveldb_write_fault", **figures)


def _can_mount() -> bool:
    """Whether a tmpfs can be mounted (root); ``DYNO_FAULTS_NO_MOUNT=1`` says no, to run the
    file-size limit's variant of the full disk as root too."""
    if os.environ.get("DYNO_FAULTS_NO_MOUNT", "") not in ("", "0"):
        return False
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path | None]:
    """A 1 MB tmpfs at ``tmp_path/disk`` when the tests run as root (unmounted at the end),
    else None."""
    if not _can_mount():
        yield None
        return
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


#: The file-size limit a worker runs under where no tmpfs can be mounted: a third of what each
#: store's LevelDB log reaches over the CI backlog (about 800 KB), so a write fails part-way.
FILE_SIZE_LIMIT = 256 * 1024


def test_full_disk_stops_the_worker_and_a_restart_after_growing_it_recovers(
    make_settings: Callable[..., Settings], tmp_path: Path, small_disk: Path | None
) -> None:
    """The operating system refuses a write of LevelDB's: as root the stores live on a 1 MB
    tmpfs, grown to 256 MB once the worker has stopped on it (ENOSPC, a full disk); else the
    worker runs under a 256 KB file-size limit (RLIMIT_FSIZE, set by the fault injector: a
    write past it fails with EFBIG), which the restarted worker runs without."""
    s = make_settings(partitions=2)
    ensure_topics(s)
    produced = produce_backlog(s, faults_size(8_000, 40_000), 500, SEED + 4, pad=400)
    env = {"DYNO_WORKER__BATCH_SIZE": "500"}
    if small_disk is not None:
        disk = small_disk

        def lift() -> None:
            subprocess.run(["mount", "-o", "remount,size=256m", "tmpfs", str(disk)], check=True)

        data_dir, name = small_disk / "data", "tmpfs"
    else:
        env |= injected(DYNO_FAULT_FILE_SIZE_LIMIT=str(FILE_SIZE_LIMIT))

        def lift() -> None:
            pass  # the next worker runs without the limit

        data_dir, name = tmp_path / "data", "file-size-limit"
    figures = run_write_fault(s, tmp_path, data_dir, produced, env, lift, name)
    if small_disk is None:  # the worker stopped on the limit, not on anything else
        assert "File too large" in (tmp_path / f"{name}-faulty.log").read_text(errors="replace")
    record_figures("disk_full", how=name, **figures)


# ---------------------------------------------------------------------------------------------
# restores under fault: killed, revoked, a join with batches in flight, a retention gap
# ---------------------------------------------------------------------------------------------

#: Per restore, the messages of one snapshot partition that these tests restore from (some
#: 3,000 items and their snapshots): slowed by the injector to ``RESTORE_RATE`` a second,
#: a restore runs for several seconds, long enough to kill, revoke or cut it on purpose.
RESTORE_ITEMS = 6_000
RESTORE_OPS = 12_000
RESTORE_RATE = 800

_RESTORE_BEGUN = re.compile(r"faultinject: restore of partition (\d+) slowed")
_REVOKED = re.compile(r"rebalance: revoked (.+); holding")


def injected(**faults: str) -> dict[str, str]:
    """A worker's environment with the fault injector on ``PYTHONPATH`` and ``faults`` set."""
    return {
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(FAULT_INJECTOR), os.environ.get("PYTHONPATH")])
        ),
        **faults,
    }


def slow_restores(rate: int = RESTORE_RATE) -> dict[str, str]:
    return injected(DYNO_FAULT_RESTORE_ITEMS_PER_S=str(rate))


def restores_begun(w: WorkerProcess) -> set[int]:
    return {int(m.group(1)) for m in _RESTORE_BEGUN.finditer(w.text())}


def revoked(w: WorkerProcess) -> set[int]:
    out: set[int] = set()
    for m in _REVOKED.finditer(w.text()):
        for label in m.group(1).split(", "):
            topic, _, p = label.rpartition("/")
            if topic == w.ops_topic:
                out.add(int(p))
    return out


def send_more(s: Settings, produced: Produced, n: int, n_items: int, rnd: random.Random) -> None:
    """``n`` more ops into ``produced``, all acknowledged (no worker needs to run)."""
    with DynoClient(s) as client:
        produced.send(client, [random_op(rnd, i, n_items) for i in range(n)])
        client.flush(120)
    for f in produced.futures[-n:]:
        f.result(60)


def seed_snapshots(s: Settings, tmp_path: Path, rnd: random.Random) -> Produced:
    """A first worker, on a disk of its own, applies ``RESTORE_OPS`` ops over
    ``RESTORE_ITEMS`` items and publishes their snapshots, then stops: what the workers of
    the test restore from. Then a backlog that no worker has applied yet, so that every
    restore is followed by replaying ops (and skipping those its snapshots hold)."""
    w = WorkerProcess(s, "seed", tmp_path)
    produced = Produced()
    try:
        wait_assigned(w, s.topics.partitions)
        send_more(s, produced, RESTORE_OPS, RESTORE_ITEMS, rnd)
        with MaterializedView(s) as view:
            wait_caught_up(view, produced.reference(), 120, w.tail())
        w.proc.send_signal(signal.SIGTERM)
        assert w.wait_exit(60) == 0, w.tail()
    finally:
        w.cleanup()
    send_more(s, produced, 2_000, RESTORE_ITEMS, rnd)
    return produced


def check_end_state(
    s: Settings,
    produced: Produced,
    tmp_path: Path,
    stores: Path | dict[int, Path],
    name: str,
    **figures: Any,
) -> None:
    """Every snapshot ever published a true prefix of its item's ops, the last ones equal
    to the reference, nothing dead-lettered, the stores equal to the reference."""
    ref = produced.reference()
    history = published(read_topic(s, s.topics.snapshots), produced.models)
    record_figures(
        name,
        ops_produced=len(produced.models),
        items=len(ref.changes),
        snapshots_published=history.snapshots,
        ops_lost=history.ops_lost,
        ops_applied_twice=history.ops_applied_twice,
        seed=SEED,
        **figures,
    )
    history.check()
    check_against_reference(history.last, ref, "the last snapshots")
    assert dead_letters(s) == 0, "ops were dead-lettered"
    check_stores(stores, s, ref, produced, restored=True)


def stop_at_once(*workers: WorkerProcess) -> None:
    """SIGKILL them together: a worker stopped before the others would hand its partitions
    back to one whose store of them is older (a replay that republishes older snapshots,
    not what these tests are about); the stores keep what they wrote either way."""
    for w in workers:
        w.proc.kill()
    for w in workers:
        w.proc.wait(10)


def test_worker_killed_during_a_restore_the_next_run_restores_again(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """SIGKILL while both partitions are being restored onto an empty disk: the stores it
    leaves have no offset (nothing half-written to trust), and the next run on the same
    disk restores them again and applies every op once."""
    rnd = random.Random(SEED + 10)
    s = make_settings(partitions=2)
    ensure_topics(s)
    produced = seed_snapshots(s, tmp_path, rnd)
    data_dir = tmp_path / "data-restoring"
    victim = WorkerProcess(s, "killed-restoring", tmp_path, data_dir=data_dir, env=slow_restores())
    try:
        wait_until(
            lambda: restores_begun(victim) == {0, 1} or not victim.alive(),
            60,
            lambda: f"restores begun: {sorted(restores_begun(victim))}{victim.tail()}",
        )
        time.sleep(rnd.uniform(0.2, 2.0))
        assert victim.alive(), f"died while restoring{victim.tail()}"
        victim.proc.kill()
        assert victim.proc.wait(10) == -signal.SIGKILL
    finally:
        victim.cleanup()
    log = victim.text()
    # the kill landed in the restores, not after them
    assert "restored " not in log and "started " not in log, victim.tail(3000)
    assert store_offsets(data_dir, s) == {0: None, 1: None}, "a half-restored store has an offset"

    w = WorkerProcess(s, "after", tmp_path, data_dir=data_dir)
    try:
        with MaterializedView(s) as view:
            wait_caught_up(view, produced.reference(), 120, w.tail())
        wait_assigned(w, 2)
        w.proc.send_signal(signal.SIGTERM)
        assert w.wait_exit(60) == 0, w.tail()
    finally:
        w.cleanup()
    assert set(w.restored()) == {0, 1}, f"not restored again: {w.restored()}{w.tail()}"
    check_end_state(s, produced, tmp_path, data_dir, "kill_during_restore")


def test_partition_revoked_during_its_restore_the_next_owner_restores_it(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Worker A restores both partitions onto an empty disk when B joins: the partition
    that moves to B is revoked mid-restore. A's restore of it stops at once and leaves a
    store with no offset; B restores it; A finishes the other; every op applied once."""
    rnd = random.Random(SEED + 11)
    s = make_settings(partitions=2)
    ensure_topics(s)
    produced = seed_snapshots(s, tmp_path, rnd)
    # slow enough that B starts and joins while A still restores (B's start-up: 2-4 s here)
    a = WorkerProcess(s, "a", tmp_path, env=slow_restores(RESTORE_RATE // 2))
    workers = [a]
    try:
        wait_until(
            lambda: restores_begun(a) == {0, 1} or not a.alive(),
            60,
            lambda: f"restores begun: {sorted(restores_begun(a))}{a.tail()}",
        )
        assert a.alive(), a.tail()
        b = WorkerProcess(s, "b", tmp_path)
        workers.append(b)
        wait_until(
            lambda: bool(revoked(a)) or not a.alive(),
            60,
            lambda: f"nothing revoked from a{a.tail()}{b.tail()}",
        )
        moved = revoked(a)
        assert len(moved) == 1, a.tail(3000)
        (p,) = moved
        kept = 1 - p
        # revoked before its restore was done, and it stopped there
        assert f"restored {s.topics.ops}/{p}:" not in a.text(), a.tail(3000)
        assert "did not stop within" not in a.text(), a.tail(3000)
        wait_until(
            lambda: p in b.partitions() and kept in a.partitions(),
            90,
            lambda: f"{assignment(workers)}{a.tail()}{b.tail()}",
        )
        with MaterializedView(s) as view:
            wait_caught_up(view, produced.reference(), 120, a.tail() + b.tail())
        stop_at_once(a, b)
    finally:
        for w in workers:
            w.cleanup()
    assert p in b.restored() and kept in a.restored(), (a.restored(), b.restored())
    # the store A left of the moved partition: nothing in it to trust
    assert store_offsets(a.data_dir, s)[p] is None, "a half-restored store has an offset"
    check_end_state(
        s, produced, tmp_path, {p: b.data_dir, kept: a.data_dir}, "revoke_during_restore"
    )


@pytest.mark.parametrize("disks", ["separate", "shared"])
def test_join_while_batches_are_in_flight_loses_nothing_applies_nothing_twice(
    make_settings: Callable[..., Settings], tmp_path: Path, disks: str
) -> None:
    """Ops flow steadily to worker A, whose snapshots Kafka acknowledges 0.2 s late (so a
    batch is always in flight), when B joins and takes half the partitions: A must wait
    for its batches in flight before letting go, and B must neither lose nor reapply, nor
    publish a snapshot again (on a shared disk, rows A left pending would be republished)."""
    n_ops = faults_size(12_000, 60_000)
    s = make_settings(partitions=4)
    ensure_topics(s)
    shared = tmp_path / "data-shared" if disks == "shared" else None
    slow_acks = injected(DYNO_FAULT_ACK_DELAY_S="0.2")
    # never idle while ops flow (an idle turn waits for every batch in flight): a poll
    # outwaits the producer's 125 ms between chunks; 200-op batches, 3 in flight per 0.2 s,
    # keep up with 3,000 ops/s
    env = {
        **slow_acks,
        "DYNO_WORKER__BATCH_SIZE": "200",
        "DYNO_WORKER__BATCH_TIMEOUT_S": "0.5",
    }
    a = WorkerProcess(s, "a", tmp_path, data_dir=shared, env=env)
    workers = [a]
    try:
        wait_assigned(a, 4)
        with DynoClient(s) as client:
            producer = PacedProducer(client, n_ops, 500, n_ops / 15, random.Random(SEED + 13))
            # B starts early: its start-up and join must end while ops still flow, on a
            # busy machine too
            wait_until(
                lambda: producer.count >= n_ops // 10, 60, lambda: f"{producer.count} produced"
            )
            b = WorkerProcess(s, "b", tmp_path, data_dir=shared, env=env)
            workers.append(b)
            wait_until(
                lambda: len(b.partitions()) == 2 and len(a.partitions()) == 2,
                60,
                lambda: f"{assignment(workers)}{a.tail()}{b.tail()}",
            )
            joined_while_producing = producer.count < n_ops
            produced = producer.join(120)
            client.flush(120)
        with MaterializedView(s) as view:
            wait_caught_up(view, produced.reference(), 120, a.tail() + b.tail())
        stop_at_once(a, b)
    finally:
        for w in workers:
            w.cleanup()
    assert joined_while_producing, "the join came after the last op"
    # the revoke found batches in flight (else this test proves nothing about them)
    assert "batches in flight before letting go" in a.text(), a.tail(3000)
    published_twice = [
        k
        for k, n in Counter(
            (snap["item"], snap["changes"])
            for snap in (json.loads(r.value or b"null") for r in read_topic(s, s.topics.snapshots))
        ).items()
        if n > 1
    ]
    assert not published_twice, f"snapshots published twice: {published_twice[:5]}"
    owner = {p: b.data_dir for p in b.partitions()} | {p: a.data_dir for p in a.partitions()}
    check_end_state(s, produced, tmp_path, owner, f"join_with_batches_in_flight_{disks}")


def test_ops_deleted_by_retention_during_a_restore_are_said_and_the_rest_applied_once(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A worker's store is behind the ops topic's start, so it is restored from snapshots;
    while that runs, retention deletes more ops, past every snapshot's offset. The ops that
    were in no snapshot and are gone cannot be applied; the worker must say so, and apply
    every op that remains exactly once (the reference: every op but the deleted ones)."""
    rnd = random.Random(SEED + 14)
    s = make_settings(partitions=1)
    ensure_topics(s)
    admin = AdminClient(s.kafka.librdkafka())

    def delete_before(offset: int) -> None:
        tp = TopicPartition(s.topics.ops, 0, offset)
        for fut in admin.delete_records([tp]).values():
            fut.result(30)

    produced = Produced()
    first = WorkerProcess(s, "first", tmp_path)  # its store stops at offset 2,000
    try:
        wait_assigned(first, 1)
        send_more(s, produced, 2_000, 1_000, rnd)
        with MaterializedView(s) as view:
            wait_caught_up(view, produced.reference(), 60, first.tail())
        first.proc.send_signal(signal.SIGTERM)
        assert first.wait_exit(60) == 0, first.tail()
        other = WorkerProcess(s, "other", tmp_path)  # another disk: ops 2,000-5,999
        try:
            wait_assigned(other, 1)
            send_more(s, produced, 4_000, RESTORE_ITEMS, rnd)
            with MaterializedView(s) as view:
                wait_caught_up(view, produced.reference(), 60, other.tail())
            other.proc.send_signal(signal.SIGTERM)
            assert other.wait_exit(60) == 0, other.tail()
        finally:
            other.cleanup()
    finally:
        first.cleanup()
    delete_before(3_000)  # the first store (at 2,000) is now behind the topic's start
    send_more(s, produced, 2_000, RESTORE_ITEMS, rnd)  # 6,000-7,999, in no snapshot
    offsets = [f.result(60).offset for f in produced.futures]
    assert offsets == list(range(8_000))

    back = WorkerProcess(s, "back", tmp_path, data_dir=first.data_dir, env=slow_restores())
    try:
        wait_until(
            lambda: restores_begun(back) == {0} or not back.alive(),
            60,
            lambda: f"no restore began{back.tail()}",
        )
        delete_before(7_000)  # 6,000-6,999: gone before the restore is done
        assert "restored " not in back.text(), "the restore was done before the deletion"
        remaining = Produced()
        remaining.models = [
            m for m, off in zip(produced.models, offsets, strict=True) if not 6_000 <= off < 7_000
        ]
        remaining.futures = [
            f for f, off in zip(produced.futures, offsets, strict=True) if not 6_000 <= off < 7_000
        ]
        with MaterializedView(s) as view:
            wait_caught_up(view, remaining.reference(), 120, back.tail())
        back.proc.send_signal(signal.SIGTERM)
        assert back.wait_exit(60) == 0, back.tail()
    finally:
        back.cleanup()
    log = back.text()
    assert f"restored {s.topics.ops}/0:" in log, back.tail(3000)
    assert "stale-" in log, "the store behind the topic's start was not set aside"
    # not silent: the ops deleted during the restore are named
    assert "deleted while it was restored" in log, back.tail(3000)
    check_end_state(s, remaining, tmp_path, first.data_dir, "retention_gap_during_restore")
