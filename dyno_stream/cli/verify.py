"""``dyno-stream verify``: two copies of the items compared by their hash chains
(``jobs.verify``); exit 1 on any difference."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dyno_stream.config import Settings
from dyno_stream.jobs.progress import Reporter
from dyno_stream.jobs.verify import (
    Comparison,
    Summary,
    against,
    compare,
    deep_check,
    read_summaries,
    store_summaries,
)

out = Console(highlight=False, soft_wrap=True)
#: differences printed one by one; the rest are counted
_SHOWN = 50


def verify(
    against_: Annotated[
        str | None,
        typer.Option(
            "--against",
            metavar="BOOTSTRAP[/TOPIC]",
            help="A second cluster's snapshot topic (default topic: this one's name).",
        ),
    ] = None,
    stores: Annotated[
        bool,
        typer.Option(
            "--stores", help="Compare the workers' stores (not this cluster's snapshot topic)."
        ),
    ] = False,
    deep: Annotated[
        bool,
        typer.Option(
            "--deep",
            help="Also replay every item's rows in this machine's stores and recompute its "
            "chain (stop its workers first).",
        ),
    ] = False,
) -> None:
    """Compare items (name, changes, chain hash) between two of: this cluster's snapshot
    topic, the workers' stores, a second cluster's snapshot topic. Prints the items that
    differ (missing, behind, diverged); exits 1 on any."""
    from dyno_stream.cli.common import friendly, kafka_settings

    def run() -> None:
        s = kafka_settings()
        reporter = Reporter(out)
        started = time.monotonic()
        sides = _sides(s, reporter, stores=stores, against_=against_)
        failed = False
        if len(sides) == 2:
            (a, left), (b, right) = sides
            result = compare(left, right, (a, b))
            _report(result, time.monotonic() - started)
            failed = bool(result.differences)
        elif not deep:
            raise typer.BadParameter("nothing to compare: give --against, --stores or --deep")
        if deep:
            failed = _deep(s) or failed
        if failed:
            raise typer.Exit(1)

    friendly(run)()


def _sides(
    s: Settings, reporter: Reporter, *, stores: bool, against_: str | None
) -> list[tuple[str, dict[str, Summary]]]:
    """The copies to compare, each read and labelled: the workers' stores, this cluster's
    snapshot topic, a second cluster's."""
    sides: list[tuple[str, dict[str, Summary]]] = []
    if stores:
        from dyno_stream.client.reads import ItemReads

        sides.append(("stores", store_summaries(ItemReads(s, s.kafka.librdkafka()).list())))
    if not stores or against_ is None:
        label = f"{s.kafka.bootstrap_servers}/{s.topics.snapshots}"
        with reporter.task(f"reading {label}", None) as advance:
            sides.append((label, read_summaries(s, s.topics.snapshots, advance)))
    if against_ is not None:
        other, topic = against(s, against_)
        label = f"{other.kafka.bootstrap_servers}/{topic}"
        with reporter.task(f"reading {label}", None) as advance:
            sides.append((label, read_summaries(other, topic, advance)))
    return sides


def _deep(s: Settings) -> bool:
    """Every item's rows in this machine's stores replayed; True when a chain differs."""
    check = deep_check(s.worker.data_dir, s.topics.ops)
    out.print(f"deep: {check.items:,} items' rows replayed in {s.worker.data_dir}")
    for d in check.changed[:_SHOWN]:
        out.print(f"  {d.name!r}: {d.kind}: {d.detail}")
    return bool(check.changed)


def _report(result: Comparison, seconds: float) -> None:
    rate = result.compared / seconds if seconds > 0 else 0.0
    out.print(
        f"{result.compared:,} items compared between {result.left} and {result.right} in "
        f"{seconds:.1f} s ({rate:,.0f} items/s): {len(result.differences):,} differ"
        + (
            f"; {result.deleted_one_side:,} deleted on one side, gone from the other"
            if result.deleted_one_side
            else ""
        )
    )
    if not result.differences:
        return
    table = Table()
    for column in ("item", "difference", "detail"):
        table.add_column(column, overflow="fold")
    for d in result.differences[:_SHOWN]:
        table.add_row(d.name, d.kind, d.detail)
    out.print(table)
    if len(result.differences) > _SHOWN:
        out.print(f"... and {len(result.differences) - _SHOWN:,} more")
