"""How settings map onto librdkafka's configuration (pure: no broker)."""

from __future__ import annotations

import re
import tomllib

from helpers import REPO
from pydantic import BaseModel

from dyno_stream.config import Settings, consumer_config, load_settings


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
    """The README says config/dyno-stream.toml holds every setting: each field of each
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
