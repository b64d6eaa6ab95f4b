"""A worker that meets a store of a newer format stops and says why, rather than serving it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import plyvel
from helpers import WorkerProcess, wait_until

from dyno_stream.config import Settings
from dyno_stream.kafka.topics import ensure_topics
from dyno_stream.store.partition import PartitionStore
from dyno_stream.store.states import RELEASE_KEY, STORE_FORMAT, VERSION_KEY


def test_a_worker_refuses_a_store_of_a_newer_format(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    s = make_settings(partitions=1)
    ensure_topics(s)
    data = tmp_path / "data-w"
    PartitionStore.open(data, s.topics.ops, 0, sync=False).store.close()
    db = plyvel.DB(str(data / s.topics.ops / "0000"))
    db.put(VERSION_KEY, str(STORE_FORMAT + 1).encode())
    db.put(RELEASE_KEY, b"9.0.0")
    db.close()
    worker = WorkerProcess(s, "w", tmp_path, data_dir=data, default_group_timing=True)
    try:
        wait_until(lambda: not worker.alive(), 90, worker.tail)
        assert worker.proc.returncode != 0, worker.tail()
        text = worker.text()
        assert f"store of format {STORE_FORMAT + 1}, written by dyno-stream 9.0.0" in text, (
            worker.tail()
        )
        assert "snapshot topic" in text
    finally:
        worker.cleanup()
