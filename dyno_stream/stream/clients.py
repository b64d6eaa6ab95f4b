"""The narrow faces of Kafka's clients that the stream runtime uses.

The worker's parts take these protocols rather than ``confluent_kafka.Consumer`` and
``Producer`` (the worker's consumer is a ``GroupConsumer``), so that the commit protocol,
republishing, and revokes during a restore can be unit-tested with small fakes
(``tests/fakes.py``) and no broker; the real clients satisfy them as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol, overload

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

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


class GroupConsumer:
    """The worker's group consumer, built from the start but opened in ``run``: its
    configuration holds the group protocol the broker serves and the HTTP address bound
    (in its client.id), known only then. Until ``open`` every call raises."""

    def __init__(self) -> None:
        self._consumer: Consumer | None = None

    def open(self, config: dict[str, Any]) -> Consumer:
        self._consumer = Consumer(config)
        return self._consumer

    @property
    def _inner(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("the worker's consumer is used before run() opened it")
        return self._consumer

    def poll(self, timeout: float = -1) -> Message | None:
        return self._inner.poll(timeout)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        return self._inner.consume(num_messages, timeout)

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self._inner.incremental_assign(partitions)

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        self._inner.incremental_unassign(partitions)

    def pause(self, partitions: list[TopicPartition]) -> None:
        self._inner.pause(partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self._inner.resume(partitions)

    @overload
    def commit(
        self, *, offsets: list[TopicPartition], asynchronous: Literal[True] = ...
    ) -> None: ...

    @overload
    def commit(
        self, *, offsets: list[TopicPartition], asynchronous: Literal[False]
    ) -> list[TopicPartition]: ...

    def commit(
        self, *, offsets: list[TopicPartition], asynchronous: bool = True
    ) -> list[TopicPartition] | None:
        if asynchronous:
            self._inner.commit(offsets=offsets, asynchronous=True)
            return None
        return self._inner.commit(offsets=offsets, asynchronous=False)

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        return self._inner.get_watermark_offsets(partition, timeout, cached)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
