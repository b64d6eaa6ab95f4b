"""The narrow faces of Kafka's clients that the stream runtime uses.

The worker's parts take these protocols rather than ``confluent_kafka.Consumer`` and
``Producer``, so that the commit protocol, republishing, and revokes during a restore can be
unit-tested with small fakes (``tests/unit/fakes.py``) and no broker; the real clients
satisfy them as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol, overload

from confluent_kafka import KafkaError, Message, TopicPartition

from dyno_stream.core.deadletter import KafkaHeaders

#: called by the producer once Kafka has taken a message, or given up on it
DeliveryReport = Callable[[KafkaError | None, Message], None]


class OpsConsumer(Protocol):
    """What the worker asks of its group consumer."""

    def poll(self, timeout: float = -1) -> Message | None: ...

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]: ...

    def incremental_assign(self, partitions: list[TopicPartition]) -> None: ...

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None: ...

    def pause(self, partitions: list[TopicPartition]) -> None: ...

    def resume(self, partitions: list[TopicPartition]) -> None: ...

    @overload
    def commit(
        self, *, offsets: list[TopicPartition], asynchronous: Literal[True] = ...
    ) -> None: ...

    @overload
    def commit(
        self, *, offsets: list[TopicPartition], asynchronous: Literal[False]
    ) -> list[TopicPartition]: ...

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]: ...


class MessageProducer(Protocol):
    """What the worker asks of its producer: snapshots and dead letters."""

    def produce(
        self,
        topic: str,
        value: str | bytes | None = None,
        key: str | bytes | None = None,
        partition: int = -1,
        *,
        on_delivery: DeliveryReport | None = None,
        headers: KafkaHeaders | None = None,
    ) -> None: ...

    def poll(self, timeout: float = -1) -> int: ...

    def flush(self, timeout: float = -1) -> int: ...
