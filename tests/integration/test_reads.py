"""Reads across workers. Three worker processes, each with its own HTTP port and
data directory, against the real broker: gets routed to the owner from any worker's address,
read-your-writes under a backlog, and listing every item once."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from helpers import WorkerProcess, assignment, cli_env, run_cli, wait_until

from dyno_stream.client import DynoClient
from dyno_stream.client.http import http_get
from dyno_stream.client.reads import ItemReads
from dyno_stream.config import Settings
from dyno_stream.core.errors import ReadTimeoutError, WorkersUnreachableError
from dyno_stream.kafka.members import describe_owners
from dyno_stream.kafka.topics import ensure_topics

PARTITIONS = 6
ITEMS = 1000


@pytest.fixture
def three(make_settings: Any, tmp_path: Path) -> Iterator[tuple[Settings, list[WorkerProcess]]]:
    s: Settings = make_settings(partitions=PARTITIONS)
    ensure_topics(s)
    ports = [free_port() for _ in range(3)]
    workers = [
        WorkerProcess(s, f"w{i}", tmp_path, env={"DYNO_WORKER__HTTP_PORT": str(port)})
        for i, port in enumerate(ports)
    ]
    for w, port in zip(workers, ports, strict=True):
        w.http_port = port  # type: ignore[attr-defined]
    try:
        wait_until(
            lambda: (
                sum(len(w.partitions()) for w in workers) == PARTITIONS
                and all(w.partitions() for w in workers)
            ),
            90,
            lambda: f"the workers did not share the partitions: {assignment(workers)}",
        )
        with_port = s.model_copy(
            update={"worker": s.worker.model_copy(update={"http_port": ports[0]})}
        )
        # the group's description names every partition's owner by its advertised address
        reads = ItemReads(with_port, with_port.kafka.librdkafka())
        wait_until(
            lambda: (
                len(reads.directory.owners().by_partition) == PARTITIONS
                or bool(reads.directory.stale())
            ),
            60,
            lambda: f"owners not advertised: {describe_owners(reads.directory._admin, s)}",
        )
        yield with_port, workers
    finally:
        for w in workers:
            w.cleanup()


def test_get_finds_every_item_from_any_workers_address(
    three: tuple[Settings, list[WorkerProcess]],
) -> None:
    s, workers = three
    with DynoClient(s) as client:
        deliveries = [client.put_item(f"item-{i:04d}", {"n": i}) for i in range(ITEMS)]
        last = {d.result(30).item: d.result(30) for d in deliveries}
        # every item through the client, from the first worker's address: all routed
        for name, d in last.items():
            item = client.get(name, after=d)
            assert item is not None and item["value"] == {"n": int(name[5:])}, (name, item)
    # the CLI, configured with each worker's address in turn, finds items it does not own:
    # one item of every partition, so of every worker (a CLI run is a process start)
    one_per_partition = {d.partition: name for name, d in sorted(last.items())}
    assert len(one_per_partition) == PARTITIONS
    for port in (w.http_port for w in workers):
        env = cli_env(s, DYNO_WORKER__HTTP_PORT=str(port))
        for name in one_per_partition.values():
            r = run_cli(env, "get", name)
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["value"] == {"n": int(name[5:])}
        assert run_cli(env, "get", "never-written").returncode == 3


def test_a_worker_redirects_to_the_owner(three: tuple[Settings, list[WorkerProcess]]) -> None:
    s, _workers = three
    with DynoClient(s) as client:
        d = client.put_item("redirected", {"x": 1}).result(30)
        assert client.get("redirected", after=d) is not None
        owner = client.reads.directory.owners().by_partition[d.partition]
    others = {a for a in client.reads.directory.owners().addresses() if a != owner}
    assert others
    for address in others:
        answer = http_get(f"http://{address}/items/redirected", timeout=10)
        assert answer.status == 307
        assert answer.headers["Location"] == f"http://{owner}/items/redirected"


def test_read_your_writes_under_a_backlog(three: tuple[Settings, list[WorkerProcess]]) -> None:
    """Produce-then-get pairs while a backlog of other ops is in flight: every get sees its
    own op (a counter incremented once per pair, read back at exactly its count)."""
    s, _workers = three
    backlog, pairs = 100_000, 1000
    stale = 0
    with DynoClient(s) as client:
        for i in range(backlog):
            client.inc_attr_by(f"busy-{i % 500}", "n")
        for i in range(pairs):
            name = f"ryw-{i % 20}"
            d = client.inc_attr_by(name, "n").result(30)
            item = client.get(name, after=d, timeout=60)
            if item is None or item["value"]["n"] != i // 20 + 1:
                stale += 1
    assert stale == 0


def test_listing_returns_every_item_once(three: tuple[Settings, list[WorkerProcess]]) -> None:
    s, _workers = three
    names = {f"ls-{i:04d}" for i in range(ITEMS)} | {f"other-{i}" for i in range(50)}
    with DynoClient(s) as client:
        futures = [client.put_item(n, {"k": 1}) for n in sorted(names)]
        for f in futures:
            client.get(f.result(30).item, after=f.result(30))
        listed = [it["item"] for it in client.reads.list("ls-", page=97)]
    assert listed == sorted(n for n in names if n.startswith("ls-"))
    r = run_cli(cli_env(s, DYNO_WORKER__HTTP_PORT=str(s.worker.http_port)), "ls", "--prefix", "ls-")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == listed


def test_gets_during_partition_moves_answer_right_or_retry_never_wrong(
    three: tuple[Settings, list[WorkerProcess]], tmp_path: Path
) -> None:
    """A reader keeps asking for 200 items while a worker leaves (its partitions restored by
    the others from the snapshot topic) and a new one joins: every answer is the item's
    value; a read that cannot be answered in time raises, it never says "no such item"."""
    s, workers = three
    names = [f"moving-{i:03d}" for i in range(200)]
    with DynoClient(s) as client:
        sent = [client.put_item(name, {"n": i}) for i, name in enumerate(names)]
        for name, d in zip(names, sent, strict=True):  # every item applied before the moves
            assert client.get(name, after=d.result(30)) is not None, name
        answers: list[tuple[str, dict[str, Any] | None]] = []
        errors: list[Exception] = []
        moving = threading.Event()
        moving.set()

        def read() -> None:
            while moving.is_set():
                for name in names:
                    try:
                        answers.append((name, client.get(name, timeout=5)))
                    except (ReadTimeoutError, WorkersUnreachableError) as exc:
                        errors.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            before = len(answers)
            leaving = workers[2]
            leaving.proc.send_signal(signal.SIGTERM)
            assert leaving.wait_exit(60) == 0, leaving.tail()
            wait_until(
                lambda: sum(len(w.partitions()) for w in workers[:2]) == PARTITIONS,
                90,
                lambda: assignment(workers),
            )
            joining = WorkerProcess(
                s, "w3", tmp_path, env={"DYNO_WORKER__HTTP_PORT": str(free_port())}
            )
            workers.append(joining)  # cleaned up by the fixture
            wait_until(lambda: bool(joining.partitions()), 90, lambda: assignment(workers))
            wait_until(lambda: len(answers) > before + 2 * len(names), 120, lambda: "reads")
        finally:
            moving.clear()
            reader.join(60)
    wrong = [(n, a) for n, a in answers if a is None or a["value"] != {"n": int(n[7:])}]
    assert not wrong, wrong[:5]
    assert len(answers) > 2 * len(names), (len(answers), errors[:3])
