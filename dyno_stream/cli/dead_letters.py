"""``dyno-stream dead-letters``: the dead-letter topic counted by reason, one letter in full,
and replays (``jobs.dead_letters``)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dyno_stream.jobs.dead_letters import Letter, by_reason, read_letters, replay, since_ms

dead_letters_app = typer.Typer(
    help="The dead-letter topic: list by reason (no subcommand), show one, replay.",
    invoke_without_command=True,
)
out = Console(highlight=False, soft_wrap=True)

Reason = Annotated[str | None, typer.Option(help="Only letters of this reason.")]
Since = Annotated[
    str | None, typer.Option(help="Only letters since then: 90s, 30m, 2h, 7d or an ISO time.")
]


def _read(reason: str | None, since: str | None) -> list[Letter]:
    from dyno_stream.cli.common import kafka_settings

    return read_letters(
        kafka_settings(), since=None if since is None else since_ms(since), reason=reason
    )


@dead_letters_app.callback()
def listing(
    ctx: typer.Context,
    reason: Reason = None,
    since: Since = None,
    last: Annotated[int, typer.Option(help="Also list the newest N letters, one line each.")] = 10,
) -> None:
    """Count the dead letters by reason, and list the newest."""
    from dyno_stream.cli.common import friendly

    if ctx.invoked_subcommand is not None:
        return
    friendly(_listing)(reason, since, last)


def _listing(reason: str | None, since: str | None, last: int) -> None:
    letters = _read(reason, since)
    counts = Table(title=f"{len(letters):,} dead letters")
    counts.add_column("reason")
    counts.add_column("letters", justify="right")
    for why, n in by_reason(letters).most_common():
        counts.add_row(why, f"{n:,}")
    out.print(counts)
    newest = sorted(letters, key=lambda x: x.timestamp_ms)[-last:] if last > 0 else []
    for x in newest:
        key = "" if x.key is None else x.key.decode("utf-8", "replace")
        out.print(f"{x.partition}:{x.offset}  {x.reason:<20} {key!r}  {x.message[:120]}")
    if newest:
        out.print("dyno-stream dead-letters show P:O shows one in full")


@dead_letters_app.command()
def show(where: Annotated[str, typer.Argument(help="The letter's PARTITION:OFFSET.")]) -> None:
    """Print one dead letter in full: its key, bytes, headers and reason."""
    from dyno_stream.cli.common import EXIT_NOT_FOUND, friendly

    def run() -> None:
        partition, sep, offset = where.partition(":")
        if not sep or not partition.isdigit() or not offset.isdigit():
            raise typer.BadParameter(f"{where!r}: expected PARTITION:OFFSET, e.g. 0:42")
        found = [
            x for x in _read(None, None) if (x.partition, x.offset) == (int(partition), int(offset))
        ]
        if not found:
            out.print(f"no dead letter at {where}")
            raise typer.Exit(EXIT_NOT_FOUND)
        x = found[0]
        out.print_json(
            json.dumps(
                {
                    "partition": x.partition,
                    "offset": x.offset,
                    "timestamp_ms": x.timestamp_ms,
                    "reason": x.reason,
                    "message": x.message,
                    "source": x.source,
                    "key": None if x.key is None else x.key.decode("utf-8", "replace"),
                    "value": None if x.value is None else x.value.decode("utf-8", "replace"),
                    "headers": {k: v.decode("utf-8", "replace") for k, v in x.headers},
                },
                ensure_ascii=False,
            )
        )

    friendly(run)()


@dead_letters_app.command("replay")
def replay_command(
    reason: Reason = None,
    since: Since = None,
    dry_run: Annotated[
        bool, typer.Option(help="Say what would be replayed; send nothing.")
    ] = False,
    wait: Annotated[
        bool, typer.Option(help="Wait for each replayed op's outcome and count them.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="How long to wait for one outcome, s.")] = 60.0,
) -> None:
    """Produce the dead letters' original messages to the ops topic again (key, bytes,
    headers; placed by the placement rule). Ops keep their flakes: replaying twice applies
    nothing twice, and an op past the lateness window is refused as late again."""
    from dyno_stream.cli.common import friendly, kafka_settings

    def run() -> None:
        s = kafka_settings()
        letters = read_letters(s, since=None if since is None else since_ms(since), reason=reason)
        replayable = [x for x in letters if x.replayable]
        counts = ", ".join(f"{why} {n:,}" for why, n in by_reason(replayable).most_common())
        out.print(f"{len(replayable):,} of {len(letters):,} dead letters to replay ({counts})")
        if dry_run or not replayable:
            return
        report = replay(s, letters, wait=wait, timeout=timeout)
        out.print(f"replayed {report.replayed:,} to {s.topics.ops}")
        if report.skipped:
            out.print(f"skipped (not ops): {dict(report.skipped)}")
        if wait:
            out.print(f"applied {report.applied:,}")
            for why, n in report.refused.most_common():
                out.print(f"refused again: {why} {n:,}")
            if report.unknown:
                out.print(f"outcome unknown: {report.unknown:,}")

    friendly(run)()
