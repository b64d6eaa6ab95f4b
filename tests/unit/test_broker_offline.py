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


def test_each_kafka_version_gets_its_own_pom_and_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 3.x release resolves from pom-3.xml (reload4j logging) with -Dkafka.version, into a
    cache directory of its own beside the default release's; DYNO_KAFKA_VERSION picks it."""
    cache = tmp_path / "cache"
    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    # the fake Maven records its pom and arguments, and "downloads" the asked version's jar
    _fake_mvn(
        bin_dir,
        'for a in "$@"; do case "$a" in -Dkafka.version=*) v="${a#-Dkafka.version=}";; '
        '-f) ;; *.xml) cp "$a" "$out.pom";; esac; done\n'
        'echo "$@" > "$out.args"\n'
        'mkdir -p "$out" && touch "$out/kafka_2.13-$v.jar"\n',
    )
    monkeypatch.setenv("DYNO_KAFKA_VERSION", "3.9.1")
    libs = ensure_jars(cache)
    assert libs == cache / "kafka-3.9.1" / "libs"
    assert (libs / "kafka_2.13-3.9.1.jar").is_file()
    pom = (cache / "kafka-3.9.1" / "libs.partial.pom").read_text()
    assert "<artifactId>reload4j</artifactId>" in pom
    assert "-Dkafka.version=3.9.1" in (cache / "kafka-3.9.1" / "libs.partial.args").read_text()
    monkeypatch.delenv("DYNO_KAFKA_VERSION")
    assert ensure_jars(cache) == cache / f"kafka-{KAFKA_VERSION}" / "libs"
    assert ensure_jars(cache, "3.9.1") == libs  # cached: no second download


@pytest.mark.parametrize("version", ["2.8.2", "3.6.0", "5.0.0", "latest", "3.9"])
def test_a_kafka_version_the_tooling_cannot_run_is_refused_naming_the_setting(
    tmp_path: Path, version: str
) -> None:
    with pytest.raises(LocalBrokerError, match=r"DYNO_KAFKA_VERSION, --kafka-version"):
        LocalBroker(home=tmp_path, kafka_version=version)


def test_a_3x_broker_logs_through_log4j_1_and_names_its_version(tmp_path: Path) -> None:
    old = LocalBroker(home=tmp_path / "a", port=free_port_pair(), kafka_version="3.9.1")
    new = LocalBroker(home=tmp_path / "b", port=free_port_pair(), kafka_version="4.1.2")
    assert old.log_config.name == "log4j.properties"
    assert new.log_config.name == "log4j2.properties"
    assert old._server_properties().startswith("# Kafka 3.9.1\n")


def test_an_older_kafka_on_storage_a_newer_one_formatted_is_refused(tmp_path: Path) -> None:
    broker = LocalBroker(home=tmp_path, port=free_port_pair(), kafka_version="3.9.1")
    broker.formatted_by_file.write_text("4.1.2\n")
    with pytest.raises(
        LocalBrokerError, match=r"formatted by Kafka 4\.1\.2, newer than the 3\.9\.1"
    ):
        broker.start(timeout=5)
