"""``dyno-stream worker`` processes: started, scraped at /metrics, timed until applied, stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dyno_stream.cli.demo import settings_env, start_worker
from dyno_stream.client.http import http_get
from dyno_stream.config import Settings

__all__ = [
    "Launch",
    "Started",
    "launch_worker",
    "metrics",
    "spawn_worker",
    "start_worker",
    "stop",
    "summed",
    "time_until_applied",
    "wait_metrics",
]


@dataclass
class Started:
    """What a ``Launch`` started: its processes (whose CPU time the benchmark reads), and,
    called, their stop."""

    procs: list[subprocess.Popen[bytes]]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def __call__(self) -> None:
        for proc in self.procs:
            stop(proc)


#: Starts the system under test on these settings (its output is ``s.topics.snapshots``),
#: waits until it is ready, and returns what it started.
Launch = Callable[[Settings, Path], Started]


def metrics(url: str) -> dict[str, float]:
    """A worker's /metrics, each metric summed over its labels."""
    code, body, _ = http_get(url + "/metrics", timeout=2)
    if code != 200:  # an OSError: the waiters take it as a worker not answering yet
        raise OSError(f"{url}/metrics answered {code}: {body[:200]!r}")
    text = body.decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        base = key.split("{")[0]
        out[base] = out.get(base, 0.0) + float(value)
    return out


def summed(ms: list[dict[str, float]]) -> dict[str, float]:
    """Several workers' metrics, added up."""
    out: dict[str, float] = {}
    for m in ms:
        for k, v in m.items():
            out[k] = out.get(k, 0.0) + v
    return out


def wait_metrics(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Wait until the worker answers at /metrics; exit loudly if it died or never did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited with {proc.returncode}")
        try:
            metrics(url)
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("worker did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited in 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def spawn_worker(
    s: Settings, log: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A ``dyno-stream worker`` process on ``s`` with ``extra_env`` on top (settings it has no
    field for here, such as ``DYNO_WORKER__PROCESSES``), its output appended to ``log``."""
    env = {**os.environ, **settings_env(s), **(extra_env or {})}
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "dyno_stream", "worker"], env=env, stdout=fh, stderr=fh
        )


def launch_worker(s: Settings, tmp: Path) -> Started:
    """A ``Launch`` of one ``dyno-stream worker`` process."""
    proc = start_worker(s, tmp / "lat-worker.log")
    try:
        wait_metrics(f"http://127.0.0.1:{s.worker.http_port}", proc)
    except BaseException:
        stop(proc)
        raise
    return Started([proc])


def time_until_applied(
    urls: list[str], procs: list[subprocess.Popen[bytes]], n: int, timeout: float = 600
) -> tuple[float, float, dict[str, float]]:
    """Watch workers' /metrics until ``n`` ops are applied and their snapshots acknowledged.

    Returns the moment the first event was consumed, the moment all were done, and the
    workers' metrics summed. Done is every op applied and no batch in flight: every
    snapshot acknowledged by Kafka, the end of the whole pipeline.
    """
    t0 = None
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"worker exited with {proc.returncode}")
        m = summed([metrics(u) for u in urls])
        if t0 is None and m.get("dyno_events_consumed_total", 0) > 0:
            t0 = time.monotonic()
        if m.get("dyno_ops_applied_total", 0) >= n and m.get("dyno_batches_in_flight") == 0:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"workers applied {m.get('dyno_ops_applied_total', 0):.0f} of {n}")
        time.sleep(0.02)
    t1 = time.monotonic()
    assert t0 is not None
    return t0, t1, summed([metrics(u) for u in urls])
