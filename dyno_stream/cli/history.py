"""``dyno-stream history ITEM``: an item's rows in its owner's store, each op with its time,
change and the chain hash after it; and the time ``get --as-of`` takes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from dyno_stream.core.errors import ConfigError

out = Console(highlight=False, soft_wrap=True)


def time_ms(text: str) -> int:
    """An ISO 8601 time (naive: UTC) or milliseconds since the epoch."""
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{text!r}: expected an ISO 8601 time (2026-12-08T10:00:00Z) or milliseconds "
            "since the epoch"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def history(
    item: Annotated[str, typer.Argument(help="Item name.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per row.")] = False,
) -> None:
    """Print each row of the item's history: time, op, change, changes and chain hash.

    Rows older than the item's last fold are one ``history`` row (its folded value); exit 3
    when there is no such item."""
    from dyno_stream.cli.common import EXIT_NOT_FOUND, friendly, kafka_settings

    def run() -> None:
        from dyno_stream.client.producer import DynoClient

        s = kafka_settings()
        with DynoClient(s) as client:
            rows: list[dict[str, Any]] = client.history(item)
        if not rows:
            out.print(f"no item {item!r} in the workers' stores")
            raise typer.Exit(EXIT_NOT_FOUND)
        if as_json:
            for row in rows:
                out.print(json.dumps(row, ensure_ascii=False))
            return
        table = Table(title=f"{item}: {len(rows)} rows, {rows[-1]['changes']} changes")
        for column in ("time (UTC)", "op", "change", "changes", "chain hash"):
            table.add_column(column, overflow="fold")
        for row in rows:
            change = json.dumps(row["change"], ensure_ascii=False)
            table.add_row(
                _when(row["time_ms"]), row["op"], change, str(row["changes"]), row["hash"]
            )
        out.print(table)

    friendly(run)()
