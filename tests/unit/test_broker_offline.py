"""The local Kafka broker's error paths and settings that need neither Java nor the network.

A fake ``mvn`` stands in for Maven; a port is taken by a plain socket. The tests that run the
real broker are in ``tests/integration/test_broker.py``.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path

import pytest
from helpers import free_port_pair

from dyno_stream.core.errors import LocalBrokerError
from dyno_stream.devtools.broker import (
    KAFKA_VERSION,
    LocalBroker,
    bootstrap_reachable,
    default_cache_root,
    ensure_jars,
)
from dyno_stream.devtools.broker.jvm import new_cluster_id


def test_port_taken_by_something_else(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = int(squatter.getsockname()[1])
        broker = LocalBroker(home=tmp_path / "broker", port=port)
        with pytest.raises(
            LocalBrokerError, match=rf"client port 127\.0\.0\.1:{port} is already in use"
        ):
            broker.start(timeout=5)
        assert not broker.is_running()
        assert broker.stop() is False


def test_bootstrap_unreachable_when_nothing_listens() -> None:
    port = free_port_pair()
    started = time.monotonic()
    assert not bootstrap_reachable(f"127.0.0.1:{port}", timeout=2)
    assert time.monotonic() - started < 2.5


def _fake_mvn(bin_dir: Path, body: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "mvn"
    script.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in -DoutputDirectory=*) out="${a#-DoutputDirectory=}";; '
        "esac; done\n" + body
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_ensure_jars_without_maven_says_what_to_install_and_caches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    cache = tmp_path / "cache"
    with pytest.raises(LocalBrokerError) as info:
        ensure_jars(cache)
    message = str(info.value)
    assert "Maven ('mvn') is not on PATH" in message
    assert "install Maven 3.8+ and Java 17+" in message
    version_dir = cache / f"kafka-{KAFKA_VERSION}"
    assert str(version_dir / "libs") in message  # where the jars would go
    assert not (version_dir / "libs").exists() and not (version_dir / "libs.complete").exists()


def test_ensure_jars_redoes_a_failed_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    # A download that fails half way: the error quotes Maven's output, nothing counts as cached.
    _fake_mvn(
        bin_dir,
        'mkdir -p "$out" && touch "$out/half.jar"\n'
        'echo "[ERROR] Could not resolve dependencies: network is down"\nexit 1\n',
    )
    with pytest.raises(LocalBrokerError, match="network is down"):
        ensure_jars(cache)
    version_dir = cache / f"kafka-{KAFKA_VERSION}"
    assert not (version_dir / "libs.complete").exists()
    assert not (version_dir / "libs").exists()

    # The next call downloads again.
    _fake_mvn(bin_dir, f'mkdir -p "$out" && touch "$out/kafka_2.13-{KAFKA_VERSION}.jar"\n')
    libs = ensure_jars(cache)
    assert libs == version_dir / "libs"
    assert (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file()
    assert (version_dir / "libs.complete").is_file()

    # Cached now: Maven is not needed any more.
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert ensure_jars(cache) == libs


def test_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNO_BROKER_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("DYNO_BROKER_PORT", "29555")
    broker = LocalBroker()
    assert broker.home == (tmp_path / "h").resolve()
    assert broker.port == 29555
    assert broker.controller_port == 29556
    assert broker.bootstrap == "127.0.0.1:29555"
    monkeypatch.setenv("DYNO_KAFKA_CACHE", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c"
    monkeypatch.setenv("DYNO_BROKER_PORT", "nope")
    with pytest.raises(LocalBrokerError, match="DYNO_BROKER_PORT"):
        LocalBroker()


def test_cluster_ids_never_start_with_a_dash() -> None:
    """The storage tool reads ``-abc...`` as an option: one start in 64 failed that way."""
    ids = [new_cluster_id() for _ in range(5_000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids) and len(set(ids)) == len(ids)
