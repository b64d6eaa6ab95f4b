"""Commands that rewrite stores and topics: ``compact``, ``repartition`` and
``migrate-snapshots``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dyno_stream.cli.common import err, friendly, kafka_settings, out, settings
from dyno_stream.core.errors import ConfigError

if TYPE_CHECKING:
    from dyno_stream.jobs.compaction import Summary


#: ``compact --db``: the offline pass
_StoreOption = Annotated[
    Path | None,
    typer.Option(help="Offline: compact this store (no worker may hold it), then reclaim disk."),
]


@friendly
def compact(
    db: _StoreOption = None,
    min_rows: Annotated[int | None, typer.Option(help="Only items with at least N rows.")] = None,
    lateness: Annotated[
        float | None, typer.Option(help="Only fold ops older than this many seconds.")
    ] = None,
    prefix: Annotated[str | None, typer.Option(help="Only item names with this prefix.")] = None,
    max_items: Annotated[int | None, typer.Option(help="At most N items this pass.")] = None,
    expire_after: Annotated[
        float | None,
        typer.Option(
            help="Online: also delete items not changed for this many seconds (0: never; "
            "default [compaction] expire_after_s). An item changed meanwhile is kept."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="List what would be flattened or expire, and why.")
    ] = False,
) -> None:
    """One compaction pass: flatten long histories (online through the workers, or --db).

    Exits 0 when done, 1 on an error, 3 when some workers did not answer a flatten command
    within the policy's wait_s (down or far behind: those items are folded later, or by the
    next pass).
    """
    from dyno_stream.jobs.compaction import (
        EXIT_UNCONFIRMED,
        compact_offline,
        compact_online,
        compaction_policy,
    )
    from dyno_stream.stream.logs import setup_logging

    if db is not None and expire_after:
        raise ConfigError(
            "--expire-after needs the online pass (leave out --db): expiry sends delItems "
            "through the ops topic, in order with the items' other ops"
        )
    s = settings() if db is not None else kafka_settings()
    setup_logging(s.worker.log_format, s.worker.log_level)
    given = {
        "min_rows": min_rows,
        "lateness_s": lateness,
        "prefix": prefix,
        "max_items": max_items,
        "expire_after_s": expire_after,
    }
    policy = compaction_policy(s, {k: v for k, v in given.items() if v is not None})
    summary = (
        compact_offline(db, policy, err, dry_run=dry_run)
        if db is not None
        else compact_online(s, policy, err, dry_run=dry_run)
    )
    _print_summary(summary)
    if summary.unconfirmed:  # cron's mail and alerts see it; the next pass retries them
        raise typer.Exit(EXIT_UNCONFIRMED)


def _print_summary(summary: Summary) -> None:
    """The pass's details, then its summary: the command's answer, printed whatever the log
    level (a table on a terminal, one line otherwise)."""
    for line in summary.details:
        out.print(line)
    if out.is_terminal:
        out.print(summary.table())
    else:
        out.print(summary.log_line())


@friendly
def repartition(
    partitions: Annotated[int, typer.Option(help="Partitions of the new ops topic.")],
    dry_run: Annotated[bool, typer.Option(help="Show the plan; change nothing.")] = False,
    drain_timeout: Annotated[
        float,
        typer.Option(help="Seconds to wait for the workers to apply the old topic."),
    ] = 60.0,
    state: Annotated[
        Path | None,
        typer.Option(help="The run's state file (default: under the data dir)."),
    ] = None,
) -> None:
    """Move to new ops and snapshot topics with N partitions (never alter them in place)."""
    from dyno_stream.jobs.progress import Reporter
    from dyno_stream.jobs.repartition import repartition as run
    from dyno_stream.stream.logs import setup_logging

    s = kafka_settings()
    setup_logging(s.worker.log_format, s.worker.log_level)
    report = run(
        s,
        partitions,
        Reporter(err),
        dry_run=dry_run,
        drain_timeout=drain_timeout,
        state_path=state,
    )
    for line in report.details:
        out.print(line)
    out.print(report.summary())
    if not report.dry_run:
        out.print("Point every worker and client at the new topics and restart them:")
        for line in report.settings_lines():
            out.print(f"  {line}")


@friendly
def migrate_snapshots(
    to: Annotated[
        str | None,
        typer.Option(help="The new snapshot topic (created with the ops topic's partitions)."),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            help="Only say whether the snapshot topic needs it (exit 3 when it does); "
            "workers may run."
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option(help="Copy even while the workers' consumer group has members.")
    ] = False,
) -> None:
    """Copy the newest snapshot of every item into a new, co-partitioned snapshot topic.

    Stop the workers, run it with --to NEW_TOPIC, point [topics] snapshots at NEW_TOPIC
    everywhere (DYNO_TOPICS__SNAPSHOTS), start the workers.
    """
    from dyno_stream.jobs import migrate_snapshots as job
    from dyno_stream.jobs.progress import Reporter
    from dyno_stream.stream.logs import setup_logging

    s = kafka_settings()
    setup_logging(s.worker.log_format, s.worker.log_level)
    if check:
        placement = job.check_placement(s, Reporter(err))
        for line in placement.lines():
            out.print(line)
        if placement.needs_migration:
            raise typer.Exit(3)
        return
    if to is None:
        err.print("error: --to NEW_TOPIC is required (or --check)")
        raise typer.Exit(2)
    report = job.migrate_snapshots(s, to, Reporter(err), force=force)
    for line in report.details():
        out.print(line)
    out.print(report.summary())
    out.print("Point every worker, client and view at the new topic, then start the workers:")
    for line in report.settings_lines():
        out.print(f"  {line}")
