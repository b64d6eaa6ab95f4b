"""Compaction: flatten long histories, as a cron job beside running workers or offline.

Online (``dyno-stream compact``) never opens a worker's LevelDB (the worker holds its lock)
and never writes to it behind the worker's back. It follows the seed's contract, "flatten to
a hash the caller has seen":

1. read the snapshot topic to its end, keeping each item's newest snapshot (most changes);
2. choose items by policy (at least ``min_rows`` rows, a name prefix, at most ``max_items``);
3. send each a flatten command ``{"item", "op": "flatten", "hash", "before"}`` through the
   ops topic, keyed by item, so the worker that owns the item folds it *in order* with the
   ops around it: only rows older than ``before`` (now minus the allowed lateness) and not
   past ``hash`` are folded;
4. wait until the workers' group has consumed past those commands, and read the new
   snapshots to report the rows removed.

Ops arriving during a pass are never lost or reordered (they queue behind or before the
command on the item's partition), and two passes at once do no harm: the second command
finds nothing older left to fold, or a hash the first already folded, and does nothing.

Offline (``--db PATH``) folds a store no worker holds, then runs LevelDB's compaction so the
disk space really comes back.

Lateness: an op whose flake is older than its item's history row can no longer be placed;
the worker sends it to the dead-letter topic with reason ``late``. With the default allowed
lateness of one hour, any op that reaches Kafka within an hour of its flake is applied.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dyno_stream.client import DynoClient
from dyno_stream.config import CompactionSettings, Settings
from dyno_stream.errors import ConfigError, DynoError
from dyno_stream.events import Flatten
from dyno_stream.flake import flake_floor
from dyno_stream.store import DynoStore
from dyno_stream.views import read_snapshots, snapshot_reader

log = logging.getLogger("dyno_stream.compaction")


def compaction_policy(settings: Settings, overrides: dict[str, Any]) -> CompactionSettings:
    """The configured policy with command-line overrides, validated like the config."""
    try:
        return CompactionSettings.model_validate({**settings.compaction.model_dump(), **overrides})
    except pydantic.ValidationError as exc:
        lines = [
            f"--{'-'.join(str(p) for p in e['loc']).replace('_s', '').replace('_', '-')}: "
            f"{e['msg']}"
            for e in exc.errors(include_url=False)
        ]
        raise ConfigError("invalid compaction policy: " + "; ".join(lines)) from None


@dataclass(frozen=True)
class Candidate:
    """An item a pass would flatten, and why."""

    name: str
    hash: str
    count: int
    changes: int


def choose(
    snapshots: Iterable[dict[str, Any]], policy: CompactionSettings
) -> tuple[list[Candidate], int]:
    """Pick the items to flatten from their newest snapshots; also return how many were seen."""
    seen = 0
    chosen = []
    for snap in snapshots:
        seen += 1
        name, count, hash_ = snap["item"], snap["count"], snap["hash"]
        if hash_ is None or count < policy.min_rows or not name.startswith(policy.prefix):
            continue
        chosen.append(Candidate(name, hash_, count, snap["changes"]))
    chosen.sort(key=lambda c: (-c.count, c.name))  # the longest histories first
    if policy.max_items is not None:
        chosen = chosen[: policy.max_items]
    return chosen, seen


def summaries(store: DynoStore, min_rows: int = 0) -> Iterator[dict[str, Any]]:
    """A store's items in the shape ``choose`` reads (a snapshot's), deleted ones included."""
    for name, item in store.scan(lambda n, i: i.count >= min_rows, include_empty=True):
        yield {"item": name, "hash": item.hash, "count": item.count, "changes": item.changes}


@dataclass
class Summary:
    mode: str
    examined: int = 0
    chosen: int = 0
    flattened: int = 0
    rows_before: int = 0
    rows_after: int = 0
    bytes_before: int | None = None
    bytes_after: int | None = None
    seconds: float = 0.0
    unconfirmed: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def rows_removed(self) -> int:
        return self.rows_before - self.rows_after

    def table(self) -> Table:
        t = Table(title=f"compaction ({self.mode})")
        t.add_column("")
        t.add_column("", justify="right")
        for k, v in self.fields():
            t.add_row(k, v)
        return t

    def fields(self) -> list[tuple[str, str]]:
        out = [
            ("items examined", f"{self.examined:,}"),
            ("items chosen", f"{self.chosen:,}"),
            ("items flattened", f"{self.flattened:,}"),
            (
                "rows removed",
                f"{self.rows_removed:,} ({self.rows_before:,} -> {self.rows_after:,})",
            ),
        ]
        if self.bytes_before is not None and self.bytes_after is not None:
            out.append(("bytes on disk", f"{self.bytes_before:,} -> {self.bytes_after:,}"))
        if self.unconfirmed:
            out.append(("not confirmed in time", f"{self.unconfirmed:,}"))
        out.append(("seconds", f"{self.seconds:.2f}"))
        return out

    def log_line(self) -> str:
        return "compaction done: " + ", ".join(f"{k}={v}" for k, v in self.fields())


class Reporter:
    """A rich progress bar on a terminal; plain log lines under cron."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.interactive = console.is_terminal

    @contextmanager
    def task(self, what: str, total: int | None) -> Iterator[Callable[[int], None]]:
        if self.interactive:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            ) as progress:
                task = progress.add_task(what, total=total)
                yield lambda n: progress.advance(task, n)
        else:
            log.info("%s (%s)", what, "?" if total is None else f"{total:,}")
            done = [0]
            last = [time.monotonic()]

            def advance(n: int) -> None:
                done[0] += n
                if time.monotonic() - last[0] > 10:
                    last[0] = time.monotonic()
                    log.info("%s: %s done", what, f"{done[0]:,}")

            yield advance
            log.info("%s: %s done", what, f"{done[0]:,}")


# -- online ----------------------------------------------------------------------------------


def _group_caught_up(settings: Settings, targets: dict[int, int], timeout: float) -> bool:
    """Wait until the workers' group has committed past every command we sent."""
    consumer = Consumer(
        {
            **settings.kafka.librdkafka(),
            "group.id": settings.worker.group_id,
            "enable.auto.commit": False,
        }
    )
    try:
        deadline = time.monotonic() + timeout
        tps = [TopicPartition(settings.topics.ops, p) for p in targets]
        while time.monotonic() < deadline:
            committed = consumer.committed(tps, timeout=10)
            if all(tp.offset >= targets[tp.partition] for tp in committed):
                return True
            time.sleep(0.5)
        return False
    finally:
        consumer.close()


def compact_online(
    settings: Settings,
    policy: CompactionSettings,
    console: Console,
    *,
    dry_run: bool = False,
) -> Summary:
    started = time.monotonic()
    summary = Summary("online, dry run" if dry_run else "online")
    rep = Reporter(console)
    with rep.task("reading snapshots", None) as advance:
        latest = read_snapshots(settings, advance)
    chosen, summary.examined = choose(latest.values(), policy)
    summary.chosen = len(chosen)
    summary.rows_before = sum(c.count for c in chosen)
    cutoff = flake_floor(time.time() - policy.lateness_s)
    if dry_run:
        summary.details = [
            f"{c.name}: {c.count} rows >= {policy.min_rows}; fold rows older than {cutoff} "
            f"up to hash {c.hash}"
            for c in chosen
        ]
        summary.rows_after = summary.rows_before
        summary.seconds = time.monotonic() - started
        return summary
    # snapshots published from now on show the result: mark where the topic ends before
    # the first command goes out (a fast worker answers before the last one is acknowledged)
    consumer = snapshot_reader(settings)
    try:
        meta = consumer.list_topics(settings.topics.snapshots, timeout=30)
        parts = meta.topics[settings.topics.snapshots].partitions
        since = {
            p: consumer.get_watermark_offsets(
                TopicPartition(settings.topics.snapshots, p), timeout=30
            )[1]
            for p in parts
        }
    finally:
        consumer.close()
    targets: dict[int, int] = {}
    with DynoClient(settings) as client, rep.task("sending flatten commands", len(chosen)) as adv:
        futures = [client.send(Flatten(item=c.name, hash=c.hash, before=cutoff)) for c in chosen]
        for f in futures:
            d = f.result(settings.worker.publish_timeout_s + 5)
            targets[d.partition] = max(targets.get(d.partition, 0), d.offset + 1)
            adv(1)
    if not _group_caught_up(settings, targets, policy.wait_s):
        log.warning("the workers did not confirm every command within %ss", policy.wait_s)
    with rep.task("reading new snapshots", None) as advance:
        after = read_snapshots(settings, advance, since=since)
    by_name = {c.name: c for c in chosen}
    summary.rows_after = summary.rows_before
    for name, c in by_name.items():
        snap = after.get(name)
        if snap is None:
            summary.unconfirmed += 1  # nothing folded (no snapshot), or not yet processed
            continue
        summary.flattened += snap["count"] < c.count
        summary.rows_after -= c.count - snap["count"]
    summary.seconds = time.monotonic() - started
    return summary


# -- offline ---------------------------------------------------------------------------------


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def compact_offline(
    path: Path, policy: CompactionSettings, console: Console, *, dry_run: bool = False
) -> Summary:
    """Flatten a store no worker holds, then let LevelDB reclaim the space."""
    started = time.monotonic()
    if not path.is_dir():
        raise DynoError(f"{path}: no such store")
    summary = Summary("offline, dry run" if dry_run else "offline")
    summary.bytes_before = _disk_bytes(path)
    cutoff = flake_floor(time.time() - policy.lateness_s)
    rep = Reporter(console)
    with DynoStore(path) as store:
        chosen, summary.examined = choose(summaries(store), policy)
        summary.chosen = len(chosen)
        summary.rows_before = sum(c.count for c in chosen)
        if dry_run:
            summary.details = [
                f"{c.name}: {c.count} rows, fold rows older than {cutoff}" for c in chosen
            ]
            summary.rows_after = summary.rows_before
        else:
            with rep.task("flattening", len(chosen)) as advance:
                for c in chosen:
                    summary.flattened += store.flatten_before(c.name, cutoff)
                    summary.rows_after += store.get_item(c.name).count
                    advance(1)
            store.compact_range()
    summary.bytes_after = _disk_bytes(path)
    summary.seconds = time.monotonic() - started
    return summary
