"""docker-compose.yml is valid and wired as the README says (no Docker engine runs here, so
Debian's docker-compose validates and resolves the file; `make test` installs it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed: run `make test` (it installs it)")
    out = subprocess.run(
        [exe, "-f", str(ROOT / "docker-compose.yml"), "config"],
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


def test_compactor_runs_compact_on_a_schedule(compose: dict[str, Any]) -> None:
    compactor = compose["services"]["compactor"]
    script = " ".join(compactor["entrypoint"])
    assert "dyno-stream compact" in script and "sleep" in script
    assert compactor["environment"]["DYNO_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
