"""Settings: one frozen, validated object, from a TOML file and the environment.

Precedence (highest first): arguments in code, environment variables (``DYNO_`` prefix,
``__`` between levels, e.g. ``DYNO_KAFKA__BOOTSTRAP_SERVERS``), the TOML file
(``$DYNO_CONFIG``, else ``config/dyno-stream.toml`` when it exists), then the models' defaults.

``KafkaSettings`` maps onto librdkafka's own configuration names (``librdkafka()``), so
anything librdkafka accepts (SASL, TLS, timeouts) can be set through ``kafka.extra`` without
this package knowing of it. Secrets are ``SecretStr``: they never appear in a repr or a log.

The models and their loading are in ``settings``; the Kafka clients' configurations made
from them in ``clients``.
"""

from dyno_stream.config.clients import (
    ADVERTISED_SEP,
    GroupProtocol,
    advertised_http,
    consumer_config,
    producer_config,
    worker_processes,
)
from dyno_stream.config.settings import (
    CLASSIC_HEARTBEAT_INTERVAL_S,
    CLASSIC_ONLY_PROPERTIES,
    CLASSIC_SESSION_TIMEOUT_S,
    DEFAULT_CONFIG_FILE,
    LIBRDKAFKA_PARTITIONER,
    MAX_MESSAGE_BYTES,
    MAX_PARSE_DEPTH,
    MAX_WORKER_PROCESSES,
    WORKER_GROUP_PROPERTIES,
    CompactionSettings,
    KafkaSettings,
    Partitioner,
    Settings,
    TopicSettings,
    WorkerSettings,
    config_file,
    load_settings,
)

__all__ = [
    "ADVERTISED_SEP",
    "CLASSIC_HEARTBEAT_INTERVAL_S",
    "CLASSIC_ONLY_PROPERTIES",
    "CLASSIC_SESSION_TIMEOUT_S",
    "DEFAULT_CONFIG_FILE",
    "LIBRDKAFKA_PARTITIONER",
    "MAX_MESSAGE_BYTES",
    "MAX_PARSE_DEPTH",
    "MAX_WORKER_PROCESSES",
    "WORKER_GROUP_PROPERTIES",
    "CompactionSettings",
    "GroupProtocol",
    "KafkaSettings",
    "Partitioner",
    "Settings",
    "TopicSettings",
    "WorkerSettings",
    "advertised_http",
    "config_file",
    "consumer_config",
    "load_settings",
    "producer_config",
    "worker_processes",
]
