"""How settings map onto librdkafka's configuration (pure: no broker)."""

from __future__ import annotations

from dyno_stream.config import consumer_config, load_settings


def test_consumer_fetches_10_mb_per_partition_unless_kafka_extra_says_otherwise() -> None:
    s = load_settings()
    conf = consumer_config(s)
    assert conf["max.partition.fetch.bytes"] == 10 * 1024 * 1024
    assert conf["enable.auto.commit"] is False and conf["group.id"] == s.worker.group_id

    tuned = s.model_copy(
        update={
            "kafka": s.kafka.model_copy(
                update={"extra": {"max.partition.fetch.bytes": 2_000_000, "group.id": "other"}}
            )
        }
    )
    conf = consumer_config(tuned)
    assert conf["max.partition.fetch.bytes"] == 2_000_000  # a user's own setting wins
    assert conf["group.id"] == s.worker.group_id  # ... but not over what the worker needs
