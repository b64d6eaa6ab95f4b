"""A worker whose broker goes away says so in a few lines, on /healthz and in a gauge.

Before: a worker wrote librdkafka's ``%3|...|FAIL|... Connection refused`` lines about 20
times a second into its log for as long as the broker was away.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from helpers import WorkerProcess, free_port_pair, wait_until

from dyno_stream.client.http import http_get
from dyno_stream.config import Settings
from dyno_stream.devtools.broker import LocalBroker
from dyno_stream.kafka.topics import ensure_topics


def _outage_lines(text: str) -> list[str]:
    """The worker's log lines about Kafka being away (ours and librdkafka's)."""
    about = re.compile(
        r"unreachable|answers again|librdkafka|Connect|refused|brokers? (are|is) down|"
        r"publishing again|pausing every partition",
        re.IGNORECASE,
    )
    return [line for line in text.splitlines() if about.search(line)]


def _metric(url: str, name: str) -> float:
    status, body, _ = http_get(f"{url}/metrics", timeout=5)
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_worker_says_an_outage_in_a_few_lines_and_on_healthz(
    make_settings: Callable[..., Settings], own_broker: LocalBroker, tmp_path: Path
) -> None:
    base = make_settings(partitions=2)
    s = base.model_copy(
        update={"kafka": base.kafka.model_copy(update={"bootstrap_servers": own_broker.bootstrap})}
    )
    ensure_topics(s)
    http_port = free_port_pair()
    url = f"http://127.0.0.1:{http_port}"
    w = WorkerProcess(s, "w", tmp_path, env={"DYNO_WORKER__HTTP_PORT": str(http_port)})
    try:
        wait_until(lambda: "started" in w.text(), 120, w.tail)
        assert _metric(url, "dyno_kafka_connected") == 1
        before = len(_outage_lines(w.text()))
        went_down = time.monotonic()
        assert own_broker.stop(), "the broker was not running"

        def healthz() -> dict[str, object]:
            try:
                status, body, _ = http_get(f"{url}/healthz", timeout=5)
            except OSError as exc:  # the worker's endpoint gone: say how the worker ended
                raise AssertionError(f"{exc}; alive: {w.alive()}\n{w.tail()}") from exc
            assert status == 200, body  # a worker riding out an outage is not restarted
            answer: dict[str, object] = json.loads(body)
            return answer

        wait_until(lambda: healthz()["status"] == "degraded", 30, w.tail)
        reason = str(healthz()["reason"])
        assert f"Kafka at {own_broker.bootstrap} unreachable" in reason, reason
        assert _metric(url, "dyno_kafka_connected") == 0
        time.sleep(max(0.0, 20 - (time.monotonic() - went_down)))
        own_broker.start(timeout=180)
        wait_until(lambda: healthz()["status"] == "ok", 60, w.tail)
        assert _metric(url, "dyno_kafka_connected") == 1
        assert w.alive(), w.tail()
        lines = _outage_lines(w.text())[before:]
        print(f"outage of {time.monotonic() - went_down:.0f} s: {len(lines)} lines about it")
        assert len(lines) < 10, "\n".join(lines)
        assert any("is unreachable" in line for line in lines), "\n".join(lines)
        back = [line for line in lines if "answers again after" in line]
        assert len(back) == 1, "\n".join(lines)
        assert int(re.search(r"after (\d+) s", back[0]).group(1)) >= 15, back  # type: ignore[union-attr]
        assert "%3|" not in w.text()
    finally:
        w.cleanup()
