"""An upgrade between releases, as an operator does it: the previous release's worker runs,
is stopped (SIGTERM), and the current release's worker starts on the same data dir, topics
and consumer group, while ops keep coming throughout. Nothing may be lost and nothing
applied twice: every snapshot ever published carries its item's chain hash over exactly its
first ``changes`` ops, and the last ones and the stores equal the reference.

The previous release is the newest commit CHANGELOG.md records (``DYNO_UPGRADE_FROM=<commit>``
picks another), installed from that commit into a virtualenv of its own, cached under
``~/.cache/dyno-stream/releases`` (``tests/releases.py``): about 15 s the first time.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import plyvel
from helpers import (
    Produced,
    WorkerProcess,
    check_against_reference,
    published,
    random_op,
    read_topic,
    store_items,
    wait_caught_up,
    wait_until,
)
from releases import Release, recorded_releases, release_venv

from dyno_stream import __version__
from dyno_stream.client import DynoClient, MaterializedView
from dyno_stream.config import Settings
from dyno_stream.kafka.topics import ensure_topics
from dyno_stream.store.states import RELEASE_KEY, STORE_FORMAT, VERSION_KEY

PARTITIONS = 2
N_ITEMS = 300
#: ops per producer burst, and the pause between bursts: about 1,500 ops/s
BURST, PAUSE_S = 150, 0.1


def _previous_release() -> Release:
    wanted = os.environ.get("DYNO_UPGRADE_FROM")
    releases = recorded_releases()
    assert releases, "CHANGELOG.md records no earlier release"
    if not wanted:
        return releases[0]
    for r in releases:
        if r.commit.startswith(wanted) or wanted.startswith(r.commit):
            return r
    return Release("unrecorded", wanted)


def _old_worker_env(s: Settings, data_dir: Path) -> dict[str, str]:
    """Only settings every release knows (an older release refuses unknown ones)."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("DYNO_")},
        "DYNO_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
        "DYNO_TOPICS__OPS": s.topics.ops,
        "DYNO_TOPICS__SNAPSHOTS": s.topics.snapshots,
        "DYNO_TOPICS__DEAD_LETTER": s.topics.dead_letter,
        "DYNO_TOPICS__PARTITIONS": str(s.topics.partitions),
        "DYNO_WORKER__GROUP_ID": s.worker.group_id,
        "DYNO_WORKER__DATA_DIR": str(data_dir),
        "DYNO_WORKER__HTTP_PORT": "0",
        "DYNO_WORKER__BATCH_TIMEOUT_S": "0.02",
        "PYTHONUNBUFFERED": "1",
    }


class Producer:
    """Ops in bursts on a thread of its own, from start until ``stop``: "ops throughout"."""

    def __init__(self, s: Settings) -> None:
        self.produced = Produced()
        self.settings = s
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rnd = random.Random(2727)
        i = 0
        try:
            with DynoClient(self.settings) as client:
                while not self._stop.is_set():
                    self.produced.send(
                        client, (random_op(rnd, i + k, N_ITEMS) for k in range(BURST))
                    )
                    i += BURST
                    self._stop.wait(PAUSE_S)
                client.flush(60)
        except BaseException as exc:
            self.error = exc

    def count(self) -> int:
        return len(self.produced.models)

    def stop(self) -> Produced:
        self._stop.set()
        self.thread.join(90)
        assert not self.thread.is_alive(), "the producer did not stop"
        if self.error is not None:
            raise self.error
        return self.produced


def test_the_previous_release_then_this_one_on_the_same_data_lose_and_repeat_nothing(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    release = _previous_release()
    exe = release_venv(release.commit)
    s = make_settings(partitions=PARTITIONS)
    ensure_topics(s)
    data = tmp_path / "data-upgrade"
    old_log = tmp_path / "old.log"
    view = MaterializedView(s).start()
    producer: Producer | None = None
    new: WorkerProcess | None = None
    with old_log.open("wb") as fh:
        old = subprocess.Popen(
            [str(exe), "worker"],
            env=_old_worker_env(s, data),
            cwd=tmp_path,  # no config file of this checkout's
            stdout=fh,
            stderr=subprocess.STDOUT,
        )

    def old_tail() -> str:
        return (
            f"\n--- {release.commit} worker (exit {old.poll()}) ---\n"
            + (old_log.read_text(errors="replace")[-2000:])
        )

    try:
        producer = Producer(s)
        # the old release applies ops for a while ...
        wait_until(
            lambda: producer is not None and producer.count() >= 3_000,
            60,
            lambda: f"the producer sent {producer and producer.count()} ops",
        )
        wait_until(
            lambda: len(view) >= N_ITEMS * 0.9 or old.poll() is not None,
            60,
            lambda: f"{len(view)} items published by the old release" + old_tail(),
        )
        assert old.poll() is None, old_tail()
        # ... is stopped as an operator stops it, ops still coming ...
        old.send_signal(signal.SIGTERM)
        assert old.wait(60) == 0, old_tail()
        stopped_at = producer.count()
        wait_until(
            lambda: producer is not None and producer.count() >= stopped_at + 1_000,
            60,
            lambda: "ops while no worker runs",
        )
        # ... and this release takes over its stores
        new = WorkerProcess(s, "new", tmp_path, data_dir=data, default_group_timing=True)
        started_at = producer.count()
        wait_until(
            lambda: (
                (producer is not None and producer.count() >= started_at + 3_000) or not new.alive()
            ),
            90,
            lambda: "ops while this release runs",
        )
        produced = producer.stop()
        producer = None
        ref = produced.reference()
        wait_caught_up(view, ref, 120, new.tail())
        assert new.alive(), new.tail()
        new.proc.send_signal(signal.SIGTERM)
        assert new.wait_exit(60) == 0, new.tail()

        history = published(read_topic(s, s.topics.snapshots), produced.models)
        history.check()
        check_against_reference(history.last, ref, "the last snapshots")
        in_stores: dict[str, object] = {}
        for p in range(PARTITIONS):
            in_stores.update(store_items(new.store(p)))
            db = plyvel.DB(str(new.store(p)))
            try:
                assert db.get(VERSION_KEY) == str(STORE_FORMAT).encode()
                assert db.get(RELEASE_KEY) == __version__.encode()
            finally:
                db.close()
        check_against_reference(in_stores, ref, "the stores")
        old_text = old_log.read_text(errors="replace")
        print(
            f"\nupgrade {release.version} ({release.commit}) -> {__version__}: "
            f"{len(produced.models)} ops over {len(ref.changes)} items, "
            f"{history.snapshots} snapshots; the old worker logged "
            f"{old_text.count('assigned')} assignments"
        )
    finally:
        if producer is not None:
            producer._stop.set()
        view.close()
        if old.poll() is None:
            old.kill()
            old.wait(10)
        if new is not None:
            new.cleanup()
