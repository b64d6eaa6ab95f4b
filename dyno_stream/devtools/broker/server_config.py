"""The local broker's ``server.properties``: one node on loopback, tuned for tests.

A pure rendering, kept apart from the launcher so what the broker is told stays readable in
one place. The text is also what a start compares against the running broker's file, to
refuse handing out a broker that runs with other listeners than asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from dyno_stream.devtools.broker.processes import LOOPBACK_HOST

_NODE_ID: Final = 1
_HEADER: Final = (
    "# Written by dyno_stream.devtools.broker on every start; edits here are overwritten.\n"
)

#: What every start sets the same way: a single node's replication, and timings for tests
#: (the group timing apart: ``GROUP_TIMING``).
_ONE_NODE: Final[dict[str, str]] = {
    # One node: every internal topic must make do with one replica.
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    # The worker creates its topics explicitly (partitions, compaction); a typo in a
    # topic name must fail loudly instead of silently creating a new topic.
    "auto.create.topics.enable": "false",
    # Fast for tests: consumer groups rebalance at once instead of waiting 3 s, and
    # the internal topics created on first use have 4 partitions instead of 50, which
    # makes the first consumer group (and first transaction) markedly quicker.
    "group.initial.rebalance.delay.ms": "0",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.num.partitions": "4",
    # The log cleaner (compacted topics) reserves 128 MB of heap by default: a quarter of
    # our small heap. 16 MB compacts test-sized topics just as well.
    "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
}


#: Fast failover under KIP-848's protocol, where the broker, not the client, sets a member's
#: session and heartbeat: a SIGKILLed worker's partitions move after 10 s (Kafka's default
#: 45 s). The minimums let one group go lower on its own (the group config
#: consumer.session.timeout.ms, down to 6 s, the classic protocol's floor).
GROUP_TIMING: Final[Mapping[str, str]] = {
    "group.consumer.session.timeout.ms": "10000",
    "group.consumer.min.session.timeout.ms": "6000",
    "group.consumer.heartbeat.interval.ms": "1000",
    "group.consumer.min.heartbeat.interval.ms": "500",
}

#: Group timing for a test broker, where a member that dies is waited for and every
#: rebalance is paced by heartbeats: a KIP-848 member's session ends 3 s after its last
#: heartbeat (not 10 s), heartbeats every 250 ms carry assignment changes (not every 1 s),
#: and a group may set its own session as low as 1 s under either protocol
#: (``group.min.session.timeout.ms`` is the classic protocol's floor, 6 s by default).
FAST_GROUP_TIMING: Final[Mapping[str, str]] = {
    "group.consumer.session.timeout.ms": "3000",
    "group.consumer.min.session.timeout.ms": "1000",
    "group.consumer.heartbeat.interval.ms": "250",
    "group.consumer.min.heartbeat.interval.ms": "100",
    "group.min.session.timeout.ms": "1000",
}


def render_server_properties(
    *,
    listeners: Sequence[tuple[str, int]],
    controller_port: int,
    data_dir: Path,
    security: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
) -> str:
    """server.properties for a single-node combined broker+controller on loopback.

    ``listeners`` are the client listeners (name = security protocol, PLAINTEXT first, which
    the broker also uses for itself), ``security`` the settings of the secured ones,
    ``overrides`` settings that replace or add to the ones below (a test broker's timing).
    """
    props = {
        "process.roles": "broker,controller",
        "node.id": str(_NODE_ID),
        # Static voters: storage must then be formatted without --standalone.
        "controller.quorum.voters": f"{_NODE_ID}@{LOOPBACK_HOST}:{controller_port}",
        "listeners": ",".join(
            [
                *(f"{name}://{LOOPBACK_HOST}:{port}" for name, port in listeners),
                f"CONTROLLER://{LOOPBACK_HOST}:{controller_port}",
            ]
        ),
        "advertised.listeners": ",".join(
            f"{name}://{LOOPBACK_HOST}:{port}" for name, port in listeners
        ),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": ",".join(
            ["CONTROLLER:PLAINTEXT", *(f"{name}:{name}" for name, _ in listeners)]
        ),
        "log.dirs": str(data_dir),
        **_ONE_NODE,
        **GROUP_TIMING,
    }
    props.update(security)
    props.update(overrides or {})
    return _HEADER + "".join(f"{key}={value}\n" for key, value in props.items())
