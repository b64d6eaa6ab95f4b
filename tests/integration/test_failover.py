"""Fast failover: a SIGKILLed worker's partitions are processed by another within 15 s.

Two ``dyno-stream worker`` processes share one data dir (as docker-compose's workers share a
volume), so the survivor takes the dead worker's partitions with no restore: what is timed
is the group noticing the death (the session timeout, with the local broker's default
timing: 10 s under KIP-848, which the test broker lowers for other groups) and the handover.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

from helpers import (
    Produced,
    WorkerProcess,
    assignment,
    random_op,
    wait_caught_up,
    wait_until,
)

from dyno_stream.client import DynoClient, MaterializedView
from dyno_stream.config import Settings
from dyno_stream.kafka.topics import ensure_topics

PARTITIONS = 4
N_ITEMS = 200
#: The issue's goal: a SIGKILLed worker's partitions are processed again within this.
FAILOVER_S = 15.0


def test_a_sigkilled_workers_partitions_are_processed_by_the_other_within_15_s(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    s = make_settings(partitions=PARTITIONS)
    ensure_topics(s)
    shared = tmp_path / "shared-data"
    workers = [
        WorkerProcess(s, name, tmp_path, data_dir=shared, default_group_timing=True)
        for name in ("w1", "w2")
    ]
    survivor, victim = workers
    view = MaterializedView(s).start()
    produced = Produced()
    rnd = random.Random(1313)
    try:
        wait_until(
            lambda: all(len(w.partitions()) == PARTITIONS // 2 for w in workers),
            60,
            lambda: (
                f"the two workers did not split the partitions: {assignment(workers)}"
                + "".join(w.tail() for w in workers if not w.alive())
            ),
        )
        with DynoClient(s) as client:
            produced.send(client, (random_op(rnd, i, N_ITEMS) for i in range(1_000)))
            client.flush(30)
            wait_caught_up(view, produced.reference(), 60, assignment(workers))
            victims_partitions = victim.partitions()

            victim.proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            assert victim.proc.wait(10) == -signal.SIGKILL
            # ops to every partition, the dead worker's included, right after the kill
            produced.send(client, (random_op(rnd, i, N_ITEMS) for i in range(1_000, 2_000)))
            client.flush(30)
        assert victims_partitions & set(produced.partitions().values()) == victims_partitions

        wait_caught_up(view, produced.reference(), 2 * FAILOVER_S, assignment(workers))
        took = time.monotonic() - killed_at
        print(f"\nthe killed worker's ops applied {took:.1f} s after the kill")
        assert survivor.partitions() == set(range(PARTITIONS)), assignment(workers)
        assert took <= FAILOVER_S, f"the dead worker's ops were applied {took:.1f} s after it died"
        assert survivor.alive(), survivor.tail()
    finally:
        view.close()
        for w in workers:
            w.cleanup()
