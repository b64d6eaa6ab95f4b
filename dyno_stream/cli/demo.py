"""The seed's example, end to end through Kafka: what ``make demo`` runs.

It starts the local broker, starts a worker in its own process (as a deployment would), sends
level-dyno's example ops through Kafka with the client, reads the snapshot the worker
published, flattens the item with a flatten command, and shows the LevelDB rows before and
after. A bad event shows the dead-letter topic at work.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from rich.console import Console
from rich.panel import Panel

from dyno_stream.client.http import http_get
from dyno_stream.client.producer import DynoClient
from dyno_stream.config import Settings, load_settings, producer_config
from dyno_stream.core.deadletter import H_MESSAGE, H_REASON
from dyno_stream.core.errors import ConfigError, DynoError
from dyno_stream.devtools.broker import LocalBroker
from dyno_stream.kafka.reading import topic_reader
from dyno_stream.kafka.topics import delete_topics, ensure_topics

#: The demo worker's HTTP port: not the default 9464, which a worker of one's own may hold.
#: ``DYNO_DEMO_HTTP_PORT`` picks another (the tests do, so that runs side by side never clash).
DEMO_HTTP_PORT = 9474


def demo_http_port() -> int:
    env = os.environ.get("DYNO_DEMO_HTTP_PORT")
    if not env:
        return DEMO_HTTP_PORT
    try:
        return int(env)
    except ValueError:
        raise ConfigError(f"DYNO_DEMO_HTTP_PORT must be a port number, not {env!r}") from None


def demo_settings(bootstrap: str, data_dir: Path) -> Settings:
    base = load_settings()
    return base.model_copy(
        update={
            "kafka": base.kafka.model_copy(update={"bootstrap_servers": bootstrap}),
            "topics": base.topics.model_copy(
                update={
                    "ops": "dyno-demo.ops",
                    "snapshots": "dyno-demo.snapshots",
                    "dead_letter": "dyno-demo.dead-letter",
                    "partitions": 1,
                }
            ),
            "worker": base.worker.model_copy(
                update={
                    "group_id": "dyno-demo",
                    "data_dir": data_dir,
                    "http_port": demo_http_port(),
                }
            ),
        }
    )


def settings_env(s: Settings) -> dict[str, str]:
    """The settings as DYNO_* variables, for a worker in another process."""
    return {
        "DYNO_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
        "DYNO_TOPICS__OPS": s.topics.ops,
        "DYNO_TOPICS__SNAPSHOTS": s.topics.snapshots,
        "DYNO_TOPICS__DEAD_LETTER": s.topics.dead_letter,
        "DYNO_TOPICS__PARTITIONS": str(s.topics.partitions),
        "DYNO_WORKER__GROUP_ID": s.worker.group_id,
        "DYNO_WORKER__DATA_DIR": str(s.worker.data_dir),
        "DYNO_WORKER__HTTP_PORT": str(s.worker.http_port),
        "DYNO_WORKER__HTTP_HOST": s.worker.http_host,
        "DYNO_WORKER__LOG_LEVEL": s.worker.log_level,
        "DYNO_WORKER__GROUP_PROTOCOL": s.worker.group_protocol,
        "DYNO_WORKER__MAX_POLL_INTERVAL_S": str(s.worker.max_poll_interval_s),
        **{
            f"DYNO_WORKER__{name.upper()}": str(value)
            for name in ("instance_id", "session_timeout_s", "heartbeat_interval_s")
            if (value := getattr(s.worker, name)) is not None
        },
    }


class TopicReader:
    """Reads a topic from the beginning, for the demo."""

    def __init__(self, s: Settings, topic: str) -> None:
        self.consumer = topic_reader(s, "demo")
        self.consumer.subscribe([topic])

    def wait_for(self, pred: Callable[[Any], bool], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            if pred(msg):
                return msg
        raise DynoError(f"nothing matching arrived within {timeout}s")

    def close(self) -> None:
        self.consumer.close()


def wait_healthy(
    base_url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DynoError(
                f"the worker exited ({proc.returncode}); see {log}:\n" + log.read_text()[-2000:]
            )
        try:
            code, body, _ = http_get(base_url + "/healthz", timeout=2)
            if code == 200 and json.loads(body)["partitions"]:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise DynoError(f"the worker did not become healthy within {timeout}s; see {log}")


def start_worker(s: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings_env(s)}
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "dyno_stream", "worker"],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def run_demo(out: Console, keep_broker: bool = False) -> None:
    broker = LocalBroker()
    was_running = broker.is_running()
    out.rule("1. the local Kafka broker")
    bootstrap = broker.start()
    out.print(f"Kafka {'(already running) ' if was_running else ''}at {bootstrap}")
    data_dir = Path(".dyno/demo")
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    s = demo_settings(bootstrap, data_dir / "data")
    delete_topics(s, [s.topics.ops, s.topics.snapshots, s.topics.dead_letter])
    ensure_topics(s)
    log = data_dir / "worker.log"
    out.rule("2. a worker")
    proc = start_worker(s, log)
    try:
        _seed_example(out, s, proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if not (keep_broker or was_running):
            broker.stop()
    out.rule("done")
    out.print(
        "The worker stopped cleanly."
        if proc.returncode == 0
        else f"The worker exited with {proc.returncode}; see {log}."
    )
    if keep_broker or was_running:
        out.print(f"The broker is still running at {bootstrap} (dyno-stream broker stop).")


def _seed_example(out: Console, s: Settings, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Steps 3 to 5; every Kafka client here is closed when it returns."""
    base_url = f"http://{s.worker.http_host}:{s.worker.http_port}"
    wait_healthy(base_url, proc, log)
    out.print(f"worker pid {proc.pid}, logs in {log}, metrics at {base_url}/metrics")
    snapshots = TopicReader(s, s.topics.snapshots)
    try:
        out.rule("3. the seed's example, produced to Kafka")
        with DynoClient(s) as client:
            for f in (
                client.put_item("chilts", {"nick": "chilts", "email": "me@example.com"}),
                client.del_attrs("chilts", ["email"]),
                client.put_attrs("chilts", {"name": "Andy Chilton"}),
            ):
                d = f.result(30)
                out.print(f"  {d.op:<9} chilts  ts={d.ts}  -> {d.topic}/{d.partition}@{d.offset}")
            snap = snapshots.wait_for(lambda m: json.loads(m.value())["changes"] == 3)
            _show_snapshot(out, snap.value())
            _show_rows(out, base_url)

            out.rule("4. flatten through a flatten command")
            h = json.loads(snap.value())["hash"]
            client.flatten("chilts", h).result(30)
            out.print(f"  flatten   chilts  hash={h}")
            snap = snapshots.wait_for(lambda m: json.loads(m.value())["count"] == 1)
            _show_snapshot(out, snap.value())
            _show_rows(out, base_url)
    finally:
        snapshots.close()

    out.rule("5. a bad event goes to the dead-letter topic")
    bad = b'{"item":"chilts","op":"incAttrBy","ts":"not-a-flake","change":{"field":"n"}}'
    producer = Producer(producer_config(s))  # placed by the rule, as any producer should
    producer.produce(s.topics.ops, bad, b"chilts")
    producer.flush(10)
    dlq = TopicReader(s, s.topics.dead_letter)
    try:
        letter = dlq.wait_for(lambda m: True)
    finally:
        dlq.close()
    headers = {k: v.decode() for k, v in (letter.headers() or [])}
    out.print(f"  sent:   {bad.decode()}")
    out.print(f"  reason: {headers[H_REASON]}\n  error:  {headers[H_MESSAGE]}")


def _show_snapshot(out: Console, raw: bytes) -> None:
    out.print(
        Panel(
            json.dumps(json.loads(raw), indent=2, ensure_ascii=False),
            title="snapshot published by the worker",
            expand=False,
        )
    )


def _show_rows(out: Console, base_url: str) -> None:
    body = http_get(base_url + "/items/chilts", timeout=2).body
    out.print(
        Panel(
            json.dumps(json.loads(body), indent=2, ensure_ascii=False),
            title="get chilts (the worker's store)",
            expand=False,
        )
    )
    body = http_get(base_url + "/rows", timeout=2).body
    # plain lines, not a panel: a row is never cut at the terminal's edge
    out.print("LevelDB rows in the worker's store:", style="bold")
    for line in body.decode().splitlines():
        out.print("  " + line, soft_wrap=True, markup=False, highlight=False)
