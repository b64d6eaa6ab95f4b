"""Small fakes of the Kafka clients' narrow faces (``dyno_stream.stream.clients``), for unit
tests of the worker's parts without a broker: the commit order, republishing, revokes during
a restore. They record what was asked of them; the producer acknowledges on ``poll`` as told.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from confluent_kafka import KafkaError, Message, TopicPartition

from dyno_stream.config import Settings
from dyno_stream.core.deadletter import KafkaHeaders
from dyno_stream.kafka.partitioning import PlacementRule
from dyno_stream.stream.checkpoint import Checkpoint
from dyno_stream.stream.clients import DeliveryReport
from dyno_stream.stream.metrics import WorkerMetrics
from dyno_stream.stream.processing import BatchProcessor
from dyno_stream.stream.publisher import Publisher


@dataclass
class Produced:
    topic: str
    value: bytes | None
    key: bytes | None
    partition: int
    headers: KafkaHeaders | None


@dataclass
class FakeProducer:
    """Takes messages; ``poll`` acknowledges them (``mode="ack"``), fails them ("fail"), or
    keeps them waiting ("hold"). ``waits`` counts the polls that would block (a timeout other
    than 0); with ``refuse_waits`` such a poll raises, so a test sees a wait at once."""

    mode: Literal["ack", "fail", "hold"] = "ack"
    produced: list[Produced] = field(default_factory=list)
    waits: int = 0
    refuse_waits: bool = False
    _waiting: list[tuple[DeliveryReport | None, Message]] = field(default_factory=list)

    def produce(
        self,
        topic: str,
        value: str | bytes | None = None,
        key: str | bytes | None = None,
        partition: int = -1,
        *,
        on_delivery: DeliveryReport | None = None,
        headers: KafkaHeaders | None = None,
    ) -> None:
        v = value.encode() if isinstance(value, str) else value
        k = key.encode() if isinstance(key, str) else key
        self.produced.append(Produced(topic, v, k, partition, headers))
        msg = Message(topic=topic, partition=max(partition, 0), key=k, value=v)
        self._waiting.append((on_delivery, msg))

    def poll(self, timeout: float = -1) -> int:
        if timeout != 0:
            self.waits += 1
            if self.refuse_waits:
                raise AssertionError(f"the producer was polled with a wait ({timeout} s)")
        if self.mode == "hold":
            return 0
        err = None if self.mode == "ack" else KafkaError(KafkaError._MSG_TIMED_OUT)
        waiting, self._waiting = self._waiting, []
        for report, msg in waiting:
            if report is not None:
                report(err, msg)
        return len(waiting)

    def flush(self, timeout: float = -1) -> int:
        self.poll(0)
        return len(self._waiting)


@dataclass
class FakeConsumer:
    """Records assignment changes and commits; serves ``messages`` on poll/consume."""

    messages: list[Message] = field(default_factory=list)
    calls: list[tuple[str, list[tuple[str, int, int]]]] = field(default_factory=list)
    commits: list[list[tuple[str, int, int]]] = field(default_factory=list)
    high: dict[tuple[str, int], int] = field(default_factory=dict)

    @staticmethod
    def _tps(partitions: list[TopicPartition]) -> list[tuple[str, int, int]]:
        return [(tp.topic, tp.partition, tp.offset) for tp in partitions]

    def poll(self, timeout: float = -1) -> Message | None:
        return self.messages.pop(0) if self.messages else None

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        out, self.messages = self.messages[:num_messages], self.messages[num_messages:]
        return out

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("assign", self._tps(partitions)))

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("unassign", self._tps(partitions)))

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("pause", self._tps(partitions)))

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("resume", self._tps(partitions)))

    def commit(  # type: ignore[override]
        self, *, offsets: list[TopicPartition], asynchronous: bool = True
    ) -> list[TopicPartition] | None:
        self.commits.append(self._tps(offsets))
        return None if asynchronous else offsets

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        return 0, self.high.get((partition.topic, partition.partition), -1)


def batch_processor(
    settings: Settings,
    producer: FakeProducer,
    metrics: WorkerMetrics,
    placement: PlacementRule,
    consumer: FakeConsumer | None = None,
) -> BatchProcessor:
    """A batch processor wired as the worker wires it, over the fakes."""
    checkpoint = Checkpoint(settings, producer, consumer or FakeConsumer(), metrics)
    publisher = Publisher(settings, producer, checkpoint, metrics)
    return BatchProcessor(settings, checkpoint, publisher, metrics, placement)
