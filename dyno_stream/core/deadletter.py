"""The dead-letter wire format: an event the worker could not apply, kept byte for byte with
its original key and headers, plus headers that say why and where it came from.

A message found off its placement rule's partition is a letter too, one that is forwarded to
its rule partition of the ops topic (``forward_to``) rather than to the dead-letter topic.

A dead letter is also what a partition store keeps pending until Kafka acknowledges it
(``encode``/``decode``), so it survives a crash between the write batch and the publish.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass

#: Header names the worker adds to a dead letter.
H_REASON = "dyno.error.reason"
H_MESSAGE = "dyno.error.message"
H_FIELD = "dyno.error.field"
H_TOPIC = "dyno.source.topic"
H_PARTITION = "dyno.source.partition"
H_OFFSET = "dyno.source.offset"
#: Set instead of the original bytes when a dead letter with them is more than Kafka takes
#: (``MAX_MESSAGE_BYTES``): the value is dropped, this header holds its length.
H_TRUNCATED = "dyno.error.truncated"
#: On a forwarded message: where it was first produced, and the partitioner that evidently
#: placed it there.
H_FORWARDED_FROM = "dyno.forwarded.from"
H_FORWARDED_PARTITIONER = "dyno.forwarded.partitioner"
#: The reason of a message forwarded to its rule partition.
WRONG_PARTITION = "wrong-partition"

Headers = list[tuple[str, bytes]]
#: Headers as confluent-kafka's produce() takes them.
KafkaHeaders = list[tuple[str, str | bytes | None]]


@dataclass(frozen=True)
class DeadLetter:
    """An event the worker could not apply, with the reason, kept byte for byte."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    reason: str
    message: str
    field: str | None = None
    #: headers the error adds (``DynoError.headers``: a clock-skew letter's two times)
    details: Headers = dataclasses.field(default_factory=list)  # (`field` is taken above)
    #: the ops partition to forward the message to, for a message off its rule partition
    forward_to: int | None = None

    def kafka_headers(self) -> KafkaHeaders:
        extra: KafkaHeaders = [
            (H_REASON, self.reason.encode()),
            (H_MESSAGE, self.message.encode("utf-8", "replace")),
            (H_TOPIC, self.topic.encode()),
            (H_PARTITION, str(self.partition).encode()),
            (H_OFFSET, str(self.offset).encode()),
        ]
        if self.field is not None:
            extra.append((H_FIELD, self.field.encode("utf-8", "replace")))
        return [*self.headers, *extra, *self.details]

    def forward_headers(self) -> KafkaHeaders:
        """A forwarded message's headers: its own, and where it came from."""
        source = f"{self.topic}/{self.partition}@{self.offset}".encode()
        return [*self.headers, (H_FORWARDED_FROM, source), *self.details]

    def refusal(self) -> bytes:
        """What a partition store keeps of the refusal (``store.partition``): enough for a
        reader to learn that the op it waits for was refused, and why."""
        return json.dumps(
            {
                "item": None if self.key is None else self.key.decode("utf-8", "replace"),
                "reason": self.reason,
                "message": self.message,
                "details": {k: v.decode("utf-8", "replace") for k, v in self.details},
                **({"forwarded_to": self.forward_to} if self.forward_to is not None else {}),
            }
        ).encode()

    def encode(self) -> bytes:
        def b64(v: bytes | None) -> str | None:
            return None if v is None else base64.b64encode(v).decode()

        return json.dumps(
            {
                "topic": self.topic,
                "partition": self.partition,
                "offset": self.offset,
                "key": b64(self.key),
                "value": b64(self.value),
                "headers": [[k, b64(v)] for k, v in self.headers],
                "reason": self.reason,
                "message": self.message,
                "field": self.field,
                "details": [[k, b64(v)] for k, v in self.details],
                "forward_to": self.forward_to,
            }
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> DeadLetter:
        d = json.loads(raw)

        def unb64(v: str | None) -> bytes | None:
            return None if v is None else base64.b64decode(v)

        return cls(
            d["topic"],
            d["partition"],
            d["offset"],
            unb64(d["key"]),
            unb64(d["value"]),
            [(k, unb64(v) or b"") for k, v in d["headers"]],
            d["reason"],
            d["message"],
            d["field"],
            # pending rows written before details existed have none
            [(k, unb64(v) or b"") for k, v in d.get("details", [])],
            d.get("forward_to"),
        )
