"""An online compaction pass learns from the workers' own answers that its commands were
processed, whatever the commit interval, and says so in its exit status.

Each flatten command a worker processes is answered on the snapshot topic (the item's
snapshot, folded or not) or the dead-letter topic (a refused command). Committed offsets are
not read: with ``commit_interval_s`` of an hour they would never show the commands.
Real broker, real worker.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer
from helpers import cli_env, read_topic, run_cli, wait_until
from rich.console import Console

from dyno_stream.config import CompactionSettings, Settings, producer_config
from dyno_stream.core.deadletter import H_REASON
from dyno_stream.core.flake import FlakeGenerator
from dyno_stream.jobs.compaction import EXIT_UNCONFIRMED, compact_online
from dyno_stream.kafka.topics import ensure_topics

HOUR_MS = 3_600_000


def produce_ops(s: Settings, name: str, old: int, new: int) -> None:
    """``old`` ops with flakes two hours ago, then ``new`` with current flakes."""
    at = int(time.time() * 1000) - 2 * HOUR_MS
    gens = [FlakeGenerator(node=7, clock=lambda: at), FlakeGenerator(node=8)]
    producer = Producer(producer_config(s))
    for k in range(old + new):
        event = {"item": name, "op": "putAttrs", "ts": gens[k >= old].next(), "change": {"k": k}}
        producer.produce(s.topics.ops, json.dumps(event).encode(), name.encode())
    assert producer.flush(30) == 0


def newest_snapshots(s: Settings) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in read_topic(s, s.topics.snapshots):
        snap = json.loads(r.value or b"null")
        if snap["changes"] >= out.get(snap["item"], {"changes": -1})["changes"]:
            out[snap["item"]] = snap
    return out


def test_a_pass_is_confirmed_with_offsets_committed_once_an_hour(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
) -> None:
    s = make_settings(commit_interval_s=3600.0)
    worker = start_worker(s)
    produce_ops(s, "long", old=12, new=1)  # twelve rows to fold
    produce_ops(s, "fresh", old=0, new=5)  # nothing old enough: the command folds nothing
    wanted = {"long": 13, "fresh": 5}
    wait_until(
        lambda: {n: d["changes"] for n, d in newest_snapshots(s).items()} == wanted,
        60,
        lambda: f"not applied: {newest_snapshots(s)}",
    )
    # a snapshot whose hash no row of the item has (a stray publisher): its command is refused
    produce_ops(s, "stray", old=0, new=3)
    wait_until(
        lambda: newest_snapshots(s).get("stray", {}).get("changes") == 3,
        60,
        lambda: f"stray not applied: {newest_snapshots(s).get('stray')}",
    )
    stray = {**newest_snapshots(s)["stray"], "hash": "0" * 32, "changes": 9}
    producer = Producer(producer_config(s))
    producer.produce(s.topics.snapshots, json.dumps(stray).encode(), b"stray")
    assert producer.flush(30) == 0

    policy = CompactionSettings(min_rows=2, lateness_s=3600.0, wait_s=60.0)
    started = time.monotonic()
    summary = compact_online(s, policy, Console(file=io.StringIO()))
    took = time.monotonic() - started

    assert summary.chosen == 3, summary.fields()
    assert summary.unconfirmed == 0, summary.fields()
    assert summary.refused == 1, summary.fields()  # "stray"
    assert summary.flattened == 1, summary.fields()  # "long" only
    assert summary.rows_before - summary.rows_after == 11, summary.fields()  # 12 rows -> 1
    assert took < policy.wait_s, f"the pass waited out its wait_s ({took:.1f}s)"
    reasons = [r.headers.get(H_REASON) for r in read_topic(s, s.topics.dead_letter)]
    assert reasons == [b"unknown-hash"], reasons
    assert worker.thread.is_alive()


def test_cli_exits_with_its_own_status_when_no_worker_answers(
    make_settings: Callable[..., Settings],
) -> None:
    s = make_settings()
    ensure_topics(s)
    # an item's snapshot, as a worker that is now down published it
    snap = {
        "item": "orphan",
        "value": {"k": 1},
        "timestamp": FlakeGenerator(node=9).next(),
        "changes": 20,
        "hash": "a" * 32,
        "count": 20,
        "source": {"topic": s.topics.ops, "partition": 0, "offset": 19},
    }
    producer = Producer(producer_config(s))
    producer.produce(s.topics.snapshots, json.dumps(snap).encode(), b"orphan")
    assert producer.flush(30) == 0

    res = run_cli(cli_env(s, DYNO_COMPACTION__WAIT_S="2"), "compact", "--min-rows", "2")

    assert res.returncode == EXIT_UNCONFIRMED == 3, (res.returncode, res.stderr[-2000:])
    assert "not confirmed in time" in res.stdout, res.stdout
    assert "Traceback" not in res.stderr
