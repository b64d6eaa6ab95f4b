"""Settings: one frozen, validated object, from a TOML file and the environment.

Precedence (highest first): arguments in code, environment variables (``DYNO_`` prefix,
``__`` between levels, e.g. ``DYNO_KAFKA__BOOTSTRAP_SERVERS``), the TOML file
(``$DYNO_CONFIG``, else ``config/dyno-stream.toml`` when it exists), then the defaults here.

``KafkaSettings`` maps onto librdkafka's own configuration names (``librdkafka()``), so
anything librdkafka accepts (SASL, TLS, timeouts) can be set through ``kafka.extra`` without
this module knowing of it. Secrets are ``SecretStr``: they never appear in a repr or a log.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import pydantic
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from dyno_stream.core.errors import ConfigError
from dyno_stream.core.keys import MAX_NAME_BYTES

#: The largest snapshot or dead letter (the topics are created to take it).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

#: Nesting the JSON parser takes before it refuses an event; ``max_depth`` stays below it so
#: the worker's own reason (``too-deep``) is the one given.
MAX_PARSE_DEPTH = 128

DEFAULT_CONFIG_FILE = Path("config/dyno-stream.toml")

_SECRET_WORDS = ("password", "secret", "key.password", "token")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """How to reach the Kafka cluster."""

    bootstrap_servers: str = "127.0.0.1:19092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    client_id: str = "dyno-stream"
    #: Any other librdkafka setting, by its own name (passed through unchanged).
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict)

    def librdkafka(self) -> dict[str, Any]:
        """The settings as librdkafka names them (secrets revealed: pass to clients only)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "client.id": self.client_id,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": self.ssl_key_password,
        }
        for key, value in optional.items():
            if value is not None:
                conf[key] = value.get_secret_value() if isinstance(value, SecretStr) else value
        conf.update(self.extra)
        return conf

    def redacted(self) -> dict[str, Any]:
        """The same settings, fit for a log line."""
        return {
            k: "***" if any(w in k for w in _SECRET_WORDS) else v
            for k, v in self.librdkafka().items()
        }


class TopicSettings(_Section):
    """The topics a worker reads and writes; created with these settings when missing."""

    ops: str = "dyno.ops"
    snapshots: str = "dyno.snapshots"
    dead_letter: str = "dyno.dead-letter"
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    create_missing: bool = True


class WorkerSettings(_Section):
    group_id: str = "dyno-workers"
    data_dir: Path = Path(".dyno/data")
    batch_size: int = Field(default=10_000, ge=1, le=100_000)
    #: How long the loop waits for an event before doing its scheduled work; a batch never
    #: waits to fill up: it takes what has arrived, up to batch_size.
    batch_timeout_s: float = Field(default=0.1, gt=0)
    #: Limits on one event (see ``limits``); an event beyond one is a dead letter with the
    #: reason in brackets. Larger events (``oversized``) ...
    max_event_bytes: int = Field(default=1_048_576, ge=64)
    #: ... item names longer in UTF-8 bytes (``name-too-long``; the store takes 1,024 at most)
    max_name_bytes: int = Field(default=MAX_NAME_BYTES, ge=1, le=MAX_NAME_BYTES)
    #: ... changes nested deeper, objects and arrays counted, the change itself as 1
    #: (``too-deep``)
    max_depth: int = Field(default=32, ge=1, le=MAX_PARSE_DEPTH)
    #: ... ops that would leave their item with more attributes (``too-many-attrs``)
    max_attrs: int = Field(default=10_000, ge=1)
    #: ... ops (a flatten command's ``before``) whose flake time is further ahead of the
    #: Kafka message's timestamp than this (``clock-skew``; see ``dyno_stream.kafka.clock``); the
    #: client refuses an explicit ``ts`` this far ahead of its own clock.
    max_clock_skew_s: float = Field(default=60.0, gt=0)
    #: fsync every LevelDB write batch (survives power loss; slower).
    sync_writes: bool = False
    #: How long to wait for snapshot acknowledgements before giving up the batch.
    publish_timeout_s: float = Field(default=60.0, gt=0)
    #: How often acknowledged offsets are committed to Kafka (Kafka Streams'
    #: commit.interval.ms). Only lag tools read them: the store holds the offsets that count,
    #: and a commit per batch cost the broker as much work as the batch's snapshots.
    commit_interval_s: float = Field(default=1.0, ge=0)
    #: HTTP endpoint for /metrics, /healthz and item reads; port 0 turns it off.
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=9464, ge=0, le=65535)
    log_format: Literal["json", "text"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()


class CompactionSettings(_Section):
    """Which items a compaction pass flattens, and when workers compact on their own."""

    #: Only items with at least this many rows.
    min_rows: int = Field(default=10, ge=2)
    #: Only rows older than this many seconds are folded (ops may arrive this late).
    lateness_s: float = Field(default=3600.0, ge=0)
    #: Only items whose name starts with this.
    prefix: str = ""
    #: At most this many items per pass (the longest histories first).
    max_items: int | None = Field(default=None, ge=1)
    #: How long an online pass waits for the workers to confirm its commands.
    wait_s: float = Field(default=60.0, ge=0)
    #: Workers compact their own partitions every this many seconds (0: never) ...
    interval_s: float = Field(default=0.0, ge=0)
    #: ... or on this cron schedule (e.g. "0 3 * * *"); takes precedence over interval_s.
    cron: str | None = None

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, v: str | None) -> str | None:
        if v is not None and not croniter.is_valid(v):
            raise ValueError(f"{v!r} is not a cron expression")
        return v


class Settings(BaseSettings):
    """Everything dyno-stream reads from configuration."""

    model_config = SettingsConfigDict(
        env_prefix="DYNO_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    compaction: CompactionSettings = Field(default_factory=CompactionSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def config_file() -> Path | None:
    """The TOML file in force: ``$DYNO_CONFIG`` (must exist), else the default if present."""
    explicit = os.environ.get("DYNO_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"DYNO_CONFIG={explicit}: no such file")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Load settings, turning pydantic's error into a ``ConfigError`` that names the setting."""
    try:
        return Settings(**overrides)
    except pydantic.ValidationError as exc:
        lines = [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False)
        ]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def producer_config(settings: Settings) -> dict[str, Any]:
    """Idempotent, acks=all, and Java's partitioner, so every client places an item alike."""
    return {
        **settings.kafka.librdkafka(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "partitioner": "murmur2_random",
        # as large as the snapshot and dead-letter topics take (see topics.py)
        "message.max.bytes": MAX_MESSAGE_BYTES,
        "message.timeout.ms": int(settings.worker.publish_timeout_s * 1000),
    }


def consumer_config(settings: Settings) -> dict[str, Any]:
    """The store keeps the offsets that matter; Kafka's committed offsets only show lag."""
    return {
        # Larger fetches per partition than librdkafka's 1 MB: under a backlog the worker
        # waits less for its next batch (5-10% more ops/s in bench_worker.py); memory stays
        # bounded by queued.max.messages.kbytes. [kafka.extra] may set it otherwise.
        "max.partition.fetch.bytes": 10 * 1024 * 1024,
        **settings.kafka.librdkafka(),
        "group.id": settings.worker.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    }
