"""The doctor's checks of the group's members: each reachable at its advertised address
(``/healthz``), and the ops they forwarded because a producer placed them by another rule."""

from __future__ import annotations

import json
import re
from collections import Counter

from confluent_kafka import KafkaException

from dyno_stream.client.http import http_get
from dyno_stream.config import LIBRDKAFKA_PARTITIONER
from dyno_stream.jobs.doctor_exam import Examination
from dyno_stream.kafka.members import member_address

#: A member's count of forwarded ops on its /metrics, by the partitioner that placed them.
_FORWARDED = re.compile(r'^dyno_events_forwarded_total\{partitioner="([^"]*)"\} (\S+)$', re.M)


def members(d: Examination) -> None:
    """Each member of the group reachable at the address it advertises (its ``/healthz``)."""
    group = d.s.worker.group_id
    try:
        [fut] = d.admin.describe_consumer_groups([group], request_timeout=d.timeout).values()
        described = fut.result()
    except KafkaException as exc:
        d.add("members", "fail", f"cannot describe group {group}: {exc}")
        return
    members = list(described.members)
    if not members:
        d.add(
            "members",
            "warn",
            f"group {group} has no members ({described.state}): no worker applies ops",
            "start the workers (with worker.group_id = " + repr(group) + ")",
        )
        return
    reached: list[str] = []
    unreachable: list[str] = []
    silent: list[str] = []
    for m in members:
        address = member_address(m.client_id)
        if address is None:
            silent.append(m.client_id)
            continue
        ok, what = _healthz(address, d.http_timeout)
        (reached if ok else unreachable).append(f"{address} ({what})")
        if ok:
            d._reached.append(address)
    detail = f"group {group}: members {len(members)}"
    if reached:
        detail += "; reached " + ", ".join(reached)
    if unreachable:
        d.add(
            "members",
            "fail",
            f"{detail}; not reachable from here: {', '.join(unreachable)}",
            "each worker's worker.advertised_http (DYNO_WORKER__ADVERTISED_HTTP) must be "
            "a host:port that clients and the other workers reach; routed reads to its "
            "partitions fail until it is",
        )
    elif silent:
        d.add(
            "members",
            "warn",
            f"{detail}; advertising no HTTP address: {', '.join(silent)}",
            "set worker.http_port (not 0) and worker.advertised_http, so routed reads "
            "reach their partitions",
        )
    else:
        d.add("members", "pass", detail)


def placement(d: Examination) -> None:
    """Ops the workers forwarded to their rule partition since they started, by the
    partitioner that placed them (``dyno_events_forwarded_total`` on each member's
    ``/metrics``): producers whose partitioner is not the placement rule."""
    if not d._reached:
        return
    by: Counter[str] = Counter()
    for address in d._reached:
        try:
            code, body, _ = http_get(f"http://{address}/metrics", d.http_timeout)
        except (OSError, ValueError):
            continue
        if code != 200:
            continue
        text = body.decode(errors="replace")
        for m in _FORWARDED.finditer(text):
            by[m.group(1)] += int(float(m.group(2)))
    rule = d.s.kafka.partitioner
    if not sum(by.values()):
        d.add("placement", "pass", f"no op forwarded: producers place by {rule}")
        return
    counts = ", ".join(f"{k} {n:,}" for k, n in by.most_common())
    d.add(
        "placement",
        "warn",
        f"ops off their rule partition ({rule}), forwarded since the workers started: "
        f"placed by {counts}",
        f"set those producers' partitioner to {LIBRDKAFKA_PARTITIONER[rule]} (kcat -X "
        f"partitioner=..., confluent-kafka's 'partitioner'), or [kafka] partitioner to "
        "theirs if every producer uses it; each forward costs a second trip through Kafka",
    )


def _healthz(address: str, timeout: float) -> tuple[bool, str]:
    try:
        code, body, _ = http_get(f"http://{address}/healthz", timeout)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, str(reason)
    if code == 200:
        return True, f"healthz {code}"
    try:  # it answers: starting, stalled, refusing
        status = json.loads(body).get("status", "?")
    except (ValueError, AttributeError):
        status = "?"
    return True, f"healthz {code} {status}"


# -- dead letters -------------------------------------------------------------------------
