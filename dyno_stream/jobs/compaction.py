"""Compaction: flatten long histories, as a cron job beside running workers or offline.

Online (``dyno-stream compact``) never opens a worker's LevelDB: it reads the snapshot topic,
chooses items by policy and sends each a flatten command through the ops topic, so the worker
that owns the item folds it in order with the ops around it. Offline (``--db PATH``) folds a
store no worker holds, then compacts LevelDB so the disk space comes back. Every pass folds
only rows older than the lateness before a time up to which the partition is surely consumed
(``fold_cutoff``). The steps and the lateness guarantee: ``docs/design/compaction.md``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
from confluent_kafka import TopicPartition
from rich.console import Console
from rich.table import Table

from dyno_stream.client.producer import DynoClient
from dyno_stream.config import CompactionSettings, Settings
from dyno_stream.core.deadletter import H_OFFSET, H_PARTITION, H_REASON, H_TOPIC
from dyno_stream.core.errors import ConfigError, KafkaAdminError, StoreError
from dyno_stream.core.events import H_EXPIRE_IF_HASH, DelItem, Flatten
from dyno_stream.core.flake import new_flake
from dyno_stream.core.snapshots import SnapshotDict, parse_message, read_erased_rows
from dyno_stream.jobs.progress import Reporter
from dyno_stream.kafka.reading import partition_ends, read_snapshots, topic_reader
from dyno_stream.store import DynoStore
from dyno_stream.store.compaction_policy import (
    Candidate,
    fold_before,
    fold_cutoff,
    items_to_expire,
    items_to_flatten,
    summaries,
)
from dyno_stream.store.partition import OFFSET_KEY, read_consumed_ms

log = logging.getLogger("dyno_stream.jobs.compaction")


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
    refused: int = 0
    #: expiry: items that would expire (dry run), expired, and not expired (changed since)
    expiring: int = 0
    expired: int = 0
    kept_changed: int = 0
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
        if self.expiring:
            out.append(("items that would expire", f"{self.expiring:,}"))
        if self.expired or self.kept_changed:
            out.append(("items expired", f"{self.expired:,}"))
            out.append(("not expired (changed meanwhile)", f"{self.kept_changed:,}"))
        if self.refused:
            out.append(("refused by the workers", f"{self.refused:,}"))
        if self.unconfirmed:
            out.append(("not confirmed in time", f"{self.unconfirmed:,}"))
        out.append(("seconds", f"{self.seconds:.2f}"))
        return out

    def log_line(self) -> str:
        return "compaction done: " + ", ".join(f"{k}={v}" for k, v in self.fields())


# -- online ----------------------------------------------------------------------------------


#: ``dyno-stream compact`` exits with this when some commands were not confirmed in time.
EXIT_UNCONFIRMED = 3


@dataclass
class Command:
    """A flatten command sent, and what the workers answered to it."""

    candidate: Candidate
    partition: int
    offset: int
    answer: SnapshotDict | None = None  # the item's snapshot that includes the command
    refused: str | None = None  # or the reason its dead letter gives
    #: an erase command's answer: the item rows the store removed (``H_ERASED_ROWS``)
    erased_rows: int | None = None

    @property
    def answered(self) -> bool:
        return self.answer is not None or self.refused is not None


def answer_ends(settings: Settings) -> dict[str, dict[int, int]]:
    """Where the snapshot and dead-letter topics end now: taken before commands are sent,
    the point from which ``await_answers`` reads their answers."""
    consumer = topic_reader(settings, "compaction")
    try:
        since = {settings.topics.snapshots: partition_ends(consumer, settings.topics.snapshots)}
        try:
            since[settings.topics.dead_letter] = partition_ends(
                consumer, settings.topics.dead_letter
            )
        except KafkaAdminError:  # made by the first worker: none has refused anything yet
            log.warning(
                "no dead-letter topic %s: refusals cannot be seen", settings.topics.dead_letter
            )
    finally:
        consumer.close()
    return since


def await_answers(
    settings: Settings,
    commands: dict[str, Command],
    since: dict[str, dict[int, int]],
    timeout: float,
) -> None:
    """Read the snapshot and dead-letter topics from ``since`` until every command is answered
    or ``timeout`` passes.

    A worker answers each flatten command it processes with the item's snapshot (published
    even when nothing was old enough to fold), whose source offset is at or past the
    command's. A command it refuses (unknown hash) becomes a dead letter naming the
    command's topic and offset; an item whose snapshot is too large for Kafka gets a
    ``snapshot-too-large`` letter instead of its snapshot. All are published before the
    worker's offsets are committed, so this does not depend on ``commit_interval_s``.
    """
    by_source = {(c.partition, c.offset): c for c in commands.values()}
    topics = settings.topics
    consumer = topic_reader(settings, "compaction")
    try:
        consumer.assign(
            [TopicPartition(t, p, o) for t, ends in since.items() for p, o in ends.items()]
        )
        waiting = sum(not c.answered for c in commands.values())
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                key = msg.key()
                cmd = commands.get(key.decode("utf-8", "replace")) if key else None
                if msg.error() or cmd is None or cmd.answered:
                    continue  # most snapshots are of items this pass did not command
                if msg.topic() == topics.snapshots:
                    # a deleted item's answer is its tombstone (the source in its headers)
                    snap = parse_message(key, msg.value(), msg.headers())
                    src = None if snap is None else snap["source"]
                    if src and src["partition"] == cmd.partition and src["offset"] >= cmd.offset:
                        cmd.answer = snap
                        cmd.erased_rows = read_erased_rows(msg.headers())
                        waiting -= 1
                    continue
                given = msg.headers() or []  # a consumed message's are a list of pairs
                pairs = given.items() if isinstance(given, dict) else given
                headers = {k: v for k, v in pairs if isinstance(v, bytes)}
                try:
                    topic = headers[H_TOPIC].decode()
                    where = (int(headers[H_PARTITION]), int(headers[H_OFFSET]))
                except (KeyError, ValueError):
                    continue
                reason = headers.get(H_REASON, b"").decode()
                if topic != topics.ops or where[0] != cmd.partition:
                    continue
                if by_source.get(where) is cmd or (
                    reason == "snapshot-too-large" and where[1] >= cmd.offset
                ):
                    cmd.refused = reason
                    waiting -= 1
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
    # The command queues behind every op already in the partition, and an op appended after
    # it reached Kafka after ``now``: the wall clock is the right basis here.
    now = time.time()
    cutoff = fold_cutoff(now, now, policy.fold_after_s)
    expiring = items_to_expire(latest.values(), policy, now)
    expires = {c.name for c in expiring}
    chosen, summary.examined = items_to_flatten(latest.values(), policy, cutoff)
    chosen = [c for c in chosen if c.name not in expires]  # deleted instead
    summary.chosen = len(chosen)
    summary.rows_before = sum(c.count for c in chosen)
    if dry_run:
        summary.details = _planned(latest, chosen, expiring, policy, cutoff)
        summary.expiring = len(expiring)
        summary.rows_after = summary.rows_before
        summary.seconds = time.monotonic() - started
        return summary
    # the answers are published from now on: mark where the topics end before the first
    # command goes out (a fast worker answers before the last one is acknowledged)
    since = answer_ends(settings)
    commands = _send_commands(settings, rep, chosen, expiring, cutoff)
    with rep.task("waiting for the workers' answers", len(commands)):
        await_answers(settings, commands, since, policy.wait_s)
    _count_answers(summary, commands, expires)
    if summary.unconfirmed:
        log.warning(
            "%d of %d flatten commands were not answered within %ss (workers down or behind?)",
            summary.unconfirmed,
            len(commands),
            policy.wait_s,
        )
    summary.seconds = time.monotonic() - started
    return summary


def _planned(
    latest: dict[str, Any],
    chosen: list[Candidate],
    expiring: list[Candidate],
    policy: CompactionSettings,
    cutoff: str,
) -> list[str]:
    """A dry run's lines: what each command would do."""
    return [
        f"{c.name}: {c.count} rows >= {policy.min_rows}; fold rows older than {cutoff} "
        f"up to hash {c.hash}"
        if latest[c.name]["value"] is not None
        else f"{c.name}: deleted at {latest[c.name]['timestamp']}, before {cutoff}: "
        f"remove its {c.count} rows, keep its marker"
        for c in chosen
    ] + [
        f"{c.name}: not changed since {latest[c.name]['timestamp']}: would expire "
        f"(idle over {policy.expire_after_s:g}s)"
        for c in expiring
    ]


def _send_commands(
    settings: Settings,
    rep: Reporter,
    chosen: list[Candidate],
    expiring: list[Candidate],
    cutoff: str,
) -> dict[str, Command]:
    """A flatten command per chosen item and an expiry per idle one, each where Kafka put
    it once acknowledged."""
    commands: dict[str, Command] = {}
    n_commands = len(chosen) + len(expiring)
    with DynoClient(settings) as client, rep.task("sending commands", n_commands) as adv:
        futures = [
            (c, client.send(Flatten(item=c.name, hash=c.hash, before=cutoff))) for c in chosen
        ]
        # expiry: a delItem, ordered with the item's other ops, that the worker applies only
        # if the item still has the hash seen here (not changed meanwhile)
        futures += [
            (
                c,
                client.send(
                    DelItem(item=c.name, ts=new_flake()),
                    headers=[(H_EXPIRE_IF_HASH, c.hash.encode())],
                ),
            )
            for c in expiring
        ]
        for c, f in futures:
            d = f.result(settings.worker.publish_timeout_s + 5)
            commands[c.name] = Command(c, d.partition, d.offset)
            adv(1)
    return commands


def _count_answers(summary: Summary, commands: dict[str, Command], expires: set[str]) -> None:
    """The workers' answers counted: folded, expired, kept (changed meanwhile), refused or
    unanswered; and the rows left."""
    summary.rows_after = summary.rows_before
    for cmd in commands.values():
        if cmd.candidate.name in expires:
            if cmd.answer is None:
                summary.unconfirmed += cmd.refused is None
                summary.refused += cmd.refused is not None
            elif cmd.answer["value"] is None and cmd.answer["timestamp"] is not None:
                summary.expired += 1  # its tombstone
            else:
                summary.kept_changed += 1  # changed meanwhile: its snapshot
            continue
        if cmd.answer is None:
            summary.unconfirmed += cmd.refused is None
            summary.refused += cmd.refused is not None
            continue
        count = cmd.answer["count"]
        summary.flattened += count < cmd.candidate.count
        summary.rows_after -= cmd.candidate.count - count


# -- offline ---------------------------------------------------------------------------------


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _offline_cutoff(store: DynoStore, lateness_s: float) -> str | None:
    """The fold cut-off of an offline pass, None when it cannot be known.

    A worker's partition store may have ops waiting in Kafka behind what it consumed, so
    its cut-off comes from the newest message it consumed (``fold_cutoff``), never from the
    wall clock alone. A plain ``DynoStore`` has no Kafka behind it: the wall clock is right.
    """
    now = time.time()
    if store.get_meta(OFFSET_KEY) is None:
        return fold_cutoff(now, now, lateness_s)
    consumed = read_consumed_ms(store)
    return None if consumed is None else fold_cutoff(consumed / 1000, now, lateness_s)


def compact_offline(
    path: Path, policy: CompactionSettings, console: Console, *, dry_run: bool = False
) -> Summary:
    """Flatten a store no worker holds, then let LevelDB reclaim the space."""
    started = time.monotonic()
    if not path.is_dir():
        raise StoreError(f"{path}: no such store")
    summary = Summary("offline, dry run" if dry_run else "offline")
    summary.bytes_before = _disk_bytes(path)
    rep = Reporter(console)
    with DynoStore(path) as store:
        cutoff = _offline_cutoff(store, policy.fold_after_s)
        if cutoff is None:
            summary.details = [
                f"{path}: a worker's partition store that has consumed no batch since it was "
                "created or restored (or was written before stores recorded the time): its "
                "cut-off is unknown, nothing folded. Let a worker process one batch of this "
                "partition first."
            ]
            summary.bytes_after = summary.bytes_before
            summary.seconds = time.monotonic() - started
            return summary
        chosen, summary.examined = items_to_flatten(summaries(store), policy, cutoff)
        summary.chosen = len(chosen)
        summary.rows_before = sum(c.count for c in chosen)
        if dry_run:
            summary.details = [
                f"{c.name}: {c.count} rows, fold rows older than {cutoff}" for c in chosen
            ]
            summary.rows_after = summary.rows_before
        else:
            with rep.task("flattening", len(chosen)) as advance:
                names = [c.name for c in chosen]
                summary.flattened = len(fold_before(store, names, cutoff, advance))
            summary.rows_after = sum(store.get_item(name).count for name in names)
            store.compact_range()
    summary.bytes_after = _disk_bytes(path)
    summary.seconds = time.monotonic() - started
    return summary
