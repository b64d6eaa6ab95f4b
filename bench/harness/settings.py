"""Bench settings: each with topics and a consumer group of its own, deleted at exit."""

from __future__ import annotations

import atexit
import socket
import uuid
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from dyno_stream.config import Settings, load_settings

#: (bootstrap, tag) of every ``bench_settings`` of this process: their topics go at exit
TAGS: list[tuple[str, str]] = []


def delete_bench_topics() -> None:
    """Delete the topics this run's settings named, and quixstreams' changelogs of its groups.

    Every run makes new topics; left behind, a few dozen runs kept 9 GB and 1,600 partitions
    on the local broker.
    """
    for bootstrap in {b for b, _ in TAGS}:
        tags = [f"bench-{t}" for b, t in TAGS if b == bootstrap]
        try:
            admin = AdminClient({"bootstrap.servers": bootstrap})
            doomed = [n for n in admin.list_topics(timeout=10).topics if any(t in n for t in tags)]
            for future in (
                admin.delete_topics(doomed, operation_timeout=30).values() if doomed else ()
            ):
                future.result(30)
        except KafkaException as exc:  # the broker may be gone already: say so, go on
            print(f"bench topics on {bootstrap} not deleted: {exc}")
    TAGS.clear()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def new_tag(bootstrap: str) -> str:
    """A fresh tag for topic and group names, whose topics are deleted at exit."""
    tag = uuid.uuid4().hex[:6]
    if not TAGS:
        atexit.register(delete_bench_topics)
    TAGS.append((bootstrap, tag))
    return tag


def bench_settings(
    bootstrap: str, data_dir: Path, partitions: int, http_port: int | None = None
) -> Settings:
    """The loaded settings on ``bootstrap`` with topics ``bench-TAG.*`` and group ``bench-TAG``,
    the worker's HTTP on ``http_port`` (by default a free one: others on this machine run
    workers on the usual ports)."""
    base = load_settings()
    tag = new_tag(bootstrap)
    return base.model_copy(
        update={
            "kafka": base.kafka.model_copy(update={"bootstrap_servers": bootstrap}),
            "topics": base.topics.model_copy(
                update={
                    "ops": f"bench-{tag}.ops",
                    "snapshots": f"bench-{tag}.snapshots",
                    "dead_letter": f"bench-{tag}.dead-letter",
                    "partitions": partitions,
                }
            ),
            "worker": base.worker.model_copy(
                update={
                    "group_id": f"bench-{tag}",
                    "data_dir": data_dir,
                    "http_port": free_port() if http_port is None else http_port,
                    "log_level": "WARNING",
                }
            ),
        }
    )
