"""``dyno-stream doctor``: a deployment checked from outside, one finding per check.

Each finding is pass, warn or fail, with what was seen and the fix. It only reads: broker
metadata and configs, the group's offsets and description, the tails of the topics, each
member's ``/healthz``, this machine's clock and disk. A broker that does not answer is one
failed finding, and the checks that need it are not run (they would say nothing true).

What it cannot see is said where it matters: the local clock is compared with the broker's
append time of the newest op, which shows a clock that is *behind*; a clock that is ahead is
caught by the client (``kafka.clock.BrokerClockWatch``) and the worker (``clock-skew``
dead letters, reported here).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import ConfigResource, OffsetSpec, ResourceType

from dyno_stream.config import Settings
from dyno_stream.core.errors import ConfigError, DynoError
from dyno_stream.jobs.doctor_dead_letters import dead_letters
from dyno_stream.jobs.doctor_exam import Examination, Finding, Status, duration, mebibytes
from dyno_stream.jobs.doctor_members import members, placement
from dyno_stream.kafka.clock import CLIENT_WARN_SKEW_S
from dyno_stream.kafka.group_protocol import (
    CONSUMER_GROUP_HEARTBEAT,
    broker_api_versions,
    choose_group_protocol,
)
from dyno_stream.kafka.reading import committed_offsets, topic_reader

#: Free space in data_dir below these is a warning, below half of them a failure.
FREE_WARN_FRACTION, FREE_WARN_BYTES = 0.10, 1 << 30


class Doctor(Examination):
    """The checks, in the order they are printed; ``run`` gives every finding."""

    def run(self) -> list[Finding]:
        if self.broker():
            self.topics()
            if all(t in self._topics for t in self._names()):
                self.partitions()
                self.topic_configs()
                self.replication()
                self.offsets_and_retention()
                self.clock()
            members(self)
            placement(self)
            if self.s.topics.dead_letter in self._topics:
                dead_letters(self)
        self.disk()
        return self.findings

    def _names(self) -> list[str]:
        t = self.s.topics
        return [t.ops, t.snapshots, t.dead_letter]

    # -- the broker ---------------------------------------------------------------------------

    def broker(self) -> bool:
        try:
            brokers = broker_api_versions(self.s, self.timeout)
            meta = self.admin.list_topics(timeout=self.timeout)
        except (DynoError, KafkaException) as exc:
            self.add(
                "broker",
                "fail",
                f"{self.s.kafka.bootstrap_servers}: {exc}",
                "check [kafka] bootstrap_servers (DYNO_KAFKA__BOOTSTRAP_SERVERS), the security "
                "settings and the network; the other checks need the broker",
            )
            return False
        self._topics = dict(meta.topics)
        heartbeat = {
            name: apis.get(CONSUMER_GROUP_HEARTBEAT) for name, apis in sorted(brokers.items())
        }
        offers = "; ".join(
            f"{name}: ConsumerGroupHeartbeat v{hb[0]}-v{hb[1]}" if hb else f"{name}: no KIP-848"
            for name, hb in heartbeat.items()
        )
        self.add("broker", "pass", f"{offers}; brokers in the cluster: {len(meta.brokers)}")
        try:
            choice = choose_group_protocol(str(self.s.worker.group_protocol), brokers)
        except ConfigError as exc:  # an explicit "consumer" the brokers do not offer
            self.add(
                "group protocol",
                "fail",
                f"{exc}: workers would join no group and apply nothing",
                'set worker.group_protocol = "auto" or "classic" '
                "(DYNO_WORKER__GROUP_PROTOCOL), or run Kafka 4.0+",
            )
        else:
            self.add("group protocol", "pass", f"{choice.protocol}: {choice.reason}")
        return True

    # -- the topics ---------------------------------------------------------------------------

    def topics(self) -> None:
        missing = [t for t in self._names() if t not in self._topics]
        if missing:
            self.add(
                "topics",
                "fail",
                f"missing: {', '.join(missing)}",
                "run `dyno-stream topics` with the workers' settings (it creates them)",
            )
        else:
            self.add("topics", "pass", ", ".join(self._names()))
        try:
            resources = [ConfigResource(ResourceType.TOPIC, t) for t in self._names()]
            present = [r for r in resources if r.name in self._topics]
            described = (
                self.admin.describe_configs(present, request_timeout=self.timeout)
                if present
                else {}
            )
            for res, fut in described.items():
                self._configs[res.name] = {k: v.value for k, v in fut.result().items()}
        except KafkaException as exc:
            self.add("topic configs", "fail", f"cannot describe the topics' configs: {exc}")

    def partitions(self) -> None:
        t = self.s.topics
        ops = len(self._topics[t.ops].partitions)
        snaps = len(self._topics[t.snapshots].partitions)
        if ops == snaps:
            self.add("partitions", "pass", f"ops and snapshots: {ops} each (co-partitioned)")
        else:
            self.add(
                "partitions",
                "fail",
                f"{t.ops} has {ops} partitions, {t.snapshots} {snaps}: not co-partitioned "
                "(every restore reads the whole snapshot topic; workers report it on /healthz)",
                "if the ops topic was resized in place: `dyno-stream repartition`; else stop "
                "the workers, `dyno-stream migrate-snapshots --to NEW_TOPIC`, set "
                "[topics] snapshots = NEW_TOPIC everywhere",
            )

    def topic_configs(self) -> None:
        t = self.s.topics
        policy = self._configs.get(t.snapshots, {}).get("cleanup.policy", "?")
        if "compact" in policy.split(","):
            self.add("snapshot compaction", "pass", f"{t.snapshots}: cleanup.policy={policy}")
        else:
            self.add(
                "snapshot compaction",
                "fail",
                f"{t.snapshots}: cleanup.policy={policy}: retention deletes items' only "
                "snapshots, and a restore from them then misses those items",
                f"kafka-configs --alter --entity-type topics --entity-name {t.snapshots} "
                "--add-config cleanup.policy=compact",
            )
        kind = self._configs.get(t.ops, {}).get("message.timestamp.type", "?")
        if kind == "LogAppendTime":
            self.add("ops timestamps", "pass", f"{t.ops}: message.timestamp.type={kind}")
        else:
            self.add(
                "ops timestamps",
                "warn",
                f"{t.ops}: message.timestamp.type={kind}: the clock-skew bound is measured "
                "against each producer's own clock, so a producer whose clock is wrong passes",
                f"kafka-configs --alter --entity-type topics --entity-name {t.ops} "
                "--add-config message.timestamp.type=LogAppendTime",
            )

    def replication(self) -> None:
        lines, status = [], "pass"
        for name in self._names():
            parts = self._topics[name].partitions
            rf = min(len(p.replicas) for p in parts.values()) if parts else 0
            isr = int(self._configs.get(name, {}).get("min.insync.replicas", "1"))
            lines.append(f"{name}: replicas {rf}, min.insync.replicas {isr}")
            if isr > rf:
                status = "fail"
            elif (rf == 1 or isr == 1) and status == "pass":
                status = "warn"
        fix = {
            "pass": "",
            "warn": "a single broker's loss loses acknowledged ops or stops the workers: use "
            "replication factor 3 ([topics] replication_factor) and min.insync.replicas=2",
            "fail": "min.insync.replicas above the replica count refuses every write (acks=all):"
            " lower it or add replicas (kafka-reassign-partitions)",
        }[status]
        self.add("replication", status, "; ".join(lines), fix)  # type: ignore[arg-type]

    def offsets_and_retention(self) -> None:
        """The group's committed offsets against the ops topic's ends and its retention."""
        t, group = self.s.topics, self.s.worker.group_id
        parts = [TopicPartition(t.ops, p) for p in sorted(self._topics[t.ops].partitions)]
        try:
            low = self._list_offsets(parts, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
            high = self._list_offsets(parts, OffsetSpec.latest())  # type: ignore[no-untyped-call]
            committed = committed_offsets(self.s, group, parts, self.timeout)
        except KafkaException as exc:
            self.add("lag and retention", "fail", f"cannot read the group's offsets: {exc}")
            return
        retention = int(self._configs.get(t.ops, {}).get("retention.ms", "-1"))
        kept = "for ever" if retention < 0 else f"for {duration(retention)}"
        lost, lag, waiting = [], 0, {}
        for p in range(len(parts)):
            lo, hi, c = low.get(p, 0), high.get(p, 0), committed.get(p, -1)
            start = lo if c < 0 else c
            if c >= 0 and c < lo:
                lost.append(f"{p} (committed {c}, earliest kept {lo})")
            lag += max(0, hi - max(start, lo))
            if hi > max(start, lo):
                waiting[p] = max(start, lo)
        oldest = self._oldest_waiting(waiting)
        age = "" if oldest is None else f"; oldest unapplied op {duration(oldest)} old"
        detail = (
            f"group {group}: lag {lag:,} ops over {len(parts)} partitions{age}; ops kept {kept}"
        )
        if lost:
            self.add(
                "lag and retention",
                "fail",
                f"{detail}; retention deleted ops the group had not committed, partitions "
                + ", ".join(lost),
                "raise retention.ms on the ops topic above the longest a worker may be down; "
                "the stores still hold what they applied (their offsets are the truth)",
            )
        elif retention >= 0 and oldest is not None and oldest > retention / 2:
            self.add(
                "lag and retention",
                "warn",
                f"{detail}: the oldest waiting op is past half the retention",
                "add workers or raise retention.ms on the ops topic before ops expire unapplied",
            )
        else:
            self.add("lag and retention", "pass", detail)

    def _list_offsets(self, parts: list[TopicPartition], spec: OffsetSpec) -> dict[int, int]:
        futures = self.admin.list_offsets({tp: spec for tp in parts}, request_timeout=self.timeout)
        return {tp.partition: f.result().offset for tp, f in futures.items()}

    def _oldest_waiting(self, waiting: dict[int, int]) -> float | None:
        """The age (ms, by this machine's clock) of the oldest op not yet committed."""
        if not waiting:
            return None
        first = self._first_messages(self.s.topics.ops, waiting)
        if not first:
            return None
        return max(0.0, self.now() * 1000 - min(first.values()))

    def _first_messages(self, topic: str, offsets: dict[int, int]) -> dict[int, int]:
        """Per partition, the timestamp (ms) of the message at the offset given."""
        consumer = topic_reader(self.s, "doctor")
        out: dict[int, int] = {}
        try:
            consumer.assign([TopicPartition(topic, p, o) for p, o in offsets.items()])
            deadline = time.monotonic() + self.timeout
            while len(out) < len(offsets) and time.monotonic() < deadline:
                for msg in consumer.consume(len(offsets), 0.5):
                    if msg.error() is None and msg.partition() not in out:
                        out[msg.partition() or 0] = msg.timestamp()[1]
        finally:
            consumer.close()
        return out

    # -- this machine -------------------------------------------------------------------------

    def clock(self) -> None:
        """The newest op's LogAppendTime is the broker's clock at that append: a local clock
        behind it by more than the client's warning bound is behind the broker's."""
        t = self.s.topics
        consumer = topic_reader(self.s, "doctor")
        last: dict[int, int] = {}
        try:
            for p in self._topics[t.ops].partitions:
                _, hi = consumer.get_watermark_offsets(
                    TopicPartition(t.ops, p), timeout=self.timeout
                )
                if hi > 0:
                    last[p] = hi - 1
        finally:
            consumer.close()
        if self._configs.get(t.ops, {}).get("message.timestamp.type") != "LogAppendTime":
            self.add(
                "clock",
                "warn",
                f"not compared: {t.ops} uses CreateTime, so its messages carry the producers' "
                "clocks, not the broker's",
                "see ops timestamps above",
            )
            return
        newest = self._newest_append(last)
        if newest is None:
            self.add("clock", "pass", f"not compared: {t.ops} holds no op yet")
            return
        behind_s = (newest - self.now() * 1000) / 1000
        if behind_s > CLIENT_WARN_SKEW_S:
            self.add(
                "clock",
                "fail",
                f"this machine's clock is at least {behind_s:,.1f} s behind the broker's (the "
                f"newest op on {t.ops} was appended at a later time than its now)",
                "run NTP (chrony) here: ops it stamps sort before ops they follow, or are late",
            )
        else:
            self.add(
                "clock",
                "pass",
                f"not behind the broker's by more than {CLIENT_WARN_SKEW_S:g} s (the newest "
                f"op's append time, {-behind_s:,.1f} s ago by this clock); a clock ahead shows "
                "as clock-skew dead letters",
            )

    def _newest_append(self, last: dict[int, int]) -> int | None:
        if not last:
            return None
        stamps = self._first_messages(self.s.topics.ops, last)
        return max(stamps.values()) if stamps else None

    def disk(self) -> None:
        data_dir = Path(self.s.worker.data_dir)
        probe = data_dir
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        usage = shutil.disk_usage(probe)
        fraction = usage.free / usage.total if usage.total else 0.0
        free, total = mebibytes(usage.free), mebibytes(usage.total)
        detail = f"{data_dir} (on this machine): {free} free of {total}"
        detail += f" ({fraction:.0%})"
        if fraction < FREE_WARN_FRACTION / 2 or usage.free < FREE_WARN_BYTES / 2:
            status: Status = "fail"
        elif fraction < FREE_WARN_FRACTION or usage.free < FREE_WARN_BYTES:
            status = "warn"
        else:
            status = "pass"
        fix = (
            ""
            if status == "pass"
            else "free space or grow the volume: a full disk stops the worker's writes "
            "(compaction, `dyno-stream compact`, folds histories)"
        )
        self.add("disk", status, detail, fix)


def diagnose(settings: Settings, **kwargs: Any) -> list[Finding]:
    """Every check's finding, in order."""
    return Doctor(settings, **kwargs).run()


def as_json(findings: list[Finding]) -> str:
    return json.dumps([asdict(f) for f in findings], ensure_ascii=False)
