"""Topic administration: create the ops, snapshot and dead-letter topics when missing.

The snapshot topic is a changelog of materialized items, so it is created compacted
(``cleanup.policy=compact``): Kafka then keeps at least the last snapshot of every item.
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from dyno_stream.config import Settings
from dyno_stream.errors import BrokerError

log = logging.getLogger(__name__)


def topic_specs(settings: Settings) -> list[NewTopic]:
    t = settings.topics
    rf = t.replication_factor
    return [
        NewTopic(t.ops, num_partitions=t.partitions, replication_factor=rf),
        NewTopic(
            t.snapshots,
            num_partitions=t.partitions,
            replication_factor=rf,
            config={"cleanup.policy": "compact"},
        ),
        NewTopic(t.dead_letter, num_partitions=1, replication_factor=rf),
    ]


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create whichever of the three topics are missing; return the names created."""
    admin = AdminClient(settings.kafka.librdkafka())
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise BrokerError(
            f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc}"
        ) from exc
    wanted = [spec for spec in topic_specs(settings) if spec.topic not in existing]
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            created.append(name)
            log.info("created topic %s", name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another worker won
                raise BrokerError(f"cannot create topic {name}: {exc}") from exc
    return created


def delete_topics(settings: Settings, names: list[str], timeout: float = 30.0) -> None:
    """Delete topics (the demo starts from clean ones); missing ones are fine."""
    admin = AdminClient(settings.kafka.librdkafka())
    existing = set(admin.list_topics(timeout=timeout).topics)
    doomed = [n for n in names if n in existing]
    if not doomed:
        return
    for _name, future in admin.delete_topics(doomed, operation_timeout=timeout).items():
        future.result(timeout)
