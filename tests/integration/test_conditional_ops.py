"""Conditional writes on the real broker: two writers racing read-modify-write loops on the
same items lose no update, and the producer learns each op's outcome from the owner."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from conftest import RunningWorker, free_port
from helpers import cli_env, run_cli

from dyno_stream.client import DynoClient
from dyno_stream.config import Settings

ITEMS = [f"counter-{i:03d}" for i in range(100)]
ROUNDS = 3


def writer(s: Settings, counted: list[int], refused: list[int]) -> None:
    """Add 1 to every item ROUNDS times by read-modify-write: read the item, put n + 1
    expecting the hash it read, and on a refusal read again and retry."""
    with DynoClient(s) as client:
        seen: dict[str, dict[str, Any]] = {}
        for name in ITEMS:
            item = client.get(name)
            assert item is not None, name
            seen[name] = item
        left = dict.fromkeys(ITEMS, ROUNDS)
        while left:
            sent = {
                name: client.put_item(
                    name, {"n": seen[name]["value"]["n"] + 1}, expect_hash=seen[name]["hash"]
                )
                for name in left
            }
            for name, future in sent.items():
                outcome = client.outcome(future.result(30), timeout=60)
                if outcome.applied:
                    counted[0] += 1
                    left[name] -= 1
                    if not left[name]:
                        del left[name]
                    assert outcome.item is not None
                    seen[name] = outcome.item
                else:
                    assert outcome.refused == "expectation-failed", outcome
                    assert outcome.actual["changes"] >= seen[name]["changes"]
                    refused[0] += 1
                    again = client.get(name)
                    assert again is not None
                    seen[name] = again


def test_two_writers_racing_read_modify_write_count_every_increment_once(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], RunningWorker],
) -> None:
    s = make_settings(partitions=2, http_port=free_port())
    start_worker(s)
    with DynoClient(s) as client:
        created = [client.put_item(name, {"n": 0}, expect_changes=0) for name in ITEMS]
        assert all(client.outcome(f.result(30), timeout=60).applied for f in created)
        # the same create again is refused: the items exist now
        again = client.outcome(client.put_item(ITEMS[0], {"n": 0}, expect_changes=0).result(30))
        assert not again.applied and again.actual["changes"] == 1

    counts = [[0], [0]]
    refusals = [[0], [0]]
    threads = [threading.Thread(target=writer, args=(s, counts[i], refusals[i])) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads)
    assert [c[0] for c in counts] == [len(ITEMS) * ROUNDS] * 2
    with DynoClient(s) as client:
        final = {name: client.get(name) for name in ITEMS}
    lost = sum(2 * ROUNDS - (item or {})["value"]["n"] for item in final.values())
    assert lost == 0, {n: i for n, i in final.items() if i and i["value"]["n"] != 2 * ROUNDS}
    # the race was real: some writes were refused and retried
    assert refusals[0][0] + refusals[1][0] > 0


def test_op_then_get_exits_4_when_the_expectation_fails(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], RunningWorker],
) -> None:
    port = free_port()
    s = make_settings(partitions=1, http_port=port)
    start_worker(s)
    env = cli_env(s, DYNO_WORKER__HTTP_PORT=str(port))
    ok = run_cli(env, "op", "cli-x", "putAttrs", '{"a":1}', "--expect-changes", "0", "--then-get")
    assert ok.returncode == 0, ok.stderr
    stale = run_cli(
        env, "op", "cli-x", "putAttrs", '{"a":2}', "--expect-changes", "0", "--then-get"
    )
    assert stale.returncode == 4, stale.stdout + stale.stderr
    assert "expectation-failed" in stale.stderr and '"changes": 1' in stale.stderr
    with DynoClient(s) as client:
        item = client.get("cli-x")
    assert item is not None and item["value"] == {"a": 1}
