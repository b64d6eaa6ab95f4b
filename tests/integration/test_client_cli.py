"""The ``dyno-stream`` command line, run as a real subprocess against the test broker.

Settings reach the command only through ``DYNO_*`` environment variables, as they would in a
deployment; the tests read what it produced straight from Kafka, and what it prints.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from helpers import REPO, cli_env, free_port_pair, run_cli
from pydantic import SecretStr

from dyno_stream.client import DynoClient
from dyno_stream.config import Settings
from dyno_stream.core.events import PutItem, json_schemas, parse_event
from dyno_stream.core.flake import new_flake
from dyno_stream.kafka.topics import ensure_topics

WAIT_S = 60.0


def read_topic(
    s: Settings, topic: str, at_least: int, timeout: float = WAIT_S, quiet_s: float = 1.0
) -> list[Message]:
    """Every message of ``topic`` from its beginning: at least ``at_least``, then until quiet."""
    consumer = Consumer(
        {
            **s.kafka.librdkafka(),
            "group.id": f"test-cli-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while len(out) < at_least or time.monotonic() - quiet_since < quiet_s:
            if len(out) < at_least and time.monotonic() > deadline:
                pytest.fail(
                    f"{len(out)} messages on {topic} within {timeout:.0f}s, "
                    f"expected at least {at_least}"
                )
            for m in consumer.consume(1000, 0.2):
                if m.error() is None:
                    out.append(m)
                    quiet_since = time.monotonic()
                else:
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
        return out
    finally:
        consumer.close()


def high_watermark(s: Settings, topic: str, partition: int = 0) -> int:
    consumer = Consumer({**s.kafka.librdkafka(), "group.id": f"test-cli-{uuid.uuid4().hex}"})
    try:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
        return int(high)
    finally:
        consumer.close()


def wait_item(worker: Any, name: str, changes: int) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        item = worker.worker.reads.item(name)
        if item is not None and item["changes"] == changes:
            return item
        if time.monotonic() > deadline:
            pytest.fail(
                f"worker store: {name!r} is {item!r} after {WAIT_S:.0f}s, "
                f"expected changes={changes}; worker error {worker.error!r}"
            )
        time.sleep(0.05)


def validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


# ---------------------------------------------------------------------------------------------
# dyno-stream op
# ---------------------------------------------------------------------------------------------


def test_cli_op_produces_a_valid_event(make_settings: Callable[..., Settings]) -> None:
    s = make_settings()
    ensure_topics(s)
    env = cli_env(s)

    res = run_cli(env, "op", "chilts", "putItem", '{"nick":"chilts","email":"me@example.com"}')
    assert res.returncode == 0, res.stderr
    out = " ".join(res.stdout.split())
    assert out.startswith("putItem chilts ts="), out
    assert f"-> {s.topics.ops}/0@0" in out, out
    printed_ts = out.split("ts=", 1)[1].split()[0]

    ts = new_flake()
    res2 = run_cli(env, "op", "chilts", "incAttrBy", '{"field":"logins","by":2}', "--ts", ts)
    assert res2.returncode == 0, res2.stderr
    assert f"ts={ts}" in " ".join(res2.stdout.split())

    msgs = read_topic(s, s.topics.ops, 2)
    assert len(msgs) == 2
    op_schema = validator(json_schemas()["op-event.schema.json"])
    for m in msgs:
        assert m.key() == b"chilts"
        assert list(op_schema.iter_errors(json.loads(m.value()))) == []
    first = parse_event(msgs[0].value())
    assert isinstance(first, PutItem)
    assert (first.item, first.ts) == ("chilts", printed_ts)
    assert first.change == {"nick": "chilts", "email": "me@example.com"}
    assert json.loads(msgs[1].value()) == {
        "item": "chilts",
        "ts": ts,
        "op": "incAttrBy",
        "change": {"field": "logins", "by": 2},
    }


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("x", "incAttrBy", '{"by":"x"}'), "change."),
        (("x", "incAttrBy", '{"field":"n","by":"x"}'), "change.by"),
        (("x", "putAttrs", "{oops"), "change"),
        (("x", "frobnicate", "{}"), "op"),
        (("", "putAttrs", '{"a":1}'), "item"),
        (("x", "putAttrs", '{"a":1}', "--ts", "yesterday"), "ts"),
    ],
    ids=["by-x-no-field", "by-x", "not-json", "unknown-op", "empty-item", "bad-ts"],
)
def test_cli_bad_op_exits_1_and_produces_nothing(
    make_settings: Callable[..., Settings], args: tuple[str, ...], field: str
) -> None:
    s = make_settings()
    ensure_topics(s)
    res = run_cli(cli_env(s), "op", *args)
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    message = " ".join(res.stderr.split())  # (one line is checked below, on its own)
    assert message.startswith(f"error: {field}"), f"the message does not name {field!r}: {message}"
    assert res.stdout == ""
    assert high_watermark(s, s.topics.ops) == 0, "a rejected op was produced"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        # a long message stays one line (cli.py: "one clear line on stderr")
        (
            ("x", "frobnicate", "{}"),
            "unknown op 'frobnicate'; expected one of putItem, delItem, "
            "putAttrs, delAttrs, incAttrBy, decAttrBy, append, addToSet",
        ),
        # what the user typed is printed as it is, not read as console markup
        (("x", "[bold]", "{}"), "unknown op '[bold]'"),
        (("x", "[/x]", "{}"), "unknown op '[/x]'"),
    ],
    ids=["long-message", "markup-like", "bad-markup"],
)
def test_cli_error_is_one_literal_line(
    make_settings: Callable[..., Settings], args: tuple[str, ...], needle: str
) -> None:
    s = make_settings()
    res = run_cli(cli_env(s), "op", *args)
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr[-600:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, f"the error is {len(lines)} lines: {res.stderr!r}"
    assert lines[0].startswith("error: op: "), lines[0]
    assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


@pytest.mark.parametrize("item", ["[/x]", "[bold]x", "a/b%c"])
def test_cli_op_prints_the_item_name_as_it_is(
    make_settings: Callable[..., Settings], item: str
) -> None:
    s = make_settings()
    ensure_topics(s)
    res = run_cli(cli_env(s), "op", item, "putAttrs", '{"a":1}')
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr[-600:])
    assert res.stdout.startswith(f"putAttrs {item} ts="), res.stdout
    msgs = read_topic(s, s.topics.ops, 1)
    assert [m.key() for m in msgs] == [item.encode()]


# ---------------------------------------------------------------------------------------------
# dyno-stream get / dump on a stopped worker's store
# ---------------------------------------------------------------------------------------------


def test_cli_get_and_dump_read_a_stopped_workers_store(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], Any]
) -> None:
    s = make_settings()
    worker = start_worker(s)
    with DynoClient(s) as client:
        d1 = client.put_item("chilts", {"nick": "chilts", "email": "me@example.com"}).result(30)
        d2 = client.del_attrs("chilts", ["email"]).result(30)
        d3 = client.put_attrs("chilts", {"name": "Andy Chilton"}).result(30)
        d4 = client.append("zed/ü", "log", "a b").result(30)
    live = wait_item(worker, "chilts", 3)
    wait_item(worker, "zed/ü", 1)
    worker.stop()
    env = cli_env(s)

    res = run_cli(env, "get", "chilts")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["item"] == "chilts"
    assert got["value"] == {"nick": "chilts", "name": "Andy Chilton"}
    assert (got["timestamp"], got["changes"], got["count"]) == (d3.ts, 3, 3)
    assert got["hash"] == live["hash"]

    res = run_cli(env, "get", "nobody")
    assert res.returncode == 3  # not found is not an error of the tool
    assert "no item 'nobody'" in res.stderr

    chilts_rows = [
        f'chilts/{d1.ts}/putItem = {{"nick":"chilts","email":"me@example.com"}}',
        f'chilts/{d2.ts}/delAttrs = ["email"]',
        f'chilts/{d3.ts}/putAttrs = {{"name":"Andy Chilton"}}',
    ]
    res = run_cli(env, "dump", "--item", "chilts")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == chilts_rows

    res = run_cli(env, "dump")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        *chilts_rows,
        f'zed%2F\u00fc/{d4.ts}/append = {{"field":"log","str":"a b"}}',
    ]


# ---------------------------------------------------------------------------------------------
# schemas
# ---------------------------------------------------------------------------------------------


def test_schemas_export_validates_real_events(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    tmp_path: Path,
) -> None:
    out_dir = tmp_path / "exported"
    res = subprocess.run(
        [sys.executable, "-m", "dyno_stream", "schemas", "export", "--dir", str(out_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    files = {p.name: json.loads(p.read_text()) for p in out_dir.iterdir()}
    assert files == json_schemas()
    snap_schema = validator(files["snapshot.schema.json"])
    op_schema = validator(files["op-event.schema.json"])

    s = make_settings()
    worker = start_worker(s)
    with DynoClient(s) as client:
        client.put_item("chilts", {"nick": "chilts", "email": "me@example.com"}).result(30)
        client.del_attrs("chilts", ["email"]).result(30)
        client.inc_attr_by("chilts", "visits", 2.5).result(30)
        client.add_to_set("chilts", "tags", "x").result(30)
        client.del_item("gone").result(30)
        item = wait_item(worker, "chilts", 4)
        client.flatten("chilts", item["hash"]).result(30)
    snaps = read_topic(s, s.topics.snapshots, 3)
    ops = read_topic(s, s.topics.ops, 6)
    worker.stop()

    snapshots = [json.loads(m.value()) for m in snaps if m.value() is not None]
    assert any(sn["count"] == 1 and sn["changes"] == 4 for sn in snapshots), snapshots
    # a deleted item's is a tombstone: key, null value, the contract's headers
    (tomb,) = [m for m in snaps if m.value() is None]
    assert tomb.key() == b"gone"
    headers = {k: (v or b"").decode() for k, v in tomb.headers() or []}
    tomb_schema = validator(files["tombstone-headers.schema.json"])
    assert [e.message for e in tomb_schema.iter_errors(headers)] == []
    assert set(files["tombstone-headers.schema.json"]["required"]) <= set(headers)
    for sn in snapshots:
        errors = [e.message for e in snap_schema.iter_errors(sn)]
        assert errors == [], f"{sn}: {errors}"
    for m in ops:
        event = json.loads(m.value())
        errors = [e.message for e in op_schema.iter_errors(event)]
        assert errors == [], f"{event}: {errors}"

    # and the schemas do reject what the worker would refuse
    sn = snapshots[-1]
    for bad in (
        {**sn, "changes": "4"},
        {**sn, "extra": 1},
        {k: v for k, v in sn.items() if k != "hash"},
        {**sn, "source": {"topic": "t", "partition": 0}},
    ):
        assert not snap_schema.is_valid(bad), bad
    ev = json.loads(ops[0].value())
    for bad in (
        {**ev, "op": "frobnicate"},
        {**ev, "ts": "yesterday"},
        {k: v for k, v in ev.items() if k != "item"},
        {"item": "x", "op": "incAttrBy", "ts": ev["ts"], "change": {"field": "n", "by": "x"}},
        {"item": "x", "op": "flatten", "hash": "xyz"},
    ):
        assert not op_schema.is_valid(bad), bad


def test_cli_dump_asks_a_running_worker_with_its_token_and_says_a_refusal(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], Any]
) -> None:
    """A running worker holds its stores' locks, so ``dump`` asks its ``/rows``: with the
    worker's ``http_token`` when set; a refusal is said, not hidden behind the locked store."""
    port = free_port_pair()
    s = make_settings(http_port=port, http_token=SecretStr("s3cret"))
    worker = start_worker(s)
    with DynoClient(s) as client:
        d = client.put_item("k", {"v": 1}).result(30)
    wait_item(worker, "k", 1)
    without_token = cli_env(s, DYNO_WORKER__HTTP_PORT=str(port))
    res = run_cli({**without_token, "DYNO_WORKER__HTTP_TOKEN": "s3cret"}, "dump", "--item", "k")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [f'k/{d.ts}/putItem = {{"v":1}}']
    res = run_cli(without_token, "dump", "--item", "k")
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "answered 401" in res.stderr and "DYNO_WORKER__HTTP_TOKEN" in res.stderr, res.stderr
