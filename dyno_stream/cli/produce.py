"""Commands that send to the ops topic: ``op``, ``flatten`` and ``erase``."""

from __future__ import annotations

import json
from concurrent.futures import Future
from typing import Annotated

import typer

from dyno_stream.cli.common import EXIT_NOT_FOUND, EXIT_REFUSED, err, friendly, kafka_settings, out
from dyno_stream.client.producer import Receipt
from dyno_stream.config import Settings
from dyno_stream.core.errors import PublishError


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
    from dyno_stream.client.producer import DynoClient
    from dyno_stream.core.errors import InvalidChangeError, OpRefusedError
    from dyno_stream.core.events import make_op
    from dyno_stream.core.expectations import Expectation
    from dyno_stream.core.flake import new_flake

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


def _delivered(future: Future[Receipt], s: Settings) -> Receipt:
    """Wait as long as the producer itself would, then say what to check."""
    try:
        return future.result(s.worker.publish_timeout_s + 5)
    except TimeoutError:
        raise PublishError(
            f"Kafka at {s.kafka.bootstrap_servers} did not acknowledge the event within "
            f"{s.worker.publish_timeout_s:.0f}s; is the broker up and does topic "
            f"{s.topics.ops!r} exist (dyno-stream topics)?"
        ) from None


@friendly
def flatten(
    item: Annotated[str, typer.Argument(help="Item name.")],
    hash: Annotated[str, typer.Argument(help="The chain hash to flatten up to (MD5 hex).")],
) -> None:
    """Send a flatten command: workers fold the item's history up to that hash, in order."""
    from dyno_stream.client.producer import DynoClient

    s = kafka_settings()
    with DynoClient(s) as client:
        d = _delivered(client.flatten(item, hash), s)
    out.print(f"flatten {d.item} -> {d.topic}/{d.partition}@{d.offset}")


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
    d = done.receipt
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
