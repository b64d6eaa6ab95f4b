"""The local Kafka broker: a real Apache Kafka broker run with ``java`` from Maven Central jars.

It holds the launcher (:class:`LocalBroker`, a single-node KRaft broker in a home directory,
with optional SCRAM and TLS listeners), the jar cache it runs from (:func:`ensure_jars`, fed
by the poms beside this file: ``pom.xml`` pins the default :data:`KAFKA_VERSION`, 4.x;
``pom-3.xml`` the 3.x line), the log4j config it starts with, and :func:`bootstrap_reachable`
to ask whether a cluster answers. It is a development fixture for the demo, the tests, the
benchmarks and ``dyno-stream broker``: nothing at runtime (worker, client, store) may import it.
"""

from dyno_stream.devtools.broker.jars import (
    KAFKA_VERSION,
    default_cache_root,
    ensure_jars,
    kafka_version,
)
from dyno_stream.devtools.broker.local import DEFAULT_HEAP, DEFAULT_PORT, BrokerStatus, LocalBroker
from dyno_stream.devtools.broker.ports import free_port, free_port_pair
from dyno_stream.devtools.broker.processes import bootstrap_reachable
from dyno_stream.devtools.broker.security import BrokerTls, ScramUser
from dyno_stream.devtools.broker.server_config import FAST_GROUP_TIMING, GROUP_TIMING

__all__ = [
    "DEFAULT_HEAP",
    "DEFAULT_PORT",
    "FAST_GROUP_TIMING",
    "GROUP_TIMING",
    "KAFKA_VERSION",
    "BrokerStatus",
    "BrokerTls",
    "LocalBroker",
    "ScramUser",
    "bootstrap_reachable",
    "default_cache_root",
    "ensure_jars",
    "free_port",
    "free_port_pair",
    "kafka_version",
]
