"""``dyno-stream broker``: the local Apache Kafka broker, for development and the demo."""

from __future__ import annotations

from typing import Annotated

import typer

from dyno_stream.cli.common import err, friendly, out

broker_app = typer.Typer(
    help="The local Apache Kafka broker (from Maven Central jars).", no_args_is_help=True
)

#: Which Apache Kafka release the local broker runs (its jars are cached per version).
KafkaVersionOption = Annotated[
    str | None,
    typer.Option(
        "--kafka-version",
        help="Apache Kafka release to run: 4.x, or 3.x from 3.7 (e.g. 3.9.1); default: "
        "DYNO_KAFKA_VERSION, else the packaged pom's (4.1.2).",
    ),
]


@broker_app.command("start")
@friendly
def broker_start(kafka_version: KafkaVersionOption = None) -> None:
    """Start the local broker (downloads the jars once); prints the bootstrap address."""
    from dyno_stream.devtools.broker import LocalBroker

    b = LocalBroker() if kafka_version is None else LocalBroker(kafka_version=kafka_version)
    err.print(f"starting Kafka {b.kafka_version} broker in {b.home} ...")
    out.print(b.start())


@broker_app.command("stop")
@friendly
def broker_stop() -> None:
    """Stop the local broker."""
    from dyno_stream.devtools.broker import LocalBroker

    out.print("stopped" if LocalBroker().stop() else "not running")


@broker_app.command("status")
@friendly
def broker_status() -> None:
    """Is the local broker running?"""
    from dyno_stream.devtools.broker import LocalBroker

    st = LocalBroker().status()
    out.print(
        f"{'running' if st.running else 'stopped'}  pid={st.pid}  "
        f"bootstrap={st.bootstrap}  home={st.home}"
    )
    if not st.running:
        raise typer.Exit(3)


@broker_app.command("fetch")
@friendly
def broker_fetch(kafka_version: KafkaVersionOption = None) -> None:
    """Download the broker's jars into the cache (done by start too)."""
    from dyno_stream.devtools.broker import ensure_jars

    out.print(str(ensure_jars(version=kafka_version)))
