"""Dead letters back, on the real broker: ``dyno-stream dead-letters`` counts them by reason
and shows one; ``dead-letters replay`` re-produces the originals, a dry run sends nothing, an
op refused for a reason that has passed is applied, the others are refused again with the
same reason, and a second replay applies nothing twice."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from confluent_kafka import Producer
from conftest import RunningWorker, free_port
from helpers import cli_env, flake_at, high_watermark, op_bytes, read_topic, run_cli, wait_until

from dyno_stream.client import DynoClient
from dyno_stream.config import Settings, producer_config
from dyno_stream.core.events import make_op

SKEW_S = 1.0


def test_dead_letters_are_listed_and_replayed_once(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], RunningWorker],
) -> None:
    port = free_port()
    s = make_settings(partitions=1, http_port=port, max_clock_skew_s=SKEW_S)
    start_worker(s)
    with DynoClient(s) as client:
        # "late": an op older than the item's flattened history
        put = client.put_item("late-x", {"v": 1}).result(30)
        item = client.get("late-x", after=put)
        assert item is not None
        client.flatten("late-x", item["hash"]).result(30)
        wait_until(
            lambda: (client.get("late-x") or {}).get("count") == 1, 30, lambda: "not flattened"
        )
        client.send(make_op("putAttrs", "late-x", {"late": 1}, flake_at(time.time() - 60)))
        client.flush()
    # "clock-skew": stamped 4 s ahead of the broker's time, beyond the 1 s allowed
    ahead_s = time.time() + 4
    raw = Producer(producer_config(s))
    raw.produce(s.topics.ops, op_bytes("skew-x", "putItem", flake_at(ahead_s), {"v": 2}), b"skew-x")
    raw.produce(s.topics.ops, b"not json", b"bad-x")  # "not-json"
    assert raw.flush(30) == 0
    wait_until(
        lambda: len(read_topic(s, s.topics.dead_letter)) == 3,
        60,
        lambda: f"dead letters: {[r.headers for r in read_topic(s, s.topics.dead_letter)]}",
    )

    env = cli_env(s, DYNO_WORKER__HTTP_PORT=str(port))
    listed = run_cli(env, "dead-letters")
    assert listed.returncode == 0, listed.stderr
    for reason in ("late", "clock-skew", "not-json"):
        assert re.search(rf"{reason}\s.*\s1\s", listed.stdout), listed.stdout
    one = re.search(r"^(\d+:\d+)\s+late\b", listed.stdout, re.M)
    assert one is not None, listed.stdout
    shown = run_cli(env, "dead-letters", "show", one.group(1))
    assert shown.returncode == 0 and '"key": "late-x"' in shown.stdout, shown.stdout

    ops_end = high_watermark(s, s.topics.ops)[1]
    dry = run_cli(env, "dead-letters", "replay", "--dry-run")
    assert dry.returncode == 0 and "3 of 3 dead letters to replay" in dry.stdout, dry.stdout
    assert high_watermark(s, s.topics.ops)[1] == ops_end  # a dry run sends nothing

    time.sleep(max(0.0, ahead_s + SKEW_S - time.time()))  # the skewed op's time has come
    first = run_cli(env, "dead-letters", "replay")
    assert first.returncode == 0, first.stderr
    assert "replayed 3" in first.stdout and "applied 1" in first.stdout, first.stdout
    assert "refused again: late 1" in first.stdout, first.stdout
    assert "refused again: not-json 1" in first.stdout, first.stdout
    with DynoClient(s) as client:
        skew = client.get("skew-x")
        assert skew is not None and skew["value"] == {"v": 2} and skew["changes"] == 1
        late = client.get("late-x")
        assert late is not None and late["value"] == {"v": 1}

    # again: the 3 letters and the 2 refused again; the applied op is a duplicate now
    second = run_cli(env, "dead-letters", "replay")
    assert second.returncode == 0, second.stderr
    assert "replayed 5" in second.stdout, second.stdout
    assert "refused again: late 2" in second.stdout, second.stdout
    with DynoClient(s) as client:
        again = client.get("skew-x")
        assert again is not None and again["changes"] == 1  # nothing applied twice
