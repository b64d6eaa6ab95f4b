"""The ``dyno-stream`` command line.

Every command reads the same settings (``config/dyno-stream.toml``, ``DYNO_*`` environment)
and turns a ``DynoError`` into one clear line on stderr and exit status 1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from dyno_stream.cli.dead_letters import dead_letters_app
from dyno_stream.cli.history import history
from dyno_stream.cli.verify import verify
from dyno_stream.config import Settings, load_settings
from dyno_stream.core.errors import (
    ConfigError,
    DynoError,
    KafkaServiceError,
    PublishError,
    StoreError,
)
from dyno_stream.kafka.client import Delivery
from dyno_stream.stream.http_client import http_get

app = typer.Typer(
    help="dyno-stream: an event-sourced item store on Kafka (level-dyno's histories in LevelDB).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
broker_app = typer.Typer(
    help="The local Apache Kafka broker (from Maven Central jars).", no_args_is_help=True
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


# no markup: item names and messages are printed exactly as they are, one line each
out = Console(highlight=False, markup=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)
#: ``get`` exits with this when the item does not exist or was deleted
EXIT_NOT_FOUND = 3
#: The worker refused the op (``op --then-get``): an expectation that failed, a late op.
EXIT_REFUSED = 4

F = TypeVar("F", bound=Callable[..., Any])


def _process_started() -> float:
    """When this process began, on ``time.monotonic``'s clock (Linux: both count from boot;
    elsewhere: now). On a loaded machine Python's start-up alone took 5 s, and the user
    waits for that too."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime
        started = ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic()
    # CLOCK_MONOTONIC and /proc's starttime count from boot alike (neither counts suspend)
    return min(started, time.monotonic())


#: When the command began: ``[kafka] connect_timeout_s`` counts from here.
_STARTED = _process_started()


def friendly(fn: F) -> F:
    """Report our errors as one line, not a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DynoError as exc:
            err.print(Text("error: ", style="red") + Text(str(exc)), soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def settings() -> Settings:
    return load_settings()


def kafka_settings() -> Settings:
    """The settings, once a Kafka broker answers.

    A command that needs Kafka ends within ``[kafka] connect_timeout_s`` with one line when
    none does, instead of waiting out its own timeouts (see ``kafka.connection``).
    librdkafka's own lines about it are hidden: that one line says it all (they show with
    ``DYNO_WORKER__LOG_LEVEL=DEBUG``).
    """
    from dyno_stream.kafka.connection import require_broker

    s = settings()
    if s.worker.log_level != "DEBUG":
        logging.getLogger("dyno_stream.librdkafka").setLevel(logging.ERROR)
    require_broker(s.kafka, started=_STARTED)
    return s


# -- broker ------------------------------------------------------------------------------------

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


# -- producing ---------------------------------------------------------------------------------


@app.command()
@friendly
def op(
    item: Annotated[str, typer.Argument(help="Item name (also the Kafka key).")],
    opname: Annotated[
        str,
        typer.Argument(
            metavar="OPNAME",
            help="putItem, delItem, putAttrs, delAttrs, incAttrBy, decAttrBy, append, addToSet.",
        ),
    ],
    change: Annotated[
        str, typer.Argument(help='The change as JSON, e.g. \'{"nick":"chilts"}\'.')
    ] = "{}",
    ts: Annotated[str | None, typer.Option(help="Flake id to use (default: a new one).")] = None,
    then_get: Annotated[
        bool,
        typer.Option(
            "--then-get",
            help="Then print the item as this op left it (from its worker); exit 4 if the "
            "worker refused the op.",
        ),
    ] = False,
    expect_hash: Annotated[
        str | None,
        typer.Option(help="Apply only if the item's chain hash is this then (conditional op)."),
    ] = None,
    expect_changes: Annotated[
        int | None,
        typer.Option(help="Apply only if the item has this many changes then (0: absent)."),
    ] = None,
) -> None:
    """Produce one op event to the ops topic and print where it landed."""
    from dyno_stream.core.errors import InvalidChangeError, OpRefusedError
    from dyno_stream.core.events import make_op
    from dyno_stream.core.expectations import Expectation
    from dyno_stream.core.flake import new_flake
    from dyno_stream.kafka.client import DynoClient

    try:
        value = json.loads(change)
    except json.JSONDecodeError as exc:
        raise InvalidChangeError("change", f"not JSON: {exc}") from None
    event = make_op(opname, item, value, ts or new_flake())
    conditional = expect_hash is not None or expect_changes is not None
    headers = Expectation(expect_hash, expect_changes).headers() if conditional else None
    s = kafka_settings()
    with DynoClient(s) as client:
        d = _delivered(client.send(event, headers), s)
        out.print(f"{d.op} {d.item} ts={d.ts} -> {d.topic}/{d.partition}@{d.offset}")
        if then_get:  # read your own write: the owner answers once it has applied d
            try:
                after = client.get(d.item, after=d)
            except OpRefusedError as exc:
                err.print(str(exc))
                if exc.actual:
                    err.print(f"actual: {json.dumps(exc.actual)}")
                raise typer.Exit(EXIT_REFUSED) from None
            if after is None:
                err.print(f"no item {d.item!r} after this op (deleted)")
                raise typer.Exit(EXIT_NOT_FOUND)
            out.print_json(json.dumps(after, ensure_ascii=False))


def _delivered(future: Future[Delivery], s: Settings) -> Delivery:
    """Wait as long as the producer itself would, then say what to check."""
    try:
        return future.result(s.worker.publish_timeout_s + 5)
    except TimeoutError:
        raise PublishError(
            f"Kafka at {s.kafka.bootstrap_servers} did not acknowledge the event within "
            f"{s.worker.publish_timeout_s:.0f}s; is the broker up and does topic "
            f"{s.topics.ops!r} exist (dyno-stream topics)?"
        ) from None


@app.command()
@friendly
def flatten(
    item: Annotated[str, typer.Argument(help="Item name.")],
    hash: Annotated[str, typer.Argument(help="The chain hash to flatten up to (MD5 hex).")],
) -> None:
    """Send a flatten command: workers fold the item's history up to that hash, in order."""
    from dyno_stream.kafka.client import DynoClient

    s = kafka_settings()
    with DynoClient(s) as client:
        d = _delivered(client.flatten(item, hash), s)
    out.print(f"flatten {d.item} -> {d.topic}/{d.partition}@{d.offset}")


@app.command()
@friendly
def erase(
    item: Annotated[str, typer.Argument(help="Item name.")],
    wait: Annotated[
        bool, typer.Option(help="Return once the owning worker has confirmed the erasure.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="How long --wait waits, in seconds.")] = 60.0,
) -> None:
    """Erase an item: its worker removes every row and cached state of it at once, keeps
    only its deleted marker (no value) and publishes its tombstone.

    With --wait, exits 0 once the worker's answer says its store removed the item's rows
    ("erased NAME: N rows removed from TOPIC/PARTITION"); 3 when its store held no row of
    the item (no such item), or when no answer came within --timeout (the worker down or
    behind: it erases the item when it reaches the command); 1 on an error or a refusal.
    Without --wait, exits 0 once the command is sent.
    """
    from dyno_stream.jobs.erasure import erase as send_erase

    s = kafka_settings()
    done = send_erase(s, item, wait=wait, timeout=timeout)
    d = done.delivery
    where = f"{d.topic}/{d.partition}@{d.offset}"
    partition = f"{d.topic}/{d.partition}"
    if not wait:
        out.print(f"erase {d.item} ts={d.ts} -> {where}")
    elif done.confirmed:
        out.print(f"erased {d.item}: {done.rows} rows removed from {partition}")
    elif done.nothing_held:
        err.print(
            f"no such item {d.item!r}: the store of {partition} held no row of it, nothing erased"
        )
        raise typer.Exit(EXIT_NOT_FOUND)
    elif done.answered:
        err.print(
            f"erase of {d.item!r} ({where}) applied, but the worker's answer does not say "
            "how many rows it removed (a worker older than this command?): not confirmed"
        )
        raise typer.Exit(1)
    elif done.refused is not None:
        err.print(f"erase of {d.item!r} ({where}) refused by the worker: {done.refused}")
        raise typer.Exit(1)
    else:
        err.print(
            f"erase of {d.item!r} sent ({where}) but not confirmed within {timeout:.0f}s; "
            "its worker erases it when it reaches the command"
        )
        raise typer.Exit(3)


# -- compaction ------------------------------------------------------------------------------


@app.command()
@friendly
def compact(
    db: Annotated[
        Path | None,
        typer.Option(
            help="Offline: compact this store (no worker may hold it), then reclaim disk."
        ),
    ] = None,
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
    for line in summary.details:
        out.print(line)
    # the summary is the command's answer: printed whatever the log level
    if out.is_terminal:
        out.print(summary.table())
    else:
        out.print(summary.log_line())
    if summary.unconfirmed:  # cron's mail and alerts see it; the next pass retries them
        raise typer.Exit(EXIT_UNCONFIRMED)


@app.command()
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


@app.command("migrate-snapshots")
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


# -- reading -----------------------------------------------------------------------------------


def _http_get(path: str, s: Settings) -> tuple[int, bytes] | None:
    """Ask a running worker (its store is locked while it runs); None when none answers."""
    if not s.worker.http_port:
        return None
    try:
        return http_get(f"http://{s.worker.http_host}:{s.worker.http_port}{path}")
    except OSError:
        return None


def _local_stores(s: Settings) -> list[Path]:
    """The partition stores under the data dir; never a copy set aside for a restore."""
    from dyno_stream.store.partition import partition_stores

    return partition_stores(s.worker.data_dir, s.topics.ops)


@app.command()
@friendly
def get(
    item: Annotated[str, typer.Argument(help="Item name.")],
    view: Annotated[
        bool,
        typer.Option("--view", help="Answer from the snapshot topic (no worker store needed)."),
    ] = False,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="The item as it stood then: an ISO 8601 time or milliseconds since the epoch.",
        ),
    ] = None,
) -> None:
    """Print an item as a worker's store holds it (value, timestamp, changes, hash, count).

    Exits 3 when there is no such item: never written, or deleted (not found is not an
    error of the tool).
    """
    from dyno_stream.kafka.item_reads import ItemReads, WorkersUnreachableError
    from dyno_stream.store import DynoStore
    from dyno_stream.views import MaterializedView

    s = kafka_settings() if view else settings()
    if view:
        with MaterializedView(s, prefix=item) as v:
            if not v.wait_until_caught_up(60):
                raise KafkaServiceError(
                    "the snapshot topic could not be read to its end within 60s"
                )
            snap = v.get(item)
        if snap is None:  # never published, or deleted (its tombstone dropped it)
            err.print(f"no item {item!r} in {s.topics.snapshots}")
            raise typer.Exit(EXIT_NOT_FOUND)
        out.print_json(json.dumps(snap, ensure_ascii=False))
        return
    from dyno_stream.cli.history import time_ms

    at = None if as_of is None else time_ms(as_of)
    try:
        found = ItemReads(s, s.kafka.librdkafka()).get(item, as_of_ms=at)
    except WorkersUnreachableError as exc:
        stores = _local_stores(s)
        if not stores:
            err.print(
                f"error: {exc}; `dyno-stream get --view {item}` reads the snapshot topic instead"
            )
            raise typer.Exit(1) from None
        found, holders = None, []
        for path in stores:  # no worker runs here: read its stores (they are not locked)
            with DynoStore(path) as store:
                it = store.get_item(item) if at is None else store.as_of(item, at)
            if it.timestamp is not None:  # it holds the item, present or deleted
                holders.append(str(path))
                found = None if it.value is None else it.as_dict(store=str(path))
        if len(holders) > 1:
            raise StoreError(
                f"{item!r} is in {len(holders)} partition stores ({', '.join(holders)}): its "
                "ops reached more than one partition (producers placing keys differently?); "
                "no answer is right"
            ) from None
    if found is None:
        err.print(f"no item {item!r} in the workers' stores")
        raise typer.Exit(EXIT_NOT_FOUND)
    out.print_json(json.dumps(found, ensure_ascii=False))


@app.command()
@friendly
def ls(
    prefix: Annotated[str, typer.Option(help="Only items whose name starts with this.")] = "",
    long: Annotated[bool, typer.Option("--long", "-l", help="Each item as one JSON line.")] = False,
) -> None:
    """Every item of every worker, in name order, each once (pages merged, ``GET /items``)."""
    from dyno_stream.kafka.item_reads import ItemReads

    s = kafka_settings()
    for it in ItemReads(s, s.kafka.librdkafka()).list(prefix):
        out.print(json.dumps(it, ensure_ascii=False) if long else it["item"])


@app.command()
@friendly
def dump(
    item: Annotated[str | None, typer.Option(help="Only this item's rows.")] = None,
    db: Annotated[Path | None, typer.Option(help="A store's path (default: the worker's).")] = None,
) -> None:
    """Print LevelDB rows as the seed's README shows them: key = value."""
    from urllib.parse import quote

    from dyno_stream.store import DynoStore

    if db is None:
        s = settings()
        query = "" if item is None else f"?item={quote(item, safe='')}"
        answer = _http_get(f"/rows{query}", s)
        if answer is not None and answer[0] == 200:
            sys.stdout.write(answer[1].decode())
            return
        paths = _local_stores(s)
    else:
        paths = [db]
    for path in paths:
        with DynoStore(path) as store:
            for key, value in store.rows(item):
                out.print(f"{key} = {value}")


@app.command()
@friendly
def watch(
    prefix: Annotated[str, typer.Option(help="Only items whose name starts with this.")] = "",
    from_beginning: Annotated[
        bool, typer.Option(help="Also print the changes already in the topic.")
    ] = False,
) -> None:
    """Print item changes live from the snapshot topic, one JSON line each (Ctrl-C stops)."""
    import threading

    from dyno_stream.views import MaterializedView

    s = kafka_settings()
    live = threading.Event()

    def show(old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if live.is_set() or from_beginning:
            line = (
                {
                    "item": new["item"],
                    "old": None if old is None else old["value"],
                    "new": new["value"],
                    "changes": new["changes"],
                    "hash": new["hash"],
                }
                if new is not None
                else {  # a tombstone: the item was deleted
                    "item": None if old is None else old["item"],
                    "old": None if old is None else old["value"],
                    "new": None,
                    "deleted": True,
                }
            )
            print(json.dumps(line, ensure_ascii=False), flush=True)

    with MaterializedView(s, prefix=prefix) as v:
        v.on_change(show)
        v.wait_until_caught_up(60)
        live.set()
        err.print(f"watching {s.topics.snapshots} ({len(v)} items so far); Ctrl-C stops")
        # Waited in slices, so that the main thread looks at its signals at least every
        # 0.5 s: a wait with no timeout is a lock acquire that only a signal landing on the
        # main thread itself interrupts.
        forever = threading.Event()
        with contextlib.suppress(KeyboardInterrupt):
            while not forever.wait(0.5):
                pass


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
