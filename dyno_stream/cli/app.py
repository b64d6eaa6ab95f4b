"""The ``dyno-stream`` command line.

Every command reads the same settings (``config/dyno-stream.toml``, ``DYNO_*`` environment)
and turns a ``DynoError`` into one clear line on stderr and exit status 1.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from dyno_stream.cli import maintain, produce, read
from dyno_stream.cli.broker import broker_app
from dyno_stream.cli.common import friendly, kafka_settings, out, settings
from dyno_stream.cli.dead_letters import dead_letters_app
from dyno_stream.cli.history import history
from dyno_stream.cli.verify import verify
from dyno_stream.config import load_settings
from dyno_stream.core.errors import DynoError

app = typer.Typer(
    help="dyno-stream: an event-sourced item store on Kafka (level-dyno's histories in LevelDB).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
schemas_app = typer.Typer(help="The JSON Schema of the wire contract.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")
app.add_typer(schemas_app, name="schemas")
app.add_typer(dead_letters_app, name="dead-letters")
app.command()(history)
app.command()(verify)


def _print_version(value: bool) -> None:
    if value:
        from dyno_stream import __version__

        print(f"dyno-stream {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the release (the package version) and exit.",
        ),
    ] = False,
) -> None:
    """dyno-stream: an event-sourced item store on Kafka (level-dyno's histories in LevelDB)."""


# -- worker and topics -------------------------------------------------------------------------


@app.command()
@friendly
def worker(
    processes: Annotated[
        str | None,
        typer.Option(
            help="Members of the group to run, a child process each, or 'auto' (one per "
            "core); default: [worker] processes (1: this process, no children).",
        ),
    ] = None,
) -> None:
    """Run a stream worker until SIGTERM/SIGINT."""
    from dyno_stream.config import worker_processes
    from dyno_stream.stream.logs import setup_logging

    s = settings() if processes is None else load_settings(worker={"processes": processes})
    setup_logging(s.worker.log_format, s.worker.log_level)
    count = worker_processes(s.worker)
    if count > 1:
        from dyno_stream.stream.supervisor import Supervisor

        raise typer.Exit(Supervisor(s, count).run())
    from dyno_stream.stream.worker import Worker

    try:
        code = Worker(s).run()
    except DynoError as exc:
        # a log line, so collectors reading the worker's (JSON) logs see why it stopped
        logging.getLogger("dyno_stream.stream.worker").error(
            "worker stopped: %s", exc, extra={"reason": exc.reason}
        )
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command()
@friendly
def topics() -> None:
    """Create the ops, snapshot and dead-letter topics if they are missing."""
    from dyno_stream.kafka.topics import ensure_topics

    created = ensure_topics(kafka_settings())
    out.print("created: " + ", ".join(created) if created else "all topics exist")


# The commands of the other modules, in the order ``--help`` lists them.
app.command()(produce.op)
app.command()(produce.flatten)
app.command()(produce.erase)
app.command()(maintain.compact)
app.command()(maintain.repartition)
app.command("migrate-snapshots")(maintain.migrate_snapshots)
app.command()(read.get)
app.command()(read.ls)
app.command()(read.dump)
app.command()(read.watch)


# -- schemas -----------------------------------------------------------------------------------


@schemas_app.command("export")
def schemas_export(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write.")] = Path("schemas"),
) -> None:
    """Write the JSON Schema files of the wire contract."""
    from dyno_stream.core.events import json_schemas

    directory.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (directory / name).write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
        out.print(f"wrote {directory / name}")


# -- demo --------------------------------------------------------------------------------------


@app.command()
@friendly
def demo(
    keep_broker: Annotated[bool, typer.Option(help="Leave the broker running afterwards.")] = False,
) -> None:
    """The seed's example end to end through Kafka (starts the broker and a worker)."""
    from dyno_stream.cli.demo import run_demo

    run_demo(out, keep_broker=keep_broker)


def main() -> None:  # pragma: no cover - console entry point
    app()
