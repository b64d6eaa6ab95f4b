"""``dyno-stream doctor``: the deployment's checks as a table (or JSON), exit 1 on a fail."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from dyno_stream.cli.app import app
from dyno_stream.cli.common import friendly, out, settings

_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


@app.command()
@friendly
def doctor(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON list of the findings instead of a table.")
    ] = False,
) -> None:
    """Check the deployment from outside: broker, topics, group, members, dead letters,
    clock and disk; pass, warn or fail with the fix for each. Exits 1 on a fail."""
    from dyno_stream.jobs.doctor import as_json as findings_json
    from dyno_stream.jobs.doctor import diagnose

    findings = diagnose(settings())
    if as_json:
        print(findings_json(findings))
    else:
        table = Table(title="dyno-stream doctor", show_lines=True)
        for column in ("check", "status", "what was seen", "fix"):
            table.add_column(column, overflow="fold")
        for f in findings:
            table.add_row(f.check, Text(f.status, style=_STYLE[f.status]), f.detail, f.fix)
        out.print(table)
        counts = {s: sum(f.status == s for f in findings) for s in _STYLE}
        out.print(", ".join(f"{n} {s}" for s, n in counts.items()))
    if any(f.status == "fail" for f in findings):
        raise typer.Exit(1)
