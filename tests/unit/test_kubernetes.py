"""deploy/kubernetes is valid Kubernetes and wired as the README says: every manifest against
the Kubernetes schemas (``kubernetes-validate``, offline: it ships them), the worker's
settings read as dyno-stream reads them, and the parts that must agree do."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helpers import REPO

from dyno_stream.config import Settings, WorkerSettings

DEPLOY = REPO / "deploy" / "kubernetes"
#: the oldest Kubernetes release still supported upstream when this was written, and the
#: newest one kubernetes-validate ships
VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
#: the README's measured overhead of a worker above memory_mb, at the peak (bench-memory)
OVERHEAD_MIB = 303


def _manifests() -> list[Path]:
    return sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")


def _docs() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in _manifests():
        for doc in yaml.safe_load_all(path.read_text()):
            out[doc["kind"]] = doc
    return out


def _mib(quantity: str) -> float:
    m = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    assert m, f"a memory quantity in Mi or Gi: {quantity!r}"
    return int(m.group(1)) * (1024 if m.group(2) == "Gi" else 1)


def _seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)s", duration)
    assert m, f"a duration in seconds: {duration!r}"
    return float(m.group(1))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    k = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(k["resources"]) == [p.name for p in _manifests()]


def _container(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = docs["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def _worker_settings(
    docs: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> tuple[Settings, dict[str, str]]:
    """The worker's settings as dyno-stream reads them in pod ``dyno-worker-0`` (Kubernetes
    expands ``$(VAR)`` from the variables before it)."""
    env: dict[str, str] = {}
    for var in _container(docs)["env"]:
        if "valueFrom" in var:
            field = var["valueFrom"]["fieldRef"]["fieldPath"]
            env[var["name"]] = {"metadata.name": "dyno-worker-0", "metadata.namespace": "prod"}[
                field
            ]
        else:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], var["value"])
    for name in list(os.environ):
        if name.startswith("DYNO_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("DYNO_"):
            monkeypatch.setenv(name, value)
    return Settings(), env  # an unknown or invalid DYNO_* setting raises here


def test_each_pod_is_a_static_member_advertising_its_stable_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = _docs()
    s, _ = _worker_settings(docs, monkeypatch)
    sts, svc = docs["StatefulSet"], docs["Service"]
    assert svc["spec"]["clusterIP"] == "None", "the Service must be headless"
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert s.worker.instance_id == "dyno-worker-0"
    assert s.worker.advertised_http == (
        f"dyno-worker-0.{svc['metadata']['name']}.prod.svc.cluster.local:{s.worker.http_port}"
    )
    assert s.worker.http_host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in _container(docs)["ports"]}
    assert ports["http"] == s.worker.http_port == svc["spec"]["ports"][0]["port"]


def test_each_pod_has_a_volume_of_its_own_for_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _docs()
    s, _ = _worker_settings(docs, monkeypatch)
    claims = {t["metadata"]["name"] for t in docs["StatefulSet"]["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in _container(docs)["volumeMounts"]}
    assert mounts[str(s.worker.data_dir)] in claims


def test_probes_ask_healthz() -> None:
    c = _container(_docs())
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe


def test_a_disruption_takes_one_worker_at_a_time() -> None:
    docs = _docs()
    pdb, sts = docs["PodDisruptionBudget"], docs["StatefulSet"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == sts["spec"]["selector"]


def test_grace_outlasts_publish_timeout_here_and_in_compose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = _docs()
    s, _ = _worker_settings(docs, monkeypatch)
    grace = docs["StatefulSet"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > s.worker.publish_timeout_s
    assert grace > WorkerSettings().publish_timeout_s  # and above the default
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert _seconds(compose["services"]["worker"]["stop_grace_period"]) == grace


def test_memory_follows_memory_mb(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _docs()
    s, _ = _worker_settings(docs, monkeypatch)
    resources = _container(docs)["resources"]
    request = _mib(resources["requests"]["memory"])
    limit = _mib(resources["limits"]["memory"])
    assert request >= s.worker.memory_mb + OVERHEAD_MIB
    assert limit >= request
