"""Poison: at least 10,000 malformed events among valid ops, one worker, a real broker.

A seeded generator (``DYNO_FUZZ_SEED``; the seed is printed) makes events broken in one way
each: broken JSON, wrong types, unknown ops, bad flakes, invalid UTF-8 (in the event and in the
Kafka key), NaN and infinities, huge numbers and events, deep nesting, empty and long names,
too many attributes, flake conflicts, unknown flatten hashes, flakes far in the future (a
producer whose clock runs fast, beyond ``max_clock_skew_s``). Each carries the reason it should
be refused with, in a header of its own (a dead letter keeps the original headers). They are
produced interleaved with valid ops on 100 known items, through one worker process with small
limits. Then:

- every malformed event is in the dead-letter topic exactly once (matched by its source
  partition and offset), with the expected reason, its own key and bytes;
- nothing else is: every valid op was applied, and the items' last snapshots equal a
  reference model of the valid ops (bench/reference.py: value, changes and hash), every
  snapshot published a true prefix of its item's history;
- the worker stayed alive throughout: the same process, one start in its log, ``/healthz``
  ok, its dead-letter counters equal to the expected counts per reason.

CI runs 10,000 malformed events; ``make faults`` runs 50,000 with a random seed.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import string
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, Producer
from helpers import (
    FAULTS_FULL,
    Reference,
    WorkerProcess,
    check_against_reference,
    faults_size,
    free_port_pair,
    published,
    random_op,
    read_topic,
    record_figures,
    wait_caught_up,
    wait_until,
)

from dyno_stream.client import MaterializedView
from dyno_stream.client.http import http_get
from dyno_stream.config import Settings, producer_config
from dyno_stream.core.deadletter import H_OFFSET, H_PARTITION, H_REASON, H_TOPIC
from dyno_stream.core.events import OpModel
from dyno_stream.core.flake import format_flake, new_flake
from dyno_stream.kafka.topics import ensure_topics

pytestmark = pytest.mark.faults

#: The worker's limits in this test: small, so that breaking them is cheap.
MAX_EVENT_BYTES = 16_384
MAX_NAME_BYTES = 64
MAX_DEPTH = 8
MAX_ATTRS = 50
N_ITEMS = 100
PREFIX = "fz"
H_KIND = "fuzz.kind"
H_EXPECT = "fuzz.expect"

Poison = tuple[bytes | None, bytes | None, str]  # Kafka key, value, expected reason


class Fuzzer:
    """Malformed events, each broken in one way, with the reason the worker must give."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.valid: list[OpModel] = []  # valid ops produced so far (conflicts reuse flakes)
        kinds = [name[len("k_") :] for name in dir(self) if name.startswith("k_")]
        self.kinds: dict[str, Callable[[], Poison]] = {k: getattr(self, f"k_{k}") for k in kinds}

    # -- building blocks -----------------------------------------------------------------------

    def known(self) -> str:
        return f"{PREFIX}-{self.rnd.randrange(N_ITEMS):04d}"

    def event(self, **fields: Any) -> dict[str, Any]:
        """A valid putAttrs event on a known item, with ``fields`` replaced (``...`` drops)."""
        base: dict[str, Any] = {
            "item": self.known(),
            "op": "putAttrs",
            "ts": new_flake(),
            "change": {"a": self.rnd.randrange(1000)},
        }
        base.update(fields)
        return {k: v for k, v in base.items() if v is not ...}

    @staticmethod
    def raw(doc: Any) -> bytes:
        return json.dumps(doc, separators=(",", ":")).encode()

    def keyed(self, doc: dict[str, Any], reason: str) -> Poison:
        item = doc.get("item")
        key = item.encode("utf-8", "surrogatepass") if isinstance(item, str) else b"k"
        return key, self.raw(doc), reason

    def text(self, n: int) -> str:
        return "".join(self.rnd.choices(string.ascii_letters, k=n))

    def nest(self, depth: int) -> Any:
        v: Any = self.rnd.randrange(10)
        for _ in range(depth):
            v = {self.text(2): v} if self.rnd.random() < 0.5 else [v]
        return v

    # -- not JSON --------------------------------------------------------------------------------

    def k_truncated(self) -> Poison:
        key, value, _ = self.keyed(self.event(), "")
        assert value is not None
        return key, value[: self.rnd.randrange(1, len(value) - 1)], "not-json"

    def k_garbage(self) -> Poison:
        first = self.rnd.choice(b"}]:,'<\x00\x01\x80\xfe\xff#xyz")
        rest = bytes(self.rnd.randrange(256) for _ in range(self.rnd.randrange(0, 60)))
        return b"k", bytes([first]) + rest, "not-json"

    def k_trailing_garbage(self) -> Poison:
        key, value, _ = self.keyed(self.event(), "")
        assert value is not None
        return key, value + self.rnd.choice([b"x", b"}", b",", b"{}", b"\x00", b"]"]), "not-json"

    def k_empty_or_bom(self) -> Poison:
        key, value, _ = self.keyed(self.event(), "")
        assert value is not None
        return key, self.rnd.choice([b"", b" ", b"\xef\xbb\xbf" + value]), "not-json"

    def k_single_quotes(self) -> Poison:
        key, value, _ = self.keyed(self.event(), "")
        assert value is not None
        return key, value.replace(b'"', b"'"), "not-json"

    def k_invalid_utf8_in_event(self) -> Poison:
        bad = self.rnd.choice([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\x80"])
        value = self.raw(self.event(change={"s": "@@"})).replace(b"@@", b"a" + bad + b"b")
        return b"k", value, "not-json"

    def k_lone_surrogate(self) -> Poison:
        esc = self.rnd.choice([b"\\ud800", b"\\udfff", b"\\ud83d"])
        value = self.raw(self.event(change={"s": "@@"})).replace(b"@@", b"x" + esc)
        return b"k", value, "not-json"

    def k_bare_nan_words(self) -> Poison:
        word = self.rnd.choice([b"nan", b"inf", b"-inf", b"undefined", b"None", b"True"])
        value = self.raw(self.event(change={"n": 0})).replace(b'"n":0', b'"n":' + word)
        return b"k", value, "not-json"

    # -- wrong types, missing and extra fields -----------------------------------------------------

    def k_item_wrong_type(self) -> Poison:
        bad = self.rnd.choice([5, None, [], {}, True, 1.5])
        return b"k", self.raw(self.event(item=bad)), "invalid"

    def k_ts_wrong_type(self) -> Poison:
        bad = self.rnd.choice([5, None, [new_flake()], {}, True])
        return self.keyed(self.event(ts=bad), "invalid")

    def k_change_wrong_type(self) -> Poison:
        op, change = self.rnd.choice(
            [
                ("putAttrs", [1, 2]),
                ("putAttrs", "text"),
                ("putAttrs", 5),
                ("putItem", None),
                ("delAttrs", {"a": 1}),
                ("delAttrs", [1, 2]),
                ("delAttrs", "a"),
                ("incAttrBy", {"field": "n", "by": "5"}),
                ("incAttrBy", {"field": "n", "by": True}),
                ("incAttrBy", {"field": "n", "by": None}),
                ("incAttrBy", {"field": "n", "by": [1]}),
                ("decAttrBy", {"field": 5, "by": 1}),
                ("decAttrBy", {"by": 1}),
                ("append", {"field": "s", "str": 5}),
                ("append", {"field": "s"}),
                ("addToSet", {"field": "t", "value": [1]}),
                ("addToSet", {"field": "t", "value": {"a": 1}}),
                ("delItem", {"a": 1}),
                ("incAttrBy", {"field": "n", "by": [[[[1]]]]}),
            ]
        )
        return self.keyed(self.event(op=op, change=change), "invalid")

    def k_extra_or_missing_field(self) -> Poison:
        doc = self.event()
        what = self.rnd.randrange(5)
        if what == 0:
            doc[self.rnd.choice(["extra", "value", "Item", "hash"])] = 1
        elif what == 1:
            doc = self.event(op="incAttrBy", change={"field": "n", "by": 1, "extra": 1})
        elif what == 2:
            del doc["ts"]
        elif what == 3:
            del doc["change"]
        else:
            del doc["op"]
        return self.keyed(doc, "invalid")

    def k_not_an_object(self) -> Poison:
        return (
            b"k",
            self.rnd.choice([b"[]", b'"putAttrs"', b"5", b"null", b"true", b"[{}]"]),
            "invalid",
        )

    def k_tombstone(self) -> Poison:
        return self.known().encode(), None, "invalid"

    # -- unknown ops, bad flakes, bad hashes -------------------------------------------------------

    def k_unknown_op(self) -> Poison:
        op = self.rnd.choice(
            ["PutAttrs", "putattrs", "put", "", "delete", "incAttr", "merge", 5, None, ["putItem"]]
        )
        if op == "" or self.rnd.random() < 0.3:
            op = self.text(self.rnd.randrange(1, 12)) if op != "" else ""
        return self.keyed(self.event(op=op), "invalid")

    def k_bad_flake(self) -> Poison:
        good = new_flake()
        bad = self.rnd.choice(
            [
                good.upper(),
                good[:-1],
                good + "0",
                good.replace("-", ""),
                "g" + good[1:],
                "2024-06-07T10:00:00Z",
                "",
                good + "-0000",
                good.replace("-", "_"),
            ]
        )
        return self.keyed(self.event(ts=bad), "invalid")

    def k_bad_flatten_hash(self) -> Poison:
        bad = self.rnd.choice(["zz", "0" * 31, "A" * 32, "0" * 33, "", 5])
        return self.keyed({"item": self.known(), "op": "flatten", "hash": bad}, "invalid")

    # -- numbers -----------------------------------------------------------------------------------

    def k_nan_or_infinity(self) -> Poison:
        word = self.rnd.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400"])
        where = self.rnd.randrange(3)
        if where == 0:
            value = self.raw(self.event(change={"n": 0})).replace(b'"n":0', b'"n":' + word)
        elif where == 1:
            doc = self.event(change={"deep": {"n": 0}})
            value = self.raw(doc).replace(b'"n":0', b'"n":' + word)
        else:
            doc = self.event(op="incAttrBy", change={"field": "n", "by": 0})
            value = self.raw(doc).replace(b'"by":0', b'"by":' + word)
        key = json.loads(value.replace(word, b"0"))["item"].encode()
        return key, value, "invalid"

    def k_huge_counter(self) -> Poison:
        """Valid JSON; refused when applied (a counter past 64 bits)."""
        by = self.rnd.choice([1, -1]) * self.rnd.randrange(2**64, 2**100)
        op = self.rnd.choice(["incAttrBy", "decAttrBy"])
        return self.keyed(self.event(op=op, change={"field": "n", "by": by}), "invalid")

    # -- names and keys ----------------------------------------------------------------------------

    def k_empty_name(self) -> Poison:
        return b"", self.raw(self.event(item="")), "invalid"

    def k_name_too_long(self) -> Poison:
        n = self.rnd.choice(
            [
                self.rnd.randrange(MAX_NAME_BYTES + 1, 300),  # past this worker's limit
                self.rnd.randrange(1025, 1500),  # past the store's own
            ]
        )
        name = self.text(n) if self.rnd.random() < 0.5 else "日本" * (n // 6 + 1)
        return self.keyed(self.event(item=name), "name-too-long")

    def k_invalid_utf8_key(self) -> Poison:
        key = self.rnd.choice([b"\xff", b"\xc3\x28", b"fz-\x80", b"\xed\xa0\x80"])
        return key + bytes([self.rnd.randrange(256)]), self.raw(self.event()), "key-mismatch"

    def k_wrong_or_missing_key(self) -> Poison:
        doc = self.event()
        key = self.rnd.choice(
            [None, b"", doc["item"].upper().encode(), self.known().encode() + b"x"]
        )
        return key, self.raw(doc), "key-mismatch"

    # -- limits ------------------------------------------------------------------------------------

    def k_oversized(self) -> Poison:
        pad = self.text(self.rnd.randrange(MAX_EVENT_BYTES, MAX_EVENT_BYTES * 2))
        return self.keyed(self.event(change={"pad": pad}), "oversized")

    def k_too_deep(self) -> Poison:
        depth = self.rnd.randrange(MAX_DEPTH, 100)  # the change is one more level
        op = self.rnd.choice(["putAttrs", "putItem"])
        return self.keyed(self.event(op=op, change={"a": self.nest(depth)}), "too-deep")

    def k_too_deep_for_the_parser(self) -> Poison:
        depth = self.rnd.randrange(200, 5000)
        value = self.raw(self.event(change={"a": "@@"})).replace(
            b'"@@"', b"[" * depth + b"1" + b"]" * depth
        )
        return b"k", value, "too-deep"

    def k_too_many_attrs(self) -> Poison:
        """Valid JSON; refused when applied."""
        n = self.rnd.randrange(MAX_ATTRS + 1, MAX_ATTRS + 40)
        op = self.rnd.choice(["putAttrs", "putItem"])
        change = {f"x{i}": i for i in range(n)}
        return self.keyed(self.event(op=op, change=change), "too-many-attrs")

    # -- refused by the store ----------------------------------------------------------------------

    def k_flake_conflict(self) -> Poison:
        if not self.valid:
            return self.k_unknown_flatten_hash()
        m = self.rnd.choice(self.valid[-500:])
        doc = self.event(item=m.item, ts=m.ts, change={"conflict": self.rnd.randrange(1000)})
        return self.keyed(doc, "conflict")

    # -- clock skew --------------------------------------------------------------------------

    def future_flake(self) -> str:
        """A flake from an hour to a year ahead, or at the 48-bit end of time: far beyond the
        default 60 s however long the run takes to reach the broker."""
        if self.rnd.random() < 0.1:
            ms = (1 << 48) - 1
        else:
            ms = int(time.time() * 1000) + self.rnd.randrange(3600_000, 366 * 86400_000)
        return format_flake(ms, self.rnd.randrange(0x10000), 0xF00, self.rnd.randrange(1 << 48))

    def k_far_future_op(self) -> Poison:
        op = self.rnd.choice(["putAttrs", "putItem", "delItem"])
        change: Any = {} if op == "delItem" else {"future": self.rnd.randrange(1000)}
        return self.keyed(self.event(op=op, ts=self.future_flake(), change=change), "clock-skew")

    def k_far_future_flatten(self) -> Poison:
        h = "".join(self.rnd.choice("0123456789abcdef") for _ in range(32))
        doc = {"item": self.known(), "op": "flatten", "hash": h, "before": self.future_flake()}
        return self.keyed(doc, "clock-skew")

    def k_unknown_flatten_hash(self) -> Poison:
        h = "".join(self.rnd.choice("0123456789abcdef") for _ in range(32))
        return self.keyed({"item": self.known(), "op": "flatten", "hash": h}, "unknown-hash")


def _counter(metrics: str, reason: str) -> float:
    m = re.search(
        rf'^dyno_events_dead_lettered_total{{reason="{re.escape(reason)}"}} (\S+)$', metrics, re.M
    )
    return float(m.group(1)) if m else 0.0


def test_poison_fuzz_every_malformed_event_dead_lettered_every_valid_op_applied(
    make_settings: Callable[..., Settings], tmp_path: Any
) -> None:
    n_poison = faults_size(10_000, 50_000)
    seed = int(os.environ.get("DYNO_FUZZ_SEED") or (random.randrange(2**32) if FAULTS_FULL else 7))
    print(f"\npoison fuzz: seed {seed} (DYNO_FUZZ_SEED={seed} repeats this run)")
    rnd = random.Random(seed)
    started = time.monotonic()
    s = make_settings(partitions=2)
    ensure_topics(s)
    http_port = free_port_pair()
    w = WorkerProcess(
        s,
        "fuzz",
        tmp_path,
        env={
            "DYNO_WORKER__HTTP_PORT": str(http_port),
            "DYNO_WORKER__MAX_EVENT_BYTES": str(MAX_EVENT_BYTES),
            "DYNO_WORKER__MAX_NAME_BYTES": str(MAX_NAME_BYTES),
            "DYNO_WORKER__MAX_DEPTH": str(MAX_DEPTH),
            "DYNO_WORKER__MAX_ATTRS": str(MAX_ATTRS),
        },
    )
    try:
        fuzz = Fuzzer(rnd)
        ref = Reference()
        # where each poison landed -> (kind, reason, key, value)
        expected: dict[tuple[int, int], tuple[str, str, bytes | None, bytes | None]] = {}
        failures: list[str] = []
        producer = Producer({**producer_config(s), "linger.ms": 20})

        def delivered(kind: str, reason: str, key: bytes | None, value: bytes | None) -> Any:
            def done(err: KafkaError | None, msg: Message) -> None:
                if err is not None:
                    failures.append(f"{kind}: {err}")
                else:
                    expected[(msg.partition() or 0, msg.offset() or 0)] = (kind, reason, key, value)

            return done

        def send(key: bytes | None, value: bytes | None, **kw: Any) -> None:
            while True:
                try:
                    producer.produce(s.topics.ops, value, key, **kw)
                    return
                except BufferError:
                    producer.poll(0.1)

        kinds = sorted(fuzz.kinds)
        per_kind: Counter[str] = Counter()
        n_valid = i = 0
        while sum(per_kind.values()) < n_poison:
            i += 1
            if rnd.random() < 0.3:  # a valid op on a known item
                m = random_op(rnd, i, N_ITEMS, PREFIX)
                fuzz.valid.append(m)
                ref.add(m)
                n_valid += 1
                send(m.item.encode(), m.model_dump_json().encode())
                continue
            kind = rnd.choice(kinds)
            key, value, reason = fuzz.kinds[kind]()
            per_kind[kind] += 1
            headers = [(H_KIND, kind.encode()), (H_EXPECT, reason.encode())]
            send(key, value, headers=headers, on_delivery=delivered(kind, reason, key, value))
            producer.poll(0)
        assert producer.flush(120) == 0
        assert not failures, failures[:5]
        assert len(expected) == n_poison
        produced_at = time.monotonic() - started

        # the worker gets through it all: every valid op applied, every poison dead-lettered
        with MaterializedView(s) as view:
            wait_caught_up(view, ref, 300, w.tail())
        dead: list[Any] = []

        def all_dead() -> bool:
            dead[:] = read_topic(s, s.topics.dead_letter)
            return len(dead) >= n_poison or not w.alive()

        wait_until(all_dead, 300, lambda: f"{len(dead)} of {n_poison} dead letters{w.tail()}")
        done_at = time.monotonic() - started

        got: dict[tuple[int, int], Any] = {}
        for rec in dead:
            assert rec.headers[H_TOPIC].decode() == s.topics.ops
            where = (int(rec.headers[H_PARTITION]), int(rec.headers[H_OFFSET]))
            assert where not in got, f"two dead letters for {where}"
            got[where] = rec
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        wrong = []
        for where, (kind, reason, key, value) in expected.items():
            rec = got.get(where)
            if rec is None:
                continue
            if rec.headers.get(H_REASON, b"").decode() != reason:
                wrong.append(
                    (
                        kind,
                        reason,
                        rec.headers.get(H_REASON),
                        rec.headers.get("dyno.error.message", b"")[:200],
                        (value or b"")[:120],
                    )
                )
            elif (rec.key, rec.value) != (key, value):
                wrong.append((kind, "key or bytes not kept", rec.key, key))
            elif rec.headers.get(H_KIND) != kind.encode():
                wrong.append((kind, "original headers not kept", rec.headers))
        by_reason = Counter(reason for _, reason, _, _ in expected.values())

        # the worker: alive, never restarted, healthy, its counters agree
        alive = w.alive()
        code, body, _ = http_get(f"http://127.0.0.1:{http_port}/healthz", timeout=10)
        health = (code, json.loads(body))
        want = {r: float(n) for r, n in by_reason.items()}
        counted: dict[str, float] = {}

        def all_counted() -> bool:
            # a batch's dead letters are produced before its counters go up
            code, raw, _ = http_get(f"http://127.0.0.1:{http_port}/metrics", timeout=10)
            assert code == 200, raw
            counted.update({reason: _counter(raw.decode(), reason) for reason in by_reason})
            return counted == want or not w.alive()

        wait_until(all_counted, 60, lambda: f"dead letters counted {counted}, want {want}")
        pid = w.proc.pid
        w.proc.send_signal(signal.SIGTERM)
        code = w.wait_exit(60)

        history = published(read_topic(s, s.topics.snapshots), fuzz.valid)
        record_figures(
            "poison_fuzz",
            poison_inputs=n_poison,
            valid_ops=n_valid,
            kinds=len(kinds),
            by_reason=dict(sorted(by_reason.items())),
            dead_letters=len(dead),
            missing=len(missing),
            unexpected=len(extra),
            wrong_reason=len(wrong),
            worker_restarts=w.text().count("worker starting") - 1,
            ops_lost=history.ops_lost,
            ops_applied_twice=history.ops_applied_twice,
            seed=seed,
            produced_s=round(produced_at, 1),
            done_s=round(done_at, 1),
        )
        assert not missing, (
            f"{len(missing)} poison events not dead-lettered: "
            f"{[expected[m][:2] for m in missing[:5]]}"
        )
        assert not extra, (
            f"{len(extra)} dead letters for valid ops: {[got[e].headers for e in extra[:3]]}"
        )
        assert not wrong, f"{len(wrong)} dead letters differ from what was expected: {wrong[:5]}"
        assert alive and code == 0, f"worker pid {pid}: alive {alive}, exit {code}{w.tail()}"
        assert w.text().count("worker starting") == 1, "the worker started more than once"
        assert health == (200, {**health[1], "status": "ok"}), health
        assert counted == want, (counted, by_reason)
        assert set(by_reason) >= {
            "not-json",
            "invalid",
            "key-mismatch",
            "oversized",
            "name-too-long",
            "too-deep",
            "too-many-attrs",
            "conflict",
            "unknown-hash",
            "clock-skew",
        }
        history.check()
        check_against_reference(history.last, ref, "the last snapshots")
    finally:
        w.cleanup()
