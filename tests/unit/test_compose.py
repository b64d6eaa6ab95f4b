"""docker-compose.yml is valid and wired as docs/operations/docker.md says (no Docker engine
runs here, so Debian's docker-compose validates and resolves the file; `make test` installs it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed: run `make test` (it installs it)")
    out = subprocess.run(
        [exe, "-f", str(REPO / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    resolved: dict[str, Any] = yaml.safe_load(out.stdout)
    return resolved


def test_services_present(compose: dict[str, Any]) -> None:
    assert {"kafka", "topics", "worker", "compactor"} <= set(compose["services"])


def test_kafka_image_pinned_and_kraft(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    image = kafka["image"]
    assert image.startswith("apache/kafka:") and not image.endswith(":latest")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "healthcheck" in kafka


def test_worker_is_scalable_and_healthchecked(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker  # a fixed name would forbid --scale
    assert "ports" not in worker  # a fixed host port would too
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in worker
    assert worker["environment"]["DYNO_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_topics_step_waits_for_a_healthy_broker(compose: dict[str, Any]) -> None:
    topics = compose["services"]["topics"]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert topics["command"] == ["topics"]


def test_compactor_runs_compact_every_hour_and_outlives_a_failed_pass(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """The compactor's entrypoint, run as written, with stand-ins for ``sleep`` and
    ``dyno-stream`` (no container here): one pass after each hour's sleep, for ever, and a
    failed pass does not end the loop."""
    compactor = compose["services"]["compactor"]
    assert compactor["environment"]["DYNO_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # the fourth sleep ends the loop (kills the shell that runs it)
    (bin_dir / "sleep").write_text(
        f'#!/bin/sh\necho "sleep $*" >> {calls}\n'
        f'[ "$(grep -c ^sleep {calls})" -ge 4 ] && kill -9 $PPID\nexit 0\n'
    )
    # the second pass fails
    (bin_dir / "dyno-stream").write_text(
        f'#!/bin/sh\necho "dyno-stream $*" >> {calls}\n'
        f'[ "$(grep -c ^dyno-stream {calls})" -ne 2 ]\n'
    )
    for stand_in in bin_dir.iterdir():
        stand_in.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    proc = subprocess.run(
        compactor["entrypoint"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == -9, (proc.returncode, proc.stdout, proc.stderr)
    assert calls.read_text().splitlines() == [
        "sleep 3600",
        "dyno-stream compact",
        "sleep 3600",
        "dyno-stream compact",
        "sleep 3600",
        "dyno-stream compact",
        "sleep 3600",
    ]
    assert "compaction failed" in proc.stdout  # the failed pass is reported
