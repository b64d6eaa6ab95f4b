"""The Kafka clients' configurations made from the settings: the producer's, the consumer's
(with the group protocol in force), and where a worker's HTTP endpoint is reached."""

from __future__ import annotations

import os
import socket
from typing import Any, Literal

from dyno_stream.config.settings import (
    LIBRDKAFKA_PARTITIONER,
    MAX_MESSAGE_BYTES,
    Settings,
    WorkerSettings,
)
from dyno_stream.core.errors import ConfigError


def producer_config(settings: Settings) -> dict[str, Any]:
    """Idempotent, acks=all, and the placement rule's partitioner (``[kafka] partitioner``),
    so every client of ours places an item where the worker expects it."""
    return {
        **settings.kafka.librdkafka(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "partitioner": LIBRDKAFKA_PARTITIONER[settings.kafka.partitioner],
        # as large as the snapshot and dead-letter topics take (see topics.py)
        "message.max.bytes": MAX_MESSAGE_BYTES,
        "message.timeout.ms": int(settings.worker.publish_timeout_s * 1000),
    }


#: How long the broker holds the worker's fetch for more ops (librdkafka's default: 500).
FETCH_WAIT_MS = 5
#: What a fetch waits for before FETCH_WAIT_MS is up (librdkafka's default: 1 byte).
FETCH_MIN_BYTES = 1_000_000

#: Between a member's client.id and the HTTP address it advertises (``kafka.members``).
ADVERTISED_SEP = "@"


#: The protocols librdkafka speaks: what ``[worker] group_protocol`` becomes once resolved.
GroupProtocol = Literal["consumer", "classic"]


def consumer_config(
    settings: Settings, advertised: str | None = None, *, protocol: GroupProtocol | None = None
) -> dict[str, Any]:
    """The store keeps the offsets that matter; Kafka's committed offsets only show lag.

    ``advertised``: the worker's HTTP address, carried in its client.id as
    ``<client_id>@<host:port>``, which the group's description shows every client.
    ``protocol``: the group protocol in force, which ``group_protocol = "auto"`` needs (the
    broker decides it: ``kafka.group_protocol.resolve_group_protocol``)."""
    chosen = settings.worker.group_protocol if protocol is None else protocol
    if chosen == "auto":
        raise ConfigError(
            "worker.group_protocol is 'auto': the broker decides it; pass the protocol "
            "resolve_group_protocol() found"
        )
    conf = {
        # Larger fetches per partition than librdkafka's 1 MB: under a backlog the worker
        # waits less for its next batch (5-10% more ops/s in bench_worker.py); memory stays
        # bounded by queued.max.messages.kbytes. [kafka.extra] may set it otherwise.
        "max.partition.fetch.bytes": 10 * 1024 * 1024,
        # Under a moderate load a fetch answered at once brings the few ops produced since
        # the last one (2 at 1,000 ops/s), and each batch pays the same fixed costs: a fetch,
        # a store write and a producer wake-up per partition. Held by the broker up to
        # FETCH_WAIT_MS for more (FETCH_MIN_BYTES is not reached below a backlog), a fetch
        # brings that long's ops: CPU per op at 1,000 ops/s fell by 15-40%, for up to
        # FETCH_WAIT_MS more latency (the median at 1,000 ops/s rose 3.5 ms); a backlog still
        # fills each fetch at once. [kafka.extra] may set them otherwise.
        "fetch.wait.max.ms": FETCH_WAIT_MS,
        "fetch.min.bytes": FETCH_MIN_BYTES,
        **settings.kafka.librdkafka(),
        "group.id": settings.worker.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        **_group_config(settings.worker, chosen),
    }
    if advertised is not None:
        conf["client.id"] = f"{settings.kafka.client_id}{ADVERTISED_SEP}{advertised}"
    return conf


def _group_config(w: WorkerSettings, protocol: GroupProtocol) -> dict[str, Any]:
    """The group's protocol and timing, only what the protocol takes (librdkafka refuses a
    ``group.protocol=consumer`` consumer given any of ``CLASSIC_ONLY_PROPERTIES``)."""
    conf: dict[str, Any] = {
        "group.protocol": protocol,
        "max.poll.interval.ms": _ms(w.max_poll_interval_s),
    }
    if w.instance_id is not None:
        conf["group.instance.id"] = w.instance_id
    if protocol == "classic":
        conf["partition.assignment.strategy"] = "cooperative-sticky"
        conf["session.timeout.ms"] = _ms(w.classic_session_timeout_s)
        conf["heartbeat.interval.ms"] = _ms(w.classic_heartbeat_interval_s)
    return conf


def advertised_http(w: WorkerSettings, bound_port: int | None = None) -> str | None:
    """Where clients reach a worker's endpoint: ``advertised_http``, or the bound address
    (``bound_port`` when the port was the system's choice) with this machine's hostname in
    place of a wildcard host; None when the worker serves no HTTP."""
    if w.advertised_http is not None:
        return w.advertised_http
    port = bound_port or w.http_port
    if not port:
        return None
    host = w.http_host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"{host}:{port}"


def worker_processes(w: WorkerSettings) -> int:
    """How many member processes ``w.processes`` means here ("auto": the cores this process
    may run on, which a container or ``taskset`` can make fewer than the machine has)."""
    if w.processes != "auto":
        return w.processes
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
