"""Rebalance benchmark: how fast each consumer group protocol moves partitions.

Plain confluent_kafka consumers, each a subprocess of this script (so one can be SIGKILLed),
subscribe to one 16-partition topic in a fresh group per run. Each run goes through:

1. ``join 1``: the first member, alone;
2. ``join 2`` / ``join 3``: a second, then a third member joins;
3. ``close``: the third member calls ``close()`` (a graceful leave);
4. ``SIGKILL``: the second member is killed; only its session timing out tells the group.

Each change is timed from its cause (the new member's ``subscribe()``, the leaving member's
``close()``, the kill) until every live member holds its share of the final assignment (all
16 partitions, disjoint, sizes within one of each other) and no callback follows for a while.
It also records which partitions each member had revoked by the change: an incremental
protocol revokes only those that move; the eager one revokes everything, everywhere.

Protocols: ``consumer`` (KIP-848; the broker's session and heartbeat, ``incremental_*`` in
the callbacks), ``cooperative`` (classic, cooperative-sticky) and ``eager`` (classic, range:
the reference). The classic ones use the worker's defaults (10 s session, 2 s heartbeat);
the broker started here has dyno-stream's local settings (10 s session, 1 s heartbeat).

Run: ``python bench/bench_rebalance.py [--runs 5] [--json bench/results/rebalance.json]``.
It starts a broker of its own (a temporary home on free ports) unless given ``--bootstrap``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console
from rich.table import Table

PARTITIONS = 16
#: A change is over when no member's callback has run for this long after the assignment
#: looked final (KIP-848 hands partitions over in steps, one heartbeat apart).
QUIET_S = 3.0
CHANGE_TIMEOUT_S = 60.0

#: Consumer settings of each protocol, as dyno-stream's consumer_config() gives them.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "consumer": {"group.protocol": "consumer"},
    "cooperative": {
        "group.protocol": "classic",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 2_000,
    },
    "eager": {
        "group.protocol": "classic",
        "partition.assignment.strategy": "range",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 2_000,
    },
}


# ---------------------------------------------------------------------------------------------
# a member: one consumer in its own process, reporting its callbacks as JSON lines
# ---------------------------------------------------------------------------------------------


def _emit(event: str, parts: list[int] | None = None, **more: Any) -> None:
    line = {"t": time.time(), "ev": event, "parts": parts or [], **more}
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def run_member(bootstrap: str, topic: str, group: str, protocol: str) -> None:
    """Subscribe, poll, report each callback; ``close`` on stdin leaves gracefully."""
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        **PROTOCOLS[protocol],
    }
    consumer = Consumer(conf)
    incremental = protocol != "eager"

    def parts(tps: list[TopicPartition]) -> list[int]:
        return sorted(tp.partition for tp in tps)

    def on_assign(c: Consumer, tps: list[TopicPartition]) -> None:
        if incremental:
            c.incremental_assign(tps)
        else:
            c.assign(tps)
        _emit("assign", parts(tps), held=parts(c.assignment()))

    def on_revoke(c: Consumer, tps: list[TopicPartition]) -> None:
        if incremental:
            c.incremental_unassign(tps)
        else:
            c.unassign()
        _emit("revoke", parts(tps), held=parts(c.assignment()))

    def on_lost(c: Consumer, tps: list[TopicPartition]) -> None:
        on_revoke(c, tps)

    _emit("subscribe")
    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
    while True:
        consumer.poll(0.05)
        ready, _, _ = select.select([sys.stdin], [], [], 0)
        if ready and sys.stdin.readline().strip() == "close":
            _emit("close")
            consumer.close()
            _emit("closed")
            return


@dataclass
class Member:
    name: str
    proc: subprocess.Popen[str]
    events: queue.Queue[dict[str, Any]]
    held: set[int] = field(default_factory=set)
    revoked: set[int] = field(default_factory=set)
    subscribed_at: float | None = None
    closed_at: float | None = None
    #: when its latest callback ran
    last_callback_at: float = 0.0


def start_member(name: str, bootstrap: str, topic: str, group: str, protocol: str) -> Member:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--member", bootstrap, topic, group, protocol],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    events: queue.Queue[dict[str, Any]] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            events.put(json.loads(line))

    threading.Thread(target=read, daemon=True).start()
    return Member(name, proc, events)


# ---------------------------------------------------------------------------------------------
# the scenario
# ---------------------------------------------------------------------------------------------


@dataclass
class Change:
    name: str
    seconds: float
    #: member -> partitions revoked from it during the change (sorted)
    revoked: dict[str, list[int]]
    #: member -> partitions held at the end
    held: dict[str, list[int]]


def _drain(members: list[Member]) -> bool:
    """Apply every reported event; True if any arrived."""
    seen = False
    for m in members:
        while True:
            try:
                ev = m.events.get_nowait()
            except queue.Empty:
                break
            seen = True
            if ev["ev"] == "subscribe":
                m.subscribed_at = ev["t"]
            elif ev["ev"] == "close":
                m.closed_at = ev["t"]
            elif ev["ev"] in ("assign", "revoke"):
                if ev["ev"] == "revoke":
                    m.revoked.update(ev["parts"])
                m.held = set(ev["held"])
                m.last_callback_at = ev["t"]
    return seen


def _settled(live: list[Member]) -> bool:
    sizes = [len(m.held) for m in live]
    union = set().union(*(m.held for m in live))
    return (
        sum(sizes) == PARTITIONS
        and union == set(range(PARTITIONS))
        and max(sizes) - min(sizes) <= 1
    )


def wait_change(
    name: str, cause_at: float | None, live: list[Member], everyone: list[Member]
) -> Change:
    """Wait until ``live`` hold a final assignment and stay quiet; time it from ``cause_at``
    (revocations counted since the last ``_forget_revoked``)."""
    deadline = time.monotonic() + CHANGE_TIMEOUT_S
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        if _drain(everyone):
            quiet_since = None
        if _settled(live):
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= QUIET_S:
                break
        else:
            quiet_since = None
        time.sleep(0.02)
    else:
        held = {m.name: sorted(m.held) for m in live}
        raise SystemExit(f"{name}: no final assignment within {CHANGE_TIMEOUT_S:.0f} s: {held}")
    start = cause_at if cause_at is not None else live[-1].subscribed_at
    assert start is not None
    # the latest callback of anyone: some may have been read before this wait began
    return Change(
        name,
        max(m.last_callback_at for m in everyone) - start,
        {m.name: sorted(m.revoked) for m in everyone if m.revoked},
        {m.name: sorted(m.held) for m in live},
    )


def _forget_revoked(members: list[Member]) -> None:
    """Start counting revocations for the next change (events so far applied first)."""
    _drain(members)
    for m in members:
        m.revoked = set()


def _wait_subscribed(m: Member, everyone: list[Member]) -> None:
    deadline = time.monotonic() + 30
    while m.subscribed_at is None and time.monotonic() < deadline:
        _drain(everyone)
        time.sleep(0.01)


def run_once(bootstrap: str, topic: str, protocol: str) -> list[Change]:
    group = f"bench-rebalance-{protocol}-{uuid.uuid4().hex[:8]}"
    members: list[Member] = []
    changes: list[Change] = []
    try:
        for i in (1, 2, 3):
            _forget_revoked(members)
            m = start_member(f"m{i}", bootstrap, topic, group, protocol)
            members.append(m)
            _wait_subscribed(m, members)
            changes.append(wait_change(f"join {i}", m.subscribed_at, members, members))
        m1, m2, m3 = members
        assert m3.proc.stdin is not None
        _forget_revoked(members)
        m3.proc.stdin.write("close\n")
        m3.proc.stdin.flush()
        m3.proc.wait(30)
        _drain(members)
        changes.append(wait_change("close", m3.closed_at, [m1, m2], members))
        _forget_revoked(members)
        killed_at = time.time()
        os.kill(m2.proc.pid, signal.SIGKILL)
        m2.proc.wait(10)
        changes.append(wait_change("SIGKILL", killed_at, [m1], [m1]))
    finally:
        for m in members:
            if m.proc.poll() is None:
                m.proc.kill()
                m.proc.wait(10)
    return changes


# ---------------------------------------------------------------------------------------------
# the broker and the report
# ---------------------------------------------------------------------------------------------


def _revoked_text(c: Change) -> str:
    if not c.revoked:
        return "none"
    return "; ".join(f"{name} {len(parts)}" for name, parts in sorted(c.revoked.items()))


def report(results: dict[str, list[list[Change]]], console: Console) -> dict[str, Any]:
    table = Table(title=f"rebalance time ({PARTITIONS} partitions), median [min - max] s")
    table.add_column("change")
    for protocol in results:
        table.add_column(protocol, justify="right")
    out: dict[str, Any] = {}
    names = [c.name for c in next(iter(results.values()))[0]]
    for i, name in enumerate(names):
        row = [name]
        for protocol, runs in results.items():
            secs = [run[i].seconds for run in runs]
            row.append(f"{statistics.median(secs):.2f} [{min(secs):.2f} - {max(secs):.2f}]")
            out.setdefault(protocol, {})[name] = {
                "median_s": round(statistics.median(secs), 3),
                "min_s": round(min(secs), 3),
                "max_s": round(max(secs), 3),
                "runs_s": [round(s, 3) for s in secs],
                "revoked": [run[i].revoked for run in runs],
            }
        table.add_row(*row)
    console.print(table)
    rev = Table(title="partitions revoked by each change, per member (first run)")
    rev.add_column("change")
    for protocol in results:
        rev.add_column(protocol)
    for i, name in enumerate(names):
        rev.add_row(name, *(_revoked_text(runs[0][i]) for runs in results.values()))
    console.print(rev)
    return out


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--bootstrap", help="a running Kafka >= 4.0 broker (default: start one)")
    ap.add_argument("--json", type=Path)
    return ap.parse_args()


def run(args: argparse.Namespace, console: Console) -> dict[str, list[list[Change]]]:
    """Each protocol's changes, run by run, on one topic."""
    # imported here, not at the top: the member processes need none of it
    from harness.broker import bench_broker, scratch
    from harness.settings import new_tag

    results: dict[str, list[list[Change]]] = {}
    with (
        scratch("dyno-bench-rebalance-") as home,
        bench_broker(args.bootstrap, own_in=home, timeout=120) as bootstrap,
    ):
        topic = f"bench-{new_tag(bootstrap)}.rebalance"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
        del admin  # no reconnect noise once the broker is stopped
        for run in range(args.runs):
            for protocol in args.protocols.split(","):
                changes = run_once(bootstrap, topic, protocol)
                results.setdefault(protocol, []).append(changes)
                console.print(
                    f"run {run + 1} {protocol}: "
                    + ", ".join(f"{c.name} {c.seconds:.2f}s ({_revoked_text(c)})" for c in changes)
                )
    return results


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--member":
        run_member(*sys.argv[2:6])
        return
    args = parse()
    console = Console()
    out = report(run(args, console), console)
    if args.json:
        from harness.output import write_json

        write_json(args.json, out, indent=1)


if __name__ == "__main__":
    main()
