"""What the parent serves for the whole worker: its own figures beside the children's summed
metrics, and one ``/healthz`` made of each child's."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dyno_stream.client.http import http_get

#: How long a /healthz, /items or /rows request of the parent waits for each child (beyond
#: ``read_timeout_s``, for reads, which a child may wait that long to answer).
CHILD_HTTP_TIMEOUT_S = 2.0


class ChildView(Protocol):
    """What the aggregates read of one child (the supervisor's record of it)."""

    index: int
    pid: int | None
    restarts: int
    http: str | None
    restart_at: float | None

    @property
    def alive(self) -> bool: ...


class Supervised(Protocol):
    """What the aggregates read of the supervisor."""

    @property
    def children(self) -> Sequence[ChildView]: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def count(self) -> int: ...


@dataclass
class RegistryView:
    """The parent's registry, in the shape the HTTP endpoint serves."""

    registry: CollectorRegistry


class SupervisorCollector(Collector):
    """The parent's own figures: children running, and restarts per child."""

    def __init__(self, supervisor: Supervised) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterable[Metric]:
        children = self.supervisor.children
        running = GaugeMetricFamily(
            "dyno_worker_processes_running", "Member processes of this worker running now"
        )
        running.add_metric([], sum(1 for c in children if c.alive))
        restarts = CounterMetricFamily(
            "dyno_worker_process_restarts",
            "Member processes started again after they exited",
            labels=["child"],
        )
        for c in children:
            restarts.add_metric([str(c.index)], c.restarts)
        return [running, restarts]


class ChildrenHealth:
    """The parent's ``/healthz``: each child's own, and one answer for the whole worker
    (200 when every child answers ok)."""

    def __init__(self, supervisor: Supervised) -> None:
        self.supervisor = supervisor

    def snapshot(self) -> tuple[bool, dict[str, Any]]:
        sup = self.supervisor
        children: list[dict[str, Any]] = []
        partitions: set[str] = set()
        states: dict[str, str] = {}
        for child in list(sup.children):
            entry: dict[str, Any] = {
                "child": child.index,
                "pid": child.pid if child.alive else None,
                "restarts": child.restarts,
                "http": child.http,
            }
            if child.alive and child.http is not None:
                try:
                    _code, body, _ = http_get(f"{child.http}/healthz", timeout=CHILD_HTTP_TIMEOUT_S)
                    answer: dict[str, Any] = json.loads(body)
                except (OSError, ValueError) as exc:
                    answer = {"status": "unreachable", "reason": str(exc)}
                entry.update(answer)
                partitions.update(answer.get("partitions", []))
                states.update(answer.get("partition_states", {}))
            else:
                entry["status"] = (
                    "restarting"
                    if child.restart_at is not None
                    else "starting"
                    if child.alive
                    else "stopped"
                )
            children.append(entry)
        ok = not sup.stopping and all(c["status"] == "ok" for c in children)
        if ok:
            status = "ok"
        elif sup.stopping:
            status = "stopping"
        elif all(c["status"] in ("ok", "starting") for c in children):
            status = "starting"
        else:  # a child restarting, stalled, refusing or not answering
            status = "degraded"
        return ok, {
            "status": status,
            "processes": sup.count,
            "partitions": sorted(partitions),
            "partition_states": dict(sorted(states.items())),
            "children": children,
        }
