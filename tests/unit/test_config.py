"""How settings map onto librdkafka's configuration (pure: no broker)."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest
from helpers import REPO
from pydantic import BaseModel

from dyno_stream.config import (
    CLASSIC_ONLY_PROPERTIES,
    Settings,
    consumer_config,
    load_settings,
    producer_config,
)
from dyno_stream.core.errors import ConfigError


def test_consumer_fetches_10_mb_per_partition_unless_kafka_extra_says_otherwise() -> None:
    s = load_settings()
    conf = consumer_config(s, protocol="consumer")
    assert conf["max.partition.fetch.bytes"] == 10 * 1024 * 1024
    assert conf["enable.auto.commit"] is False and conf["group.id"] == s.worker.group_id

    tuned = s.model_copy(
        update={
            "kafka": s.kafka.model_copy(
                update={"extra": {"max.partition.fetch.bytes": 2_000_000, "group.id": "other"}}
            )
        }
    )
    conf = consumer_config(tuned, protocol="consumer")
    assert conf["max.partition.fetch.bytes"] == 2_000_000  # a user's own setting wins
    assert conf["group.id"] == s.worker.group_id  # ... but not over what the worker needs


def test_consumer_fetches_wait_a_few_ms_for_more_ops_unless_kafka_extra_says_otherwise() -> None:
    """Under a moderate load a fetch answered at once holds an op or two: each batch pays its
    fixed costs for them. Held up to 5 ms (1 MB is a backlog's), a fetch brings 5 ms of ops."""
    s = load_settings()
    conf = consumer_config(s, protocol="consumer")
    assert conf["fetch.wait.max.ms"] == 5
    assert conf["fetch.min.bytes"] == 1_000_000
    tuned = s.model_copy(
        update={"kafka": s.kafka.model_copy(update={"extra": {"fetch.wait.max.ms": 500}})}
    )
    assert consumer_config(tuned, protocol="consumer")["fetch.wait.max.ms"] == 500


def _toml_keys(text: str) -> dict[str, set[str]]:
    """Each ``[section]``'s keys in the shipped file, set or commented out (``# key = ...``)."""
    keys: dict[str, set[str]] = {}
    section = ""
    for line in text.splitlines():
        header = re.fullmatch(r"\[([a-z_.]+)\]\s*(#.*)?", line.strip())
        if header:
            section = header.group(1)
            keys.setdefault(section, set())
            continue
        key = re.match(r"#?\s*([a-z_]+)\s*=", line)
        if key and section:
            keys[section].add(key.group(1))
    return keys


def test_shipped_config_file_lists_every_setting_with_its_default() -> None:
    """The docs say config/dyno-stream.toml holds every setting: each field of each
    section is there (commented out where its default is "unset"), and what is set is the
    default."""
    text = (REPO / "config" / "dyno-stream.toml").read_text()
    in_file = _toml_keys(text)
    parsed = tomllib.loads(text)
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel), section
        nested = {name for name, f in model.model_fields.items() if name in parsed[section]}
        missing = set(model.model_fields) - in_file.get(section, set()) - nested
        assert not missing, f"[{section}] in config/dyno-stream.toml lacks {sorted(missing)}"
        unknown = in_file[section] - set(model.model_fields)
        assert not unknown, f"[{section}] in config/dyno-stream.toml has unknown {unknown}"
        assert model.model_validate(parsed[section]) == model(), f"[{section}] is not the default"


# ---------------------------------------------------------------------------------------------
# the consumer group: protocol, static membership, failover timing
# ---------------------------------------------------------------------------------------------


def test_default_group_protocol_is_auto_and_needs_the_brokers_answer() -> None:
    """ "auto" is the broker's to decide (``kafka.group_protocol``): a consumer config built
    without the answer is refused, not guessed."""
    s = load_settings()
    assert s.worker.group_protocol == "auto"
    with pytest.raises(ConfigError, match="group_protocol is 'auto'"):
        consumer_config(s)
    assert consumer_config(s, protocol="classic")["group.protocol"] == "classic"
    assert consumer_config(s, protocol="classic")["partition.assignment.strategy"] == (
        "cooperative-sticky"
    )


def test_kip_848_group_passes_no_client_side_session_settings() -> None:
    """librdkafka refuses to create a group.protocol=consumer consumer given
    session.timeout.ms, heartbeat.interval.ms, partition.assignment.strategy or
    group.protocol.type (the broker sets them): the config must carry none."""
    conf = consumer_config(load_settings(), protocol="consumer")
    assert conf["group.protocol"] == "consumer"
    assert conf["max.poll.interval.ms"] == 300_000
    assert not set(conf) & set(CLASSIC_ONLY_PROPERTIES)
    assert "group.instance.id" not in conf  # dynamic membership unless asked for


def test_classic_group_is_cooperative_sticky_with_fast_failover_defaults() -> None:
    conf = consumer_config(load_settings(worker={"group_protocol": "classic"}))
    assert conf["group.protocol"] == "classic"
    assert conf["partition.assignment.strategy"] == "cooperative-sticky"
    # failover within 15 s: the session, not librdkafka's 45 s
    assert conf["session.timeout.ms"] == 10_000
    assert conf["heartbeat.interval.ms"] == 2_000


def test_classic_timing_and_instance_id_map_to_librdkafka_names() -> None:
    s = load_settings(
        worker={
            "group_protocol": "classic",
            "instance_id": "worker-7",
            "session_timeout_s": 6.5,
            "heartbeat_interval_s": 0.5,
            "max_poll_interval_s": 30,
            "publish_timeout_s": 15,
        }
    )
    conf = consumer_config(s)
    assert conf["group.instance.id"] == "worker-7"
    assert conf["session.timeout.ms"] == 6_500
    assert conf["heartbeat.interval.ms"] == 500
    assert conf["max.poll.interval.ms"] == 30_000


def test_a_short_classic_session_keeps_the_default_heartbeat_below_it() -> None:
    conf = consumer_config(
        load_settings(worker={"group_protocol": "classic", "session_timeout_s": 3})
    )
    assert conf["heartbeat.interval.ms"] == 1_000


def test_instance_id_under_kip_848() -> None:
    conf = consumer_config(load_settings(worker={"instance_id": "w1"}), protocol="consumer")
    assert conf["group.instance.id"] == "w1"
    assert conf["group.protocol"] == "consumer"


def test_group_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNO_WORKER__GROUP_PROTOCOL", "classic")
    monkeypatch.setenv("DYNO_WORKER__INSTANCE_ID", "host-a")
    monkeypatch.setenv("DYNO_WORKER__SESSION_TIMEOUT_S", "8")
    conf = consumer_config(load_settings())
    assert (conf["group.protocol"], conf["group.instance.id"], conf["session.timeout.ms"]) == (
        "classic",
        "host-a",
        8_000,
    )


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        # the client cannot set these under KIP-848: say where they are set instead
        ({"worker": {"session_timeout_s": 10}}, "group.consumer.session.timeout.ms"),
        ({"worker": {"heartbeat_interval_s": 1}}, "group.consumer.heartbeat.interval.ms"),
        # under "auto" too (the default): a classic timing a new broker would ignore
        (
            {"worker": {"group_protocol": "auto", "session_timeout_s": 10}},
            "worker.session_timeout_s applies to group_protocol='classic' only (it is 'auto')",
        ),
        (
            {"worker": {"group_protocol": "consumer", "session_timeout_s": 10}},
            "set worker.group_protocol = 'classic' to set it here",
        ),
        (
            {
                "worker": {
                    "group_protocol": "classic",
                    "session_timeout_s": 6,
                    "heartbeat_interval_s": 6,
                }
            },
            "worker.heartbeat_interval_s (6.0) must be below worker.session_timeout_s (6.0)",
        ),
        (
            {
                "worker": {
                    "group_protocol": "classic",
                    "max_poll_interval_s": 5,
                    "publish_timeout_s": 1,
                }
            },
            "worker.max_poll_interval_s (5.0) must be at least worker.session_timeout_s (10.0)",
        ),
        ({"worker": {"group_protocol": "eager"}}, "worker.group_protocol"),
        ({"worker": {"instance_id": ""}}, "worker.instance_id"),
        ({"worker": {"session_timeout_s": 0, "group_protocol": "classic"}}, "session_timeout_s"),
        # the group's protocol and timing have one home, [worker], whatever the protocol
        ({"kafka": {"extra": {"session.timeout.ms": 6000}}}, "kafka.extra sets session.timeout.ms"),
        (
            {
                "worker": {"group_protocol": "classic"},
                "kafka": {"extra": {"partition.assignment.strategy": "range"}},
            },
            "kafka.extra sets partition.assignment.strategy",
        ),
        ({"kafka": {"extra": {"group.protocol": "classic"}}}, "kafka.extra sets group.protocol"),
        (
            {"worker": {"publish_timeout_s": 100, "max_poll_interval_s": 150}},
            "worker.publish_timeout_s (100.0) must be at most half of worker.max_poll_interval_s",
        ),
        ({"kafka": {"extra": {"group.instance.id": "x"}}}, "kafka.extra sets group.instance.id"),
    ],
)
def test_group_settings_that_cannot_work_are_config_errors(
    overrides: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(**overrides)
    assert named in str(err.value)


def test_the_placement_rule_sets_our_producers_partitioner_and_nothing_else_may() -> None:
    assert producer_config(load_settings())["partitioner"] == "murmur2_random"
    crc32 = load_settings(kafka={"partitioner": "crc32"})
    assert producer_config(crc32)["partitioner"] == "consistent_random"
    with pytest.raises(ConfigError, match=r"\[kafka\] partitioner"):
        load_settings(kafka={"extra": {"partitioner": "consistent_random"}})
    with pytest.raises(ConfigError, match="partitioner"):
        load_settings(kafka={"partitioner": "random"})
