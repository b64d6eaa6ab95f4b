"""SASL (SCRAM) and TLS to a real broker, and secrets kept out of every output.

This module starts its own broker (not the session one): the project's ``LocalBroker`` with a
SASL_PLAINTEXT listener and a SASL_SSL listener whose certificate a throwaway CA made here
signed (``certs.py``), both taking the SCRAM users below. Workers and clients are configured
the way a deployment would be (``DYNO_KAFKA__*`` variables for subprocesses), and each test
checks both halves of the promise: the right login works, a wrong one is refused loudly and
at once, and the password shows up nowhere a user or a log collector could read it.
Configuration errors and the HTTP endpoint's default, which need no broker, are in
``tests/unit/test_security_offline.py``.
"""

from __future__ import annotations

import gc
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from certs import TlsFiles, make_tls_files
from conftest import RunningWorker, free_port, scoped_settings
from helpers import (
    PASSWORD,
    PASSWORD_256,
    REPO,
    WRONG,
    assert_no_secret,
    cli_env,
    free_port_pair,
    run_cli,
)

from dyno_stream.client import DynoClient
from dyno_stream.client.http import http_get
from dyno_stream.config import KafkaSettings, Settings
from dyno_stream.core.errors import KafkaAuthError, LocalBrokerError
from dyno_stream.devtools.broker import BrokerTls, LocalBroker, ScramUser
from dyno_stream.kafka.topics import ensure_topics

USER = ScramUser("dyno", PASSWORD, "SCRAM-SHA-512")
USER_256 = ScramUser("dyno256", PASSWORD_256, "SCRAM-SHA-256")
#: A refused login or TLS handshake must be reported within this, in-process. Measured on
#: our 2-core VM: a wrong password 0.4 s (librdkafka's SCRAM exchange), an untrusted
#: certificate 1.0 s (list_topics_checked asks in 1 s slices); 3x that for a loaded machine.
REFUSED_WITHIN_S = 3.0
#: ... and a `dyno-stream worker` process must have exited 1 within this of its start:
#: measured 1.5-1.9 s, of which Python's start-up and imports are about 1 s.
WORKER_REFUSED_WITHIN_S = 6.0
WAIT_S = 60.0


class SecureBroker:
    """The module's broker and the TLS files its clients trust."""

    def __init__(self, broker: LocalBroker, tls: TlsFiles) -> None:
        self.broker, self.tls = broker, tls


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    root = tmp_path_factory.mktemp("secure-broker")
    tls = make_tls_files(root / "tls")
    broker = LocalBroker(
        home=root / "home",
        port=free_port_pair(),
        scram_users=(USER, USER_256),
        sasl_port=free_port(),
        ssl_port=free_port(),
        tls=BrokerTls(tls.certificate, tls.private_key),
    )
    broker.start(timeout=120)
    try:
        yield SecureBroker(broker, tls)
    finally:
        gc.collect()  # drop idle clients first: no reconnect noise while it stops
        broker.stop()


@pytest.fixture
def secure_settings(secure: SecureBroker, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a client of the secure broker: unique topics and group, HTTP off.

    ``protocol`` picks the listener (SASL_PLAINTEXT or SASL_SSL); ``user`` and ``password``
    the login; ``ca`` the CA file a TLS client trusts (None: the system's, which does not
    know our throwaway CA). Other keywords override ``worker`` fields.
    """
    tag = uuid.uuid4().hex[:8]

    def make(
        protocol: str = "SASL_PLAINTEXT",
        user: ScramUser = USER,
        password: str | None = None,
        ca: Path | None = None,
        **worker: Any,
    ) -> Settings:
        b = secure.broker
        bootstrap = b.ssl_bootstrap if protocol == "SASL_SSL" else b.sasl_bootstrap
        kafka = KafkaSettings.model_validate(
            {
                "bootstrap_servers": bootstrap,
                "security_protocol": protocol,
                "sasl_mechanism": user.mechanism,
                "sasl_username": user.name,
                "sasl_password": password if password is not None else user.password,
                "ssl_ca_location": None if ca is None else str(ca),
            }
        )
        return scoped_settings(kafka, tmp_path / "data", tag, prefix="s", **worker)

    return make


def kafka_env(s: Settings, **extra: str) -> dict[str, str]:
    """A deployment's environment for ``s``: the Kafka login as DYNO_KAFKA__* variables."""
    k = s.kafka
    env = cli_env(s)
    env.update(
        {
            "DYNO_KAFKA__SECURITY_PROTOCOL": k.security_protocol,
            "DYNO_KAFKA__SASL_MECHANISM": k.sasl_mechanism or "",
            "DYNO_KAFKA__SASL_USERNAME": k.sasl_username or "",
            "DYNO_KAFKA__SASL_PASSWORD": k.sasl_password.get_secret_value()
            if k.sasl_password
            else "",
        }
    )
    if k.ssl_ca_location:
        env["DYNO_KAFKA__SSL_CA_LOCATION"] = k.ssl_ca_location
    env.update(extra)
    return env


def wait_for(what: str, check: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.1)


def connect_refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def outward_address() -> str | None:
    """This host's address on its default route (no packet is sent), or None if it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the route
        except OSError:
            return None
        addr: str = s.getsockname()[0]
    return None if addr.startswith("127.") else addr


class WorkerProcess:
    """``dyno-stream worker`` as a deployment runs it, its output kept in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dyno_stream", "worker"],
                env=env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"worker still running after {timeout:.0f}s:\n{self.text()[-3000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(30)


# -- the right login -----------------------------------------------------------------------------


def test_worker_with_the_right_login_applies_ops_and_no_output_shows_the_password(
    secure: SecureBroker, secure_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    s = secure_settings()
    port = free_port()
    # The endpoint's host is left to the shipped defaults: that is what is being checked.
    env = kafka_env(s, DYNO_WORKER__HTTP_PORT=str(port))
    env.pop("DYNO_WORKER__HTTP_HOST")
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        with DynoClient(s) as client:
            wait_for("the worker created its topics", lambda: _has_topic(s))
            client.put_item("chilts", {"nick": "chilts", "email": "me@example.com"})
            client.del_attrs("chilts", ["email"])
            client.put_attrs("chilts", {"name": "Andy Chilton"})
            client.flush()
        base = f"http://127.0.0.1:{port}"

        def applied() -> bool:
            try:
                code, body, _ = http_get(f"{base}/items/chilts")
            except OSError:
                return False
            return code == 200 and json.loads(body)["changes"] == 3

        wait_for("the worker applied the three ops", applied)
        _, item, _ = http_get(f"{base}/items/chilts")
        assert json.loads(item)["value"] == {"nick": "chilts", "name": "Andy Chilton"}

        code, metrics, _ = http_get(f"{base}/metrics")
        assert code == 200 and b'dyno_ops_applied_total{op="putItem"} 1.0' in metrics
        assert_no_secret("/metrics", metrics)
        code, health, _ = http_get(f"{base}/healthz")
        assert code == 200 and json.loads(health)["status"] == "ok"
        assert_no_secret("/healthz", health)

        # Bound to loopback by default: 127.0.0.2 is loopback too, yet refused, so the
        # socket is bound to 127.0.0.1 itself and not to every address.
        assert connect_refused("127.0.0.2", port)
        outward = outward_address()
        if outward is not None:
            assert connect_refused(outward, port)
    finally:
        code = worker.stop()
    log = worker.text()
    assert code == 0, log[-3000:]
    assert f"http endpoint at http://127.0.0.1:{port}" in log
    # The start line shows the Kafka settings, with the password masked.
    assert "'sasl.username': 'dyno'" in log and "'sasl.password': '***'" in log
    assert_no_secret("the worker's log", log)


def _has_topic(s: Settings) -> bool:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(s.kafka.librdkafka())
    return s.topics.snapshots in admin.list_topics(timeout=10).topics


def test_tls_and_scram_sha_256_with_a_verified_broker_certificate(
    secure: SecureBroker,
    secure_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], RunningWorker],
) -> None:
    s = secure_settings("SASL_SSL", USER_256, ca=secure.tls.ca)
    worker = start_worker(s)
    with DynoClient(s) as client:
        delivery = client.inc_attr_by("counter", "n", 5).result(WAIT_S)
    assert delivery.topic == s.topics.ops

    def applied() -> bool:
        item = worker.worker.reads.item("counter")
        return item is not None and item["value"] == {"n": 5}

    wait_for("the worker applied the op over TLS", applied)
    worker.stop()


# -- a wrong login -------------------------------------------------------------------------------


def test_worker_with_a_wrong_password_exits_non_zero_naming_authentication(
    secure_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    s = secure_settings(password=WRONG)
    started = time.monotonic()
    worker = WorkerProcess(kafka_env(s), tmp_path / "worker.log")
    code = worker.wait(WORKER_REFUSED_WITHIN_S + 10)
    took = time.monotonic() - started
    log = worker.text()
    print(f"\nworker with a wrong password: exit {code} after {took:.2f}s")
    assert code == 1, log[-3000:]
    assert took < WORKER_REFUSED_WITHIN_S, f"took {took:.1f}s to give up"
    assert "ERROR" in log and "worker stopped: Kafka at" in log
    assert "refused the login (authentication failed)" in log
    assert "sasl_username ('dyno')" in log
    assert_no_secret("the refused worker's log", log)


def test_worker_that_skips_topic_creation_also_stops_on_a_wrong_password(
    secure_settings: Callable[..., Settings],
) -> None:
    """The check in the worker's loop, not only the one when it creates topics."""
    s = secure_settings(password=WRONG)
    s = s.model_copy(update={"topics": s.topics.model_copy(update={"create_missing": False})})
    worker = RunningWorker(s)
    worker.thread.join(REFUSED_WITHIN_S)
    assert not worker.thread.is_alive(), "the worker kept running with a refused login"
    assert isinstance(worker.error, KafkaAuthError), worker.error
    assert "authentication failed" in str(worker.error)
    assert_no_secret("the error", str(worker.error))


def test_tls_client_that_does_not_trust_the_broker_certificate_is_stopped(
    secure: SecureBroker, secure_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    other_ca = make_tls_files(tmp_path / "other", ca_name="some other CA").ca
    s = secure_settings("SASL_SSL", ca=other_ca)
    started = time.monotonic()
    with pytest.raises(KafkaAuthError, match="certificate verify failed") as info:
        ensure_topics(s)
    print(f"\nuntrusted certificate refused after {time.monotonic() - started:.2f}s")
    assert time.monotonic() - started < REFUSED_WITHIN_S
    assert "kafka.ssl_ca_location" in str(info.value)


@pytest.mark.kafka  # starts a broker of its own
def test_worker_stops_when_the_broker_certificate_does_not_name_the_host_dialled(
    tmp_path: Path,
) -> None:
    """A broker whose certificate the configured CA signed, but for ``localhost`` only, while
    clients dial ``127.0.0.1``: librdkafka's host-name check refuses it and the worker stops,
    saying so. With that check turned off the same settings connect, so the name is the
    only thing wrong."""
    tls = make_tls_files(tmp_path / "tls", names=("localhost",))
    broker = LocalBroker(
        home=tmp_path / "home",
        port=free_port_pair(),
        ssl_port=free_port(),
        tls=BrokerTls(tls.certificate, tls.private_key),
    )
    broker.start(timeout=120)
    try:
        assert broker.ssl_bootstrap is not None and broker.ssl_bootstrap.startswith("127.0.0.1:")
        kafka = KafkaSettings(
            bootstrap_servers=broker.ssl_bootstrap,
            security_protocol="SSL",
            ssl_ca_location=str(tls.ca),
        )
        s = scoped_settings(kafka, tmp_path / "data", uuid.uuid4().hex[:8], prefix="n")
        unchecked = kafka.model_copy(
            update={"extra": {"ssl.endpoint.identification.algorithm": "none"}}
        )
        ensure_topics(s.model_copy(update={"kafka": unchecked}))  # the CA and TLS are right

        env = cli_env(
            s, DYNO_KAFKA__SECURITY_PROTOCOL="SSL", DYNO_KAFKA__SSL_CA_LOCATION=str(tls.ca)
        )
        started = time.monotonic()
        worker = WorkerProcess(env, tmp_path / "worker.log")
        code = worker.wait(WORKER_REFUSED_WITHIN_S + 10)
        took = time.monotonic() - started
    finally:
        gc.collect()
        broker.stop()
    log = worker.text()
    print(f"\nworker refused by a certificate for another name: exit {code} after {took:.2f}s")
    assert code == 1, log[-3000:]
    assert took < WORKER_REFUSED_WITHIN_S, f"took {took:.1f}s to give up"
    assert "worker stopped: TLS with Kafka at" in log, log[-3000:]
    assert "certificate verify failed" in log, log[-3000:]


def test_client_and_cli_with_a_wrong_password_fail_fast_without_showing_it(
    secure_settings: Callable[..., Settings],
) -> None:
    good = secure_settings()
    ensure_topics(good)
    bad = secure_settings(password=WRONG)
    bad = bad.model_copy(update={"topics": good.topics})
    started = time.monotonic()
    with DynoClient(bad) as client:
        future = client.put_item("x", {"a": 1})
        with pytest.raises(KafkaAuthError, match="authentication failed"):
            future.result(REFUSED_WITHIN_S)
        with pytest.raises(KafkaAuthError):
            client.put_item("y", {"a": 1})
    print(f"\nclient with a wrong password refused after {time.monotonic() - started:.2f}s")
    assert time.monotonic() - started < REFUSED_WITHIN_S
    proc = run_cli(kafka_env(bad), "op", "x", "putItem", '{"a":1}', timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "refused the login (authentication failed)" in proc.stderr
    assert_no_secret("the CLI's output", proc.stdout + proc.stderr)


# -- the broker ----------------------------------------------------------------------------------


def test_secured_broker_keeps_passwords_out_of_its_files_and_reprs(
    secure: SecureBroker,
) -> None:
    b = secure.broker
    props = b.server_properties.read_text()
    assert f"SASL_PLAINTEXT://127.0.0.1:{b.sasl_port}" in props
    assert f"SASL_SSL://127.0.0.1:{b.ssl_port}" in props
    assert_no_secret("repr(LocalBroker)", repr(b))
    for path in b.home.rglob("*"):
        if path.is_file() and path.suffix in {".properties", ".pem", ".id", ".out", ".log"}:
            assert_no_secret(str(path), path.read_bytes())
    assert b.keystore_file.stat().st_mode & 0o077 == 0, "the key store is readable by others"
    # Start is idempotent for the same settings, and refuses different ones.
    assert b.start(timeout=60) == b.bootstrap
    other = LocalBroker(home=b.home, port=b.port, cache_dir=b.cache_dir)
    with pytest.raises(LocalBrokerError, match="other settings"):
        other.start(timeout=10)
