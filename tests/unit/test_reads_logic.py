"""Reads across workers, the pure logic: advertised addresses, an item's partition,
``after=``, pages, and a worker's answer to a read (with a real LevelDB store, no broker)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dyno_stream.config import Settings, advertised_http, consumer_config, load_settings
from dyno_stream.core.events import make_op
from dyno_stream.core.flake import new_flake
from dyno_stream.kafka.members import Owners, member_address
from dyno_stream.store.partition import PartitionStore
from dyno_stream.stream.reads import (
    NOT_HERE,
    After,
    StoreReads,
    merge_page_answers,
    merge_pages,
    page_bounds,
)


def _settings(**worker: object) -> Settings:
    s = load_settings()
    return s.model_copy(update={"worker": s.worker.model_copy(update=worker)})


def test_advertised_address_defaults_to_the_bound_one_with_the_hostname_for_a_wildcard() -> None:
    assert advertised_http(_settings(http_host="127.0.0.1", http_port=9464).worker) == (
        "127.0.0.1:9464"
    )
    assert advertised_http(_settings(http_host="0.0.0.0", http_port=0).worker, 4711) == (
        f"{socket.gethostname()}:4711"
    )
    assert advertised_http(_settings(http_port=0).worker) is None
    assert advertised_http(_settings(advertised_http="w1.example:80").worker) == "w1.example:80"


def test_the_address_rides_in_the_client_id_and_is_read_back() -> None:
    s = _settings()
    conf = consumer_config(s, "w1.example:9464", protocol="consumer")
    assert conf["client.id"] == f"{s.kafka.client_id}@w1.example:9464"
    assert member_address(conf["client.id"]) == "w1.example:9464"
    assert member_address("dyno-stream-1@10.0.0.7:80") == "10.0.0.7:80"
    assert member_address("dyno-stream") is None  # serves no HTTP
    assert member_address("someone@not an address") is None
    assert consumer_config(s, protocol="consumer")["client.id"] == s.kafka.client_id


def test_after_is_partition_colon_offset() -> None:
    assert After.parse("3:1042") == After(3, 1042)
    for bad in ("3", "x:1", "3:-1", ":1", "3:1:2"):
        with pytest.raises(ValueError, match="partition>:<offset"):
            After.parse(bad)


def test_page_bounds_and_merge() -> None:
    assert page_bounds("ab", None) == ("ab", "ab\U0010ffff")
    assert page_bounds("ab", "abc") == ("abc\x00", "ab\U0010ffff")
    assert page_bounds("b", "a") == ("b", "b\U0010ffff")  # an after before the prefix
    pages = [["a", "c", "e"], ["b", "c", "f"], []]
    assert merge_pages(pages) == ["a", "b", "c", "e", "f"]
    assert merge_pages(pages, 2) == ["a", "b"]


class _Directory:
    def __init__(self, owners: Owners) -> None:
        self._owners, self.stale_calls = owners, 0

    def owners(self) -> Owners:
        return self._owners

    def stale(self) -> None:
        self.stale_calls += 1


# Item names whose partition of 4 Kafka publishes (their murmur2 hashes are in Kafka's and
# librdkafka's own tests: tests/unit/test_kafka_placement.py), so the routing below is held to
# Kafka's placement, not to our function's.
MINE = "foobar"  # partition 2 of 4
THEIRS = "abc"  # partition 3
UNOWNED = "21"  # partition 0


def _reads(
    tmp_path: Path, partitions: int = 4
) -> tuple[StoreReads, PartitionStore, dict[str, str]]:
    """A worker holding partition 2 (where ``MINE`` hashes), partition 3 held by another."""
    p = 2
    ps = PartitionStore.open(tmp_path, "ops", p, sync=False)
    other = (p + 1) % partitions
    states = {f"ops/{p}": "RUNNING"}
    directory = _Directory(Owners(partitions, "murmur2", {p: "me:1", other: "them:2"}))
    reads = StoreReads(
        lambda: {("ops", p): ps},
        lambda: states,
        topic="ops",
        directory=lambda: directory,  # type: ignore[arg-type,return-value]
        self_address=lambda: "me:1",
        read_timeout_s=0.5,
    )
    return reads, ps, states


def _apply(ps: PartitionStore, name: str, n: int, next_offset: int) -> None:
    with ps.transaction() as tx:
        tx.apply([make_op("putItem", name, {"n": n}, new_flake())])
        tx.track(next_offset, snapshots={}, dead=[])


def test_a_worker_answers_what_it_owns_and_redirects_or_defers_the_rest(tmp_path: Path) -> None:
    reads, ps, states = _reads(tmp_path)
    _apply(ps, MINE, 1, 1)
    code, body, _ = reads.answer_item(MINE, {})
    assert code == 200 and body["value"] == {"n": 1}
    code, _body, headers = reads.answer_item(THEIRS, {"after": ["3:5"]})
    assert code == 307
    assert headers["Location"] == f"http://them:2/items/{THEIRS}?after=3%3A5"
    code, _body, headers = reads.answer_item(UNOWNED, {})
    assert code == 503 and headers["Retry-After"] == "1"  # moving: no owner now
    states[f"ops/{ps.partition}"] = "RESTORING"
    code, _body, headers = reads.answer_item(MINE, {})
    assert code == 503 and headers["Retry-After"] == "1"
    ps.close()


def test_after_waits_until_the_offset_is_applied_then_answers(tmp_path: Path) -> None:
    reads, ps, _ = _reads(tmp_path)
    p = ps.partition
    _apply(ps, MINE, 1, 5)  # offsets 0..4 applied
    threading.Timer(0.1, _apply, (ps, MINE, 2, 8)).start()
    started = time.monotonic()
    code, body, _ = reads.answer_item(MINE, {"after": [f"{p}:6"]})
    assert code == 200 and body["value"] == {"n": 2}, body
    assert time.monotonic() - started >= 0.05  # it waited for the write
    code, body, _ = reads.answer_item(MINE, {"after": [f"{p}:20"]})
    assert code == 504
    assert body["applied_through"] == 7 and body["behind"] == 13
    assert reads.answer_item(MINE, {"after": ["nonsense"]})[0] == 400
    assert reads.answer_item(MINE, {"after": [f"{(p + 1) % 4}:1"]})[0] == 400
    ps.close()


def test_a_page_is_in_name_order_and_says_where_to_go_on(tmp_path: Path) -> None:
    reads, ps, _ = _reads(tmp_path)
    for i, name in enumerate(["b", "a2", "a1", "a3", "c"]):
        _apply(ps, name, i, i + 1)
    code, body, _ = reads.answer_page({"prefix": ["a"], "limit": ["2"]})
    assert code == 200
    assert [it["item"] for it in body["items"]] == ["a1", "a2"] and body["next"] == "a2"
    code, body, _ = reads.answer_page({"prefix": ["a"], "limit": ["2"], "after": ["a2"]})
    assert [it["item"] for it in body["items"]] == ["a3"] and body["next"] is None
    assert body["partitions"] == [ps.partition]
    assert reads.answer_page({"limit": ["100000"]})[0] == 400
    ps.close()


def test_a_token_guards_items_but_not_health_or_metrics() -> None:
    from dyno_stream.client.http import bearer, http_get
    from dyno_stream.stream.http import Health, HttpEndpoint, RoutedReads
    from dyno_stream.stream.metrics import WorkerMetrics

    routed = RoutedReads(lambda name, q: (200, {"item": name}, {}), lambda q: (200, {}, {}), "s3")
    health = Health(state="running")
    endpoint = HttpEndpoint(
        "127.0.0.1", 0, WorkerMetrics(), health, lambda n: None, lambda n: [], routed
    )
    endpoint.start()
    try:
        base = endpoint.address
        assert http_get(f"{base}/items/x", timeout=5).status == 401
        assert http_get(f"{base}/items/x", timeout=5, headers=bearer("s3")).status == 200
        for open_path in ("/healthz", "/metrics"):
            assert http_get(f"{base}{open_path}", timeout=5).status == 200
    finally:
        endpoint.stop()


def test_a_member_process_says_when_a_sibling_may_hold_the_partition(tmp_path: Path) -> None:
    """Under ``worker --processes`` every child advertises the parent's address: a partition
    the group gives that address but this child holds no store of is a sibling's. The answer
    says so (``NOT_HERE``) and leaves the directory as it is; what this child holds, and a
    partition owned by another worker, are answered as a worker answers them."""
    reads, ps, _states = _reads(tmp_path)
    reads.siblings = True
    directory = reads._directory()
    assert directory is not None
    _apply(ps, MINE, 1, 1)
    code, _body, headers = reads.answer_item(MINE, {})
    assert code == 200 and _body["value"] == {"n": 1} and NOT_HERE not in headers
    assert reads.answer_item(THEIRS, {})[0] == 307
    sibling = Owners(4, "murmur2", {q: "me:1" for q in range(4)})
    directory._owners = sibling  # type: ignore[attr-defined]
    siblings, q = UNOWNED, 0  # a partition a sibling may hold
    code, _body, headers = reads.answer_item(siblings, {})
    assert code == 503 and headers[NOT_HERE] == "1" and headers["Retry-After"] == "1"
    assert directory.stale_calls == 0  # type: ignore[attr-defined]
    code, _body, headers = reads.answer_item(siblings, {"after": [f"{q}:3"]})
    assert code == 503 and headers[NOT_HERE] == "1"
    # a single worker's answer to the same read: no header, and the directory read again
    reads.siblings = False
    code, _body, headers = reads.answer_item(siblings, {})
    assert code == 503 and NOT_HERE not in headers
    assert directory.stale_calls == 1  # type: ignore[attr-defined]
    ps.close()


def test_pages_of_several_processes_merge_into_one() -> None:
    def page(names: list[str], nxt: str | None, parts: list[int], inc: list[str]) -> dict[str, Any]:
        items = [{"item": n} for n in names]
        return {"items": items, "next": nxt, "partitions": parts, "incomplete": inc}

    a = page(["a", "c", "e"], "e", [0, 2], [])
    b = page(["b", "c"], None, [1, 2], ["ops/3"])  # partition 2 moved between the two pages
    merged = merge_page_answers([a, b], 3)
    assert [it["item"] for it in merged["items"]] == ["a", "b", "c"] and merged["next"] == "c"
    assert merged["partitions"] == [0, 1, 2] and merged["incomplete"] == ["ops/3"]
    # fewer than the limit once the duplicate is gone, but a process has more: go on
    merged = merge_page_answers([a, b], 5)
    assert [it["item"] for it in merged["items"]] == ["a", "b", "c", "e"]
    assert merged["next"] == "e"
    done = merge_page_answers([page(["a"], None, [0], []), page([], None, [1], [])], 5)
    assert done["items"] == [{"item": "a"}] and done["next"] is None
    assert merge_page_answers([page([], None, [0], [])], 5)["next"] is None
