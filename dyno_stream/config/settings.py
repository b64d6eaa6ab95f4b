"""The settings models (pydantic-settings) and their loading from the TOML file and the
environment; the package's docstring says the precedence."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import pydantic
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from dyno_stream.core.errors import ConfigError
from dyno_stream.core.keys import MAX_NAME_BYTES
from dyno_stream.core.librdkafka_log import LIBRDKAFKA_LOG

#: The largest snapshot or dead letter (the topics are created to take it).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

#: Nesting the JSON parser takes before it refuses an event; ``max_depth`` stays below it so
#: the worker's own reason (``too-deep``) is the one given.
MAX_PARSE_DEPTH = 128

DEFAULT_CONFIG_FILE = Path("config/dyno-stream.toml")

#: The most member processes one worker runs (``[worker] processes``).
MAX_WORKER_PROCESSES = 256

_SECRET_WORDS = ("password", "secret", "key.password", "token")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


#: The placement rules ``[kafka] partitioner`` may name (``kafka.partitioning``).
Partitioner = Literal["murmur2", "crc32"]
#: librdkafka's name for each rule (its ``partitioner`` setting), for the producers we make.
LIBRDKAFKA_PARTITIONER: dict[str, str] = {"murmur2": "murmur2_random", "crc32": "consistent_random"}


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
    #: The placement rule: the ops partition of an item is murmur2 of its name (Java's
    #: default, and every dyno-stream producer's) or crc32 (librdkafka's default, for a fleet
    #: of kcat/confluent-kafka producers). The worker forwards ops found off the rule.
    partitioner: Partitioner = "murmur2"
    #: Any other librdkafka setting, by its own name (passed through unchanged).
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict)
    #: How long a command of the CLI waits for a broker to answer before it gives up with
    #: one line saying so (a worker waits for ever: it rides out an outage).
    connect_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("extra")
    @classmethod
    def _placement_is_a_setting(
        cls, v: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        if "partitioner" in v:
            raise ValueError(
                "the placement rule is [kafka] partitioner (murmur2 or crc32), not "
                "kafka.extra.partitioner: every producer, read and job of dyno-stream follows it"
            )
        return v

    def librdkafka(self) -> dict[str, Any]:
        """The settings as librdkafka names them (secrets revealed: pass to clients only),
        with librdkafka's log sent through Python logging (see ``core.librdkafka_log``)."""
        conf: dict[str, Any] = {
            "logger": LIBRDKAFKA_LOG,
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
            if k != "logger"
        }


class TopicSettings(_Section):
    """The topics a worker reads and writes; created with these settings when missing."""

    ops: str = "dyno.ops"
    snapshots: str = "dyno.snapshots"
    dead_letter: str = "dyno.dead-letter"
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    create_missing: bool = True


#: What the client sets under the classic group protocol, and the broker (or the group's own
#: config) under KIP-848's: librdkafka refuses to create a ``group.protocol=consumer``
#: consumer given any of them ("... is not supported for group.protocol=consumer").
CLASSIC_ONLY_PROPERTIES = (
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "partition.assignment.strategy",
    "group.protocol.type",
)

#: Group properties the ``[worker]`` section owns: set there, never through ``kafka.extra``,
#: so that one place says what the group runs with.
WORKER_GROUP_PROPERTIES = (
    "group.protocol",
    "group.instance.id",
    "max.poll.interval.ms",
    *CLASSIC_ONLY_PROPERTIES,
)

#: Classic protocol defaults: a SIGKILLed worker's partitions move after the session
#: timeout, so 10 s (librdkafka: 45 s) keeps failover under 15 s; the broker refuses less
#: than its group.min.session.timeout.ms (6 s by default). Five heartbeats per session.
CLASSIC_SESSION_TIMEOUT_S = 10.0
CLASSIC_HEARTBEAT_INTERVAL_S = 2.0


class WorkerSettings(_Section):
    group_id: str = "dyno-workers"
    #: "consumer": KIP-848's protocol (Kafka >= 4.0 brokers): the broker assigns, only moved
    #: partitions are revoked, and the broker sets the session timeout and heartbeat
    #: (group.consumer.session.timeout.ms, group.consumer.heartbeat.interval.ms, or the
    #: group's own consumer.session.timeout.ms). "classic": the protocol older brokers speak,
    #: with the cooperative-sticky assignor, so it is incremental too; the client sets the
    #: session timeout and heartbeat below. "auto": "consumer" where the broker offers it
    #: (its ApiVersions list ConsumerGroupHeartbeat v1+), else "classic"; the worker asks
    #: the broker at start and logs which and why (``kafka.group_protocol``).
    group_protocol: Literal["auto", "consumer", "classic"] = "auto"
    #: Static membership (group.instance.id): a worker that restarts under the same id
    #: within the session timeout gets its partitions back with no rebalance. Each worker of
    #: the group needs its own; unset: a new member on every start.
    instance_id: str | None = Field(default=None, min_length=1, max_length=249)
    #: Classic protocol only (None: 10 s): how long the group waits for a silent worker (a
    #: SIGKILL, a lost host) before handing its partitions to others. Shorter notices a dead
    #: worker sooner; a GC pause or network blip longer than it costs a needless rebalance.
    session_timeout_s: float | None = Field(default=None, gt=0)
    #: Classic protocol only (None: 2 s); below session_timeout_s.
    heartbeat_interval_s: float | None = Field(default=None, gt=0)
    #: A worker that does not poll for this long leaves the group (both protocols): its
    #: partitions go to the others.
    max_poll_interval_s: float = Field(default=300.0, gt=0)
    data_dir: Path = Path(".dyno/data")
    batch_size: int = Field(default=10_000, ge=1, le=100_000)
    #: How long the loop waits for an event before doing its scheduled work.
    batch_timeout_s: float = Field(default=0.1, gt=0)
    #: Once a batch has its first event, how long it waits for more (up to batch_size; a
    #: backlog fills it at once). 0: it takes only what has arrived. A few milliseconds
    #: make fewer, larger batches under a moderate load: less work per op (each batch writes
    #: each partition's store once and publishes each changed item once).
    batch_linger_s: float = Field(default=0.0, ge=0, le=1)
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
    #: MiB that every partition store of the worker keeps in memory together: the item-state
    #: caches (60%) and LevelDB's block caches, write buffers and table caches (40%), divided
    #: among the partitions it holds (``dyno_stream.store.budget``). The process needs a
    #: fixed overhead on top (Python, the libraries, librdkafka's queues, a batch in flight).
    memory_mb: int = Field(default=512, ge=16)
    #: How long to wait for snapshot acknowledgements before giving up the batch.
    publish_timeout_s: float = Field(default=60.0, gt=0)
    #: How often acknowledged offsets are committed to Kafka (Kafka Streams'
    #: commit.interval.ms). Only lag tools read them: the store holds the offsets that count,
    #: and a commit per batch cost the broker as much work as the batch's snapshots.
    commit_interval_s: float = Field(default=1.0, ge=0)
    #: HTTP endpoint for /metrics, /healthz and item reads; port 0 turns it off.
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=9464, ge=0, le=65535)
    #: Where clients reach this worker's HTTP endpoint (host:port), told to the group in
    #: the consumer's client.id (``kafka.members``) so any client finds an item's worker.
    #: None: the bound address, with this machine's hostname when bound to 0.0.0.0.
    advertised_http: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")
    #: When set, /items and /rows answer only requests bearing ``Authorization: Bearer
    #: <token>`` (/metrics and /healthz stay open); clients send it from the same setting.
    http_token: SecretStr | None = None
    #: The longest a read waits (for ``?after=``, a moving partition), and the longest a
    #: client's ``get`` tries before it gives up.
    read_timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: Reads served at once; more are answered 503 with Retry-After (each waits on a thread).
    http_max_reads: int = Field(default=32, ge=1, le=1024)
    #: The most items one ``GET /items?limit=`` page holds.
    http_max_page: int = Field(default=1000, ge=1, le=100_000)
    log_format: Literal["json", "text"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: Members of the group this worker runs, each a child process of its own (one Python
    #: process uses one core: the interpreter's lock). "auto": one per core this process may
    #: run on. 1: the worker runs in this process, with no supervisor.
    processes: int | Literal["auto"] = 1

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @property
    def http_token_text(self) -> str | None:
        """``http_token`` unwrapped: what the endpoint compares and what clients send."""
        return None if self.http_token is None else self.http_token.get_secret_value()

    @field_validator("processes", mode="before")
    @classmethod
    def _processes(cls, v: Any) -> int | str:
        # one message for both forms (a union's error lists each member's complaint)
        if v == "auto":
            return "auto"
        try:
            n = int(v) if not isinstance(v, bool | float) else None
        except (TypeError, ValueError):
            n = None
        if n is None or not 1 <= n <= MAX_WORKER_PROCESSES:
            raise ValueError(
                f"{v!r} is neither a number of processes from 1 to {MAX_WORKER_PROCESSES} "
                "nor 'auto'"
            )
        return n

    @model_validator(mode="after")
    def _publish_wait_fits_the_poll_interval(self) -> WorkerSettings:
        # The loop waits up to publish_timeout_s for acknowledgements without polling (a
        # revoke, an idle moment, a compaction pass): past max.poll.interval.ms the group
        # would drop the worker. Half of it leaves room for the batch around the wait.
        if self.publish_timeout_s > self.max_poll_interval_s / 2:
            raise ValueError(
                f"worker.publish_timeout_s ({self.publish_timeout_s}) must be at most half of "
                f"worker.max_poll_interval_s ({self.max_poll_interval_s}): the worker waits "
                "that long for Kafka's acknowledgements between two polls"
            )
        return self

    @model_validator(mode="after")
    def _group_timing_fits_the_protocol(self) -> WorkerSettings:
        if self.group_protocol != "classic":
            # under "auto" too: a timing that holds only if the broker turns out old would
            # be silently ignored on a new one
            for name in ("session_timeout_s", "heartbeat_interval_s"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"worker.{name} applies to group_protocol='classic' only (it is "
                        f"{self.group_protocol!r}): under 'consumer' (KIP-848) the broker "
                        f"sets it (group.consumer.{_BROKER_NAME[name]}, or the group's own "
                        f"consumer.{_BROKER_NAME[name]} via kafka-configs --entity-type "
                        "groups); set worker.group_protocol = 'classic' to set it here"
                    )
            return self
        session = self.classic_session_timeout_s
        heartbeat = self.classic_heartbeat_interval_s
        if heartbeat >= session:
            raise ValueError(
                f"worker.heartbeat_interval_s ({heartbeat}) must be below "
                f"worker.session_timeout_s ({session})"
            )
        if self.max_poll_interval_s < session:
            raise ValueError(
                f"worker.max_poll_interval_s ({self.max_poll_interval_s}) must be at least "
                f"worker.session_timeout_s ({session}) (librdkafka refuses less)"
            )
        return self

    @property
    def classic_session_timeout_s(self) -> float:
        return (
            CLASSIC_SESSION_TIMEOUT_S if self.session_timeout_s is None else self.session_timeout_s
        )

    @property
    def classic_heartbeat_interval_s(self) -> float:
        if self.heartbeat_interval_s is not None:
            return self.heartbeat_interval_s
        # a short explicit session keeps the heartbeat below it
        return min(CLASSIC_HEARTBEAT_INTERVAL_S, self.classic_session_timeout_s / 3)


_BROKER_NAME = {
    "session_timeout_s": "session.timeout.ms",
    "heartbeat_interval_s": "heartbeat.interval.ms",
}


class CompactionSettings(_Section):
    """Which items a compaction pass flattens, and when workers compact on their own."""

    #: Only items with at least this many rows.
    min_rows: int = Field(default=10, ge=2)
    #: Only rows older than this many seconds are folded (ops may arrive this late).
    lateness_s: float = Field(default=3600.0, ge=0)
    #: Ops stay unfolded at least this many seconds, so an item's state at any time within
    #: it can be read (``get --as-of``, ``history``); beside the lateness, the longer wins.
    keep_history_s: float = Field(default=0.0, ge=0)
    #: Only items whose name starts with this.
    prefix: str = ""
    #: At most this many items per pass (the longest histories first).
    max_items: int | None = Field(default=None, ge=1)
    #: An online pass deletes items not changed for this many seconds (0: never): a delItem
    #: through the ops topic that the worker applies only if the item is unchanged since.
    expire_after_s: float = Field(default=0.0, ge=0)
    #: How long an online pass waits for the workers to confirm its commands.
    wait_s: float = Field(default=60.0, ge=0)
    #: Workers compact their own partitions every this many seconds (0: never) ...
    interval_s: float = Field(default=0.0, ge=0)
    #: ... or on this cron schedule (e.g. "0 3 * * *"); takes precedence over interval_s.
    cron: str | None = None

    @property
    def fold_after_s(self) -> float:
        """How old a row must be to fold: the lateness, or the history kept if longer."""
        return max(self.lateness_s, self.keep_history_s)

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

    @model_validator(mode="after")
    def _extra_leaves_the_group_to_the_worker(self) -> Settings:
        owned = sorted(set(self.kafka.extra) & set(WORKER_GROUP_PROPERTIES))
        if owned:
            raise ValueError(
                f"kafka.extra sets {', '.join(owned)}: the [worker] section owns the group's "
                "protocol and timing (group_protocol, instance_id, session_timeout_s, "
                "heartbeat_interval_s, max_poll_interval_s; the assignor is cooperative-sticky "
                "under 'classic', the broker's under 'consumer')"
            )
        return self

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
        lines = [_error_line(e) for e in exc.errors(include_url=False)]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def _error_line(error: Any) -> str:
    """``section.name: message``; a check across settings names them in its own message."""
    msg = str(error["msg"]).removeprefix("Value error, ")
    where = ".".join(str(p) for p in error["loc"])
    return msg if not where or msg.startswith(f"{where}.") else f"{where}: {msg}"
