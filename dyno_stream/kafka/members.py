"""Which worker answers for an item: the group's description, read by any client.

Each worker puts the HTTP address it advertises (``[worker] advertised_http``) in its
consumer's client.id, as ``<client_id>@<host:port>``. ``describe_consumer_groups`` gives every
member's client id and assignment, under KIP-848's ``consumer`` protocol as under the classic
one: with the ops topic's partition count (metadata), that says which address holds the
partition an item's name belongs to (the placement rule, ``kafka.partitioning``). Nothing more
to run or keep: a member that leaves drops out of the description with its partitions.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from dyno_stream.config import ADVERTISED_SEP, Partitioner, Settings
from dyno_stream.core.errors import KafkaServiceError
from dyno_stream.kafka.partitioning import rule_partition

_ADDRESS = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")
#: How long a directory trusts what it read before reading the group again.
_FRESH_S = 5.0


def member_address(client_id: str) -> str | None:
    """The HTTP address a member's client.id advertises, or None (a member that serves no
    HTTP, or another client of the group)."""
    _, sep, address = client_id.rpartition(ADVERTISED_SEP)
    return address if sep and _ADDRESS.match(address) else None


def item_partition(name: str, partitions: int, partitioner: Partitioner) -> int:
    """The ops partition an item belongs to: the placement rule over its name."""
    return rule_partition(name.encode("utf-8"), partitions, partitioner)


@dataclass(frozen=True)
class Owners:
    """The group as last described: the ops topic's partition count, and each assigned
    partition's advertised address."""

    partitions: int
    partitioner: Partitioner
    by_partition: dict[int, str] = field(default_factory=dict)

    def partition_of(self, name: str) -> int:
        """The ops partition the item ``name`` belongs to."""
        return item_partition(name, self.partitions, self.partitioner)

    def addresses(self) -> list[str]:
        return sorted(set(self.by_partition.values()))


def describe_owners(admin: AdminClient, settings: Settings, timeout: float = 5.0) -> Owners:
    """Read the ops topic's partition count and the group's members (two requests)."""
    topic, group = settings.topics.ops, settings.worker.group_id
    try:
        meta = admin.list_topics(topic, timeout=timeout)
        partitions = len(meta.topics[topic].partitions)
        [future] = admin.describe_consumer_groups([group], request_timeout=timeout).values()
        described = future.result()
    except KafkaException as exc:
        raise KafkaServiceError(f"cannot describe consumer group {group!r}: {exc}") from None
    by_partition: dict[int, str] = {}
    for member in described.members:
        address = member_address(member.client_id)
        if address is None or member.assignment is None:
            continue
        for tp in member.assignment.topic_partitions:
            if tp.topic == topic:
                by_partition[tp.partition] = address
    return Owners(partitions, settings.kafka.partitioner, by_partition)


class OwnerDirectory:
    """``describe_owners`` cached for a few seconds; thread-safe. ``stale()`` after an
    answer that shows the cache wrong (a refused connection, a 307 elsewhere)."""

    def __init__(self, settings: Settings, admin_config: dict[str, Any]) -> None:
        self.settings = settings
        self._admin = AdminClient(admin_config)
        self._lock = threading.Lock()
        self._owners: Owners | None = None
        self._read_at = 0.0

    def owners(self) -> Owners:
        with self._lock:
            now = time.monotonic()
            if self._owners is None or now - self._read_at > _FRESH_S:
                self._owners = describe_owners(self._admin, self.settings)
                self._read_at = now
            return self._owners

    def stale(self) -> None:
        with self._lock:
            self._read_at = 0.0

    def owner_of(self, name: str) -> tuple[int, str | None]:
        """The item's partition, and the address of the worker holding it (None: no member
        advertising an address holds it now)."""
        owners = self.owners()
        partition = owners.partition_of(name)
        return partition, owners.by_partition.get(partition)
