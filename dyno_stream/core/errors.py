"""One exception hierarchy for the whole package, classified by what failed.

Every error a caller can provoke derives from :class:`DynoError`; below it one family per
thing that can fail (input, store, Kafka, configuration, the development broker). The worker
maps each class to a dead-letter ``reason``, which is why each carries a short code besides
its message. The tree: ``docs/design/errors.md``.
"""

from __future__ import annotations

#: Dead-letter headers of a ``clock-skew`` event: the flake's time and the time it was
#: compared with, in milliseconds since the epoch (decimal text).
H_FLAKE_TIME = "dyno.error.flake_time"
H_MESSAGE_TIME = "dyno.error.message_time"
#: Dead-letter headers of an ``expectation-failed`` op: the item's chain hash and changes
#: count when the op was refused.
H_ACTUAL_HASH = "dyno.actual.hash"
H_ACTUAL_CHANGES = "dyno.actual.changes"


class DynoError(Exception):
    """Base of every dyno-stream error."""

    #: Short, stable code used as the dead-letter ``reason`` header.
    reason = "error"

    def headers(self) -> list[tuple[str, bytes]]:
        """Dead-letter headers that say more than the reason and the message (none here)."""
        return []


class InputError(DynoError):
    """An event or a call that cannot be applied as it is: the producer's to fix."""

    reason = "invalid"


class ValidationError(InputError, ValueError):
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


class WrongPartitionError(InputError):
    """A message off the partition its key's placement rule gives (``[kafka] partitioner``):
    forwarded to that partition, never applied where it landed."""

    reason = "wrong-partition"


class ClockSkewError(ValidationError):
    """An op or flatten command whose flake is too far ahead of its time.

    The worker compares the flake's time with the Kafka message's own timestamp (see
    ``dyno_stream.kafka.clock``), the client with its local clock. An op from a producer whose clock
    runs a year fast would otherwise sort after every honest op for a year: the item would be
    frozen at its value. Both times go into the dead letter's headers (``headers``).
    """

    reason = "clock-skew"

    def __init__(self, field: str, message: str, flake_ms: int, message_ms: int) -> None:
        self.flake_ms = flake_ms
        self.message_ms = message_ms
        super().__init__(field, message)

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (H_FLAKE_TIME, str(self.flake_ms).encode()),
            (H_MESSAGE_TIME, str(self.message_ms).encode()),
        ]


class HistoryError(InputError):
    """A well-formed op or command that does not fit the item's history as stored."""

    reason = "history"


class LateOpError(HistoryError):
    """An op older than the item's flattened history row: it can no longer be placed."""

    reason = "late"


class ConflictError(HistoryError):
    """The same item and flake already hold a different op or change."""

    reason = "conflict"


class UnknownHashError(HistoryError):
    """``flatten`` was asked for a hash that is not in the item's history chain."""

    reason = "unknown-hash"


class ExpectationFailedError(HistoryError):
    """A conditional op whose item is not as it expected (``core.expectations``): refused,
    with the item's actual chain hash and changes count in its dead letter's headers."""

    reason = "expectation-failed"

    def __init__(self, message: str, actual_hash: str, actual_changes: int) -> None:
        super().__init__(message)
        self.actual_hash, self.actual_changes = actual_hash, actual_changes

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (H_ACTUAL_HASH, self.actual_hash.encode()),
            (H_ACTUAL_CHANGES, str(self.actual_changes).encode()),
        ]


class OpRefusedError(DynoError):
    """The owning worker refused the op a read waited for (``DynoClient.outcome``, ``op
    --then-get``): ``reason`` is its dead letter's, ``actual`` the item's hash and changes
    for an ``expectation-failed`` refusal."""

    def __init__(self, message: str, refused: str, actual: dict[str, object]) -> None:
        super().__init__(message)
        self.refused, self.actual = refused, actual


class HistoryFoldedError(DynoError):
    """An item's state at a time its rows no longer hold: folded by a flatten (or erased)."""

    reason = "history-folded"


class WorkersUnreachableError(DynoError):
    """No worker answered a read (``DynoClient.get``, ``dyno-stream get``/``ls``)."""


class ReadTimeoutError(DynoError):
    """The owning worker did not answer a read in time (restoring, moving, behind)."""


class StoreError(DynoError):
    """LevelDB could not do what was asked: the store is closed, refused a write, or could not
    be opened (a lock another process holds, a path that is not a store)."""

    reason = "store"


class StoreClosedError(StoreError):
    """An operation on a store that has been closed."""

    reason = "closed"


class StoreLockedError(StoreError):
    """Another process holds the store's LevelDB lock: on a shared disk, the partition's
    previous owner has not closed it yet. The worker waits for it beside its loop."""

    reason = "locked"


class StoreFormatError(StoreError):
    """A store this release cannot read as it is: written by a newer release (a newer store
    format), or with a format row that is not a version. Refused, never read as another."""

    reason = "store-format"


class KafkaServiceError(DynoError):
    """Kafka did not do what was asked: it refused our login, did not acknowledge a publish,
    or did not answer an admin or metadata request in time."""

    reason = "kafka"


class KafkaAdminError(KafkaServiceError):
    """Kafka did not answer a metadata request or refused to create a topic."""

    reason = "kafka-admin"


class KafkaUnreachableError(KafkaServiceError):
    """No broker answered within ``[kafka] connect_timeout_s``: the message says where we
    looked, why it failed, and the two ways out."""

    reason = "kafka-unreachable"

    def __init__(self, bootstrap: str, why: str) -> None:
        super().__init__(
            f"no Kafka broker answers at {bootstrap} ({why}); start one with "
            "'dyno-stream broker start', or set DYNO_KAFKA__BOOTSTRAP_SERVERS"
        )
        self.bootstrap = bootstrap
        self.why = why


class KafkaAuthError(KafkaServiceError):
    """Kafka refused our SASL login or our TLS handshake: a setting to fix, not to retry."""

    reason = "auth"


class PublishError(KafkaServiceError):
    """Snapshots or dead letters were not acknowledged by Kafka; the batch stays pending."""

    reason = "publish"


class StoreWriteError(StoreError):
    """LevelDB refused a write (disk full, I/O error): nothing of that batch was stored.

    Not an error of one event: the worker stops (exit status 1) without committing the batch,
    and a restart once the disk is fixed resumes from the store's own offset.
    """

    reason = "store-write"


class LocalBrokerError(DynoError):
    """The local development broker (``devtools.broker``) could not be fetched, started,
    stopped or reached. Never raised by the runtime: production brokers fail as
    :class:`KafkaServiceError`."""

    reason = "local-broker"


class ConfigError(DynoError):
    """Configuration that cannot work (a bad setting, an unreadable file)."""

    reason = "config"


class PartitionCountError(ConfigError):
    """The ops topic's partition count is not the one its stores were built with: the
    deployment's topics no longer fit its data.

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
