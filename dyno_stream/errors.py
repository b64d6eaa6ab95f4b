"""One exception hierarchy for the whole package.

Every error a caller can provoke derives from :class:`DynoError`, so a service can catch one
type. The worker maps each subclass to a dead-letter ``reason`` (see ``reason``), which is why
each carries a short machine-readable code besides its message.
"""

from __future__ import annotations


class DynoError(Exception):
    """Base of every dyno-stream error."""

    #: Short, stable code used as the dead-letter ``reason`` header.
    reason = "error"


class ValidationError(DynoError, ValueError):
    """Input of the wrong shape. ``field`` names what was wrong."""

    reason = "invalid"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class InvalidNameError(ValidationError):
    """An item name that is empty, too long, or not text."""


class InvalidFlakeError(ValidationError):
    """A timestamp that is not a well-formed flake id."""


class InvalidChangeError(ValidationError):
    """A change whose shape does not fit its op, or that is not finite JSON."""


class NotJsonError(ValidationError):
    """Bytes that are not a JSON document (or not UTF-8)."""

    reason = "not-json"


class LimitError(ValidationError):
    """An event beyond a configured limit (``[worker]`` settings; see ``limits``).

    Limits keep one hostile or buggy producer from making a worker slow, huge or crash: each
    broken limit has its own reason, so a dead-letter reader can tell a limit from a typo.
    """

    reason = "limit"


class OversizedEventError(LimitError):
    """An event larger than ``max_event_bytes``."""

    reason = "oversized"


class NameTooLongError(InvalidNameError, LimitError):
    """An item name longer (in UTF-8 bytes) than ``max_name_bytes``."""

    reason = "name-too-long"


class TooDeepError(InvalidChangeError, LimitError):
    """A change nested deeper (objects and arrays) than ``max_depth``."""

    reason = "too-deep"


class TooManyAttrsError(InvalidChangeError, LimitError):
    """An op that would leave its item with more than ``max_attrs`` attributes."""

    reason = "too-many-attrs"


class KeyMismatchError(ValidationError):
    """A Kafka key that is not the event's item name: the op may sit on the wrong partition."""

    reason = "key-mismatch"


class LateOpError(DynoError):
    """An op older than the item's flattened history row: it can no longer be placed."""

    reason = "late"


class ConflictError(DynoError):
    """The same item and flake already hold a different op or change."""

    reason = "conflict"


class UnknownHashError(DynoError):
    """``flatten`` was asked for a hash that is not in the item's history chain."""

    reason = "unknown-hash"


class StoreClosedError(DynoError):
    """An operation on a store that has been closed."""

    reason = "closed"


class BrokerError(DynoError):
    """The local Kafka broker could not be fetched, started, or reached."""

    reason = "broker"


class KafkaAuthError(BrokerError):
    """Kafka refused our SASL login or our TLS handshake: a setting to fix, not to retry."""

    reason = "auth"


class PublishError(DynoError):
    """Snapshots or dead letters were not acknowledged by Kafka; the batch stays pending."""

    reason = "publish"


class StoreWriteError(DynoError):
    """LevelDB refused a write (disk full, I/O error): nothing of that batch was stored.

    Not an error of one event: the worker stops (exit status 1) without committing the batch,
    and a restart once the disk is fixed resumes from the store's own offset.
    """

    reason = "store-write"


class PartitionCountError(DynoError):
    """The ops topic's partition count is not the one its stores were built with.

    Kafka places a key at ``hash(key) % partitions``: after the topic grows (or shrinks), an
    item's later ops land on another partition, whose store knows nothing of its history.
    Workers stop and clients refuse rather than let items split; ``dyno-stream repartition``
    moves the deployment to new topics instead.
    """

    reason = "partitions"

    def __init__(self, topic: str, now: int, was: int) -> None:
        super().__init__(
            f"ops topic {topic} has {now} partitions, was {was}: items would split across "
            "stores; see 'dyno-stream repartition'"
        )
        self.topic, self.now, self.was = topic, now, was


class ConfigError(DynoError):
    """Configuration that cannot work (a bad setting, an unreadable file)."""

    reason = "config"
