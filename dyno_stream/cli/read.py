"""Commands that read items: ``get``, ``ls``, ``dump`` and ``watch`` (from a running worker,
its stores, or the snapshot topic)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dyno_stream.cli.common import EXIT_NOT_FOUND, err, friendly, kafka_settings, out, settings
from dyno_stream.client.http import HttpAnswer, bearer, http_get
from dyno_stream.config import Settings
from dyno_stream.core.errors import KafkaServiceError, StoreError, WorkersUnreachableError


def _http_get(path: str, s: Settings) -> HttpAnswer | None:
    """Ask a running worker (its store is locked while it runs), with ``[worker]
    http_token`` when set; None when none answers."""
    if not s.worker.http_port:
        return None
    try:
        return http_get(
            f"http://{s.worker.http_host}:{s.worker.http_port}{path}",
            headers=bearer(s.worker.http_token_text),
        )
    except OSError:
        return None


def _local_stores(s: Settings) -> list[Path]:
    """The partition stores under the data dir; never a copy set aside for a restore."""
    from dyno_stream.store.partition import partition_stores

    return partition_stores(s.worker.data_dir, s.topics.ops)


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
    from dyno_stream.client.reads import ItemReads

    s = kafka_settings() if view else settings()
    if view:
        _get_from_view(s, item)
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
        found = _get_from_stores(stores, item, at)
    if found is None:
        err.print(f"no item {item!r} in the workers' stores")
        raise typer.Exit(EXIT_NOT_FOUND)
    out.print_json(json.dumps(found, ensure_ascii=False))


def _get_from_view(s: Settings, item: str) -> None:
    """``get --view``: the item's snapshot, from the snapshot topic read to its end."""
    from dyno_stream.client.views import MaterializedView

    with MaterializedView(s, prefix=item) as v:
        if not v.wait_until_caught_up(60):
            raise KafkaServiceError("the snapshot topic could not be read to its end within 60s")
        snap = v.get(item)
    if snap is None:  # never published, or deleted (its tombstone dropped it)
        err.print(f"no item {item!r} in {s.topics.snapshots}")
        raise typer.Exit(EXIT_NOT_FOUND)
    out.print_json(json.dumps(snap, ensure_ascii=False))


def _get_from_stores(stores: list[Path], item: str, at: int | None) -> dict[str, Any] | None:
    """The item from the partition stores here, when no worker runs (they are not locked);
    refused when more than one store holds it: no answer would be right."""
    from dyno_stream.store import DynoStore

    found, holders = None, []
    for path in stores:
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
        ) from None  # called while a worker's silence is handled: not its consequence
    return found


@friendly
def ls(
    prefix: Annotated[str, typer.Option(help="Only items whose name starts with this.")] = "",
    long: Annotated[bool, typer.Option("--long", "-l", help="Each item as one JSON line.")] = False,
) -> None:
    """Every item of every worker, in name order, each once (pages merged, ``GET /items``)."""
    from dyno_stream.client.reads import ItemReads

    s = kafka_settings()
    for it in ItemReads(s, s.kafka.librdkafka()).list(prefix):
        out.print(json.dumps(it, ensure_ascii=False) if long else it["item"])


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
        if answer is not None and answer.status == 200:
            sys.stdout.write(answer.body.decode())
            return
        if answer is not None:  # a worker runs and holds the stores: its refusal is the answer
            err.print(
                f"the worker at {s.worker.http_host}:{s.worker.http_port} answered "
                f"{answer.status}: {answer.body.decode(errors='replace').strip()}"
                + ("; set DYNO_WORKER__HTTP_TOKEN to its token" if answer.status == 401 else "")
            )
            raise typer.Exit(1)
        paths = _local_stores(s)
    else:
        paths = [db]
    for path in paths:
        with DynoStore(path) as store:
            for key, value in store.rows(item):
                out.print(f"{key} = {value}")


@friendly
def watch(
    prefix: Annotated[str, typer.Option(help="Only items whose name starts with this.")] = "",
    from_beginning: Annotated[
        bool, typer.Option(help="Also print the changes already in the topic.")
    ] = False,
) -> None:
    """Print item changes live from the snapshot topic, one JSON line each (Ctrl-C stops)."""
    import threading

    from dyno_stream.client.views import MaterializedView

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
