"""Shared fixtures: a real Kafka broker for the session, and factories built on it.

The broker is the project's own ``LocalBroker`` (Kafka from Maven Central jars). If one is
already answering at ``DYNO_TEST_BOOTSTRAP`` (or the default local address) the tests use it;
otherwise the session starts one in a temporary home on free ports and stops it at the end.
Every test gets its own topic names and group id, so tests never see each other's data, and
``make test`` runs them in several processes (pytest-xdist) that share that broker.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port_pair

from dyno_stream.config import KafkaSettings, Settings, load_settings
from dyno_stream.core.errors import LocalBrokerError
from dyno_stream.devtools.broker import FAST_GROUP_TIMING, LocalBroker, bootstrap_reachable
from dyno_stream.devtools.broker.processes import file_lock
from dyno_stream.kafka.topics import ensure_topics
from dyno_stream.stream.worker import Worker


def free_port() -> int:
    """A free port below the ephemeral range (see ``free_port_pair``)."""
    return free_port_pair()


def _start_test_broker(home: Path) -> LocalBroker:
    """A test broker (``FAST_GROUP_TIMING``) started in ``home`` on free ports."""
    for attempt in range(3):
        broker = LocalBroker(home=home, port=free_port_pair(), properties=FAST_GROUP_TIMING)
        try:
            broker.start(timeout=120)
            return broker
        except LocalBrokerError as exc:
            # a port free when picked, bound by another process before the JVM bound it
            if "Address already in use" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


#: The test processes of a pytest-xdist run share one broker (started by the first that
#: needs it, stopped by the controller at the end); ``DYNO_TEST_SHARED_BROKER=0`` gives each
#: process its own. Measured with 3 processes on our 2-core VM beside other suites: the
#: whole suite in 5:52 shared against 7:00 with one each (load 2-9 and 6-13), 36 Kafka tests
#: in 119 s against 133 s (load 7-11 both): one JVM to start and feed, not three.
SHARED = os.environ.get("DYNO_TEST_SHARED_BROKER", "1") != "0"


def _shared_home(config: pytest.Config) -> Path:
    """The shared broker's home: beside the test processes' own temporary directories."""
    factory: pytest.TempPathFactory = config._tmp_path_factory  # type: ignore[attr-defined]
    base = factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-broker"


def _shared_broker(config: pytest.Config) -> str:
    home = _shared_home(config)
    with file_lock(home.parent / "shared-broker.lock"):
        port_file = home.parent / "shared-broker.port"
        if port_file.exists():
            port = int(port_file.read_text())
            return LocalBroker(home=home, port=port, properties=FAST_GROUP_TIMING).start(120)
        broker = _start_test_broker(home)
        port_file.write_text(str(broker.port))
        return broker.bootstrap


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller of an xdist run stops the shared broker, once every process is done."""
    if not SHARED or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    home = _shared_home(session.config)
    port_file = home.parent / "shared-broker.port"
    if port_file.exists():
        LocalBroker(home=home, port=int(port_file.read_text())).stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A running broker's bootstrap address: an existing one, or one started for the session."""
    existing = os.environ.get("DYNO_TEST_BOOTSTRAP")
    if existing:
        if not bootstrap_reachable(existing, timeout=10):
            pytest.fail(f"DYNO_TEST_BOOTSTRAP={existing} does not answer")
        yield existing
        return
    if SHARED and os.environ.get("PYTEST_XDIST_WORKER"):
        yield _shared_broker(request.config)
        gc.collect()
        return
    broker = _start_test_broker(tmp_path_factory.mktemp("broker"))
    try:
        yield broker.bootstrap
    finally:
        gc.collect()  # drop the tests' idle Kafka clients first: no reconnect noise after
        broker.stop()


def scoped_settings(
    kafka: KafkaSettings, data_dir: Path, tag: str, prefix: str = "t", **overrides: Any
) -> Settings:
    """One test's settings: ``kafka``, topics ``<prefix>-<tag>.*`` (one partition unless
    overridden), group ``g-<tag>``, data in ``data_dir``, HTTP off, a short idle wait.

    Keyword arguments override fields of the ``topics`` and ``worker`` sections.
    """
    base = load_settings()
    topic_fields = set(type(base.topics).model_fields)
    t = {k: v for k, v in overrides.items() if k in topic_fields}
    w = {k: v for k, v in overrides.items() if k not in topic_fields}
    return base.model_copy(
        update={
            "kafka": kafka,
            "topics": base.topics.model_copy(
                update={
                    "ops": f"{prefix}-{tag}.ops",
                    "snapshots": f"{prefix}-{tag}.snapshots",
                    "dead_letter": f"{prefix}-{tag}.dead-letter",
                    "partitions": 1,
                    **t,
                }
            ),
            "worker": base.worker.model_copy(
                update={
                    "group_id": f"g-{tag}",
                    "data_dir": data_dir,
                    "http_port": 0,
                    "batch_timeout_s": 0.02,
                    **w,
                }
            ),
        }
    )


@pytest.fixture
def make_settings(kafka_bootstrap: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for this test on the session's broker (``scoped_settings``): unique topics
    and group, data under tmp_path, no HTTP port. Every call in a test names the same topics.
    """
    tag = uuid.uuid4().hex[:8]
    kafka = load_settings().kafka.model_copy(update={"bootstrap_servers": kafka_bootstrap})

    def make(partitions: int = 1, **overrides: Any) -> Settings:
        return scoped_settings(kafka, tmp_path / "data", tag, partitions=partitions, **overrides)

    return make


class RunningWorker:
    """A worker on a thread of the test process, stopped at the end of the test."""

    def __init__(self, settings: Settings) -> None:
        self.worker = Worker(settings, handle_signals=False)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self, timeout: float = 60) -> None:
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def start_worker() -> Iterator[Callable[[Settings], RunningWorker]]:
    """Factory: start a worker thread with these settings (topics created first)."""
    running: list[RunningWorker] = []

    def start(settings: Settings) -> RunningWorker:
        ensure_topics(settings)
        w = RunningWorker(settings)
        running.append(w)
        return w

    yield start
    for w in running:
        if w.thread.is_alive():
            w.stop()


#: Fixtures that start a broker or need one running: the session's, and test_security's own.
BROKER_FIXTURES = frozenset({"kafka_bootstrap", "secure"})


#: Where each kind of test lives: ``make test-unit`` runs ``unit/`` alone, with no broker.
TESTS = Path(__file__).resolve().parent
FOLDER_OF_KIND = {False: "unit", True: "integration"}


#: Fixtures that start a broker shared by the tests using them, with the xdist group that
#: keeps those tests in one test process, so the broker starts once (``--dist loadgroup``).
GROUPED_BROKERS = {"_spare_broker": "spare-broker", "secure": "secure-broker"}


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs the broker, so `-m "not kafka"` runs the rest alone, and
    refuse to run a test that sits in the wrong folder for its kind. Under pytest-xdist, the
    tests of a broker of their own go to one process (``GROUPED_BROKERS``).

    ``fixturenames`` holds every fixture a test uses, directly or through another fixture.
    A test that starts a broker of its own, without such a fixture, is marked where it is
    written. A broker test in ``unit/`` would make ``make test-unit`` need Kafka; a
    broker-free one in ``integration/`` would be missing from the fast run.
    """
    misplaced: list[str] = []
    xdist = config.pluginmanager.hasplugin("xdist")
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if BROKER_FIXTURES.intersection(fixtures):
            item.add_marker(pytest.mark.kafka)
        for fixture, group in GROUPED_BROKERS.items():
            if xdist and fixture in fixtures:
                item.add_marker(pytest.mark.xdist_group(group))
        path = item.path.resolve()
        if not path.is_relative_to(TESTS):
            continue
        needs_broker = item.get_closest_marker("kafka") is not None
        want = FOLDER_OF_KIND[needs_broker]
        folder = path.relative_to(TESTS).parts[0]
        if folder != want:
            kind = "needs the Kafka broker" if needs_broker else "needs no broker"
            misplaced.append(f"  {item.nodeid}: {kind}, so it belongs in tests/{want}/")
    if misplaced:
        raise pytest.UsageError(
            "tests in the wrong folder (a test that uses the kafka_bootstrap or secure "
            "fixture, or is marked kafka, goes in tests/integration/; every other test in "
            "tests/unit/):\n" + "\n".join(misplaced)
        )


@pytest.fixture(scope="session")
def _spare_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    broker = LocalBroker(
        home=tmp_path_factory.mktemp("own-broker"),
        port=free_port_pair(),
        properties=FAST_GROUP_TIMING,
    )
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def own_broker(_spare_broker: LocalBroker) -> LocalBroker:
    """A broker of these tests' own (not the session's: they stop and hang it), on free
    ports; running at the start of each test (started again if a test left it down). One
    for the session (per test process), started by the first test that asks for it."""
    pid = _spare_broker.status().pid
    if pid is not None:
        os.kill(pid, signal.SIGCONT)  # in case a failed test left it stopped
    _spare_broker.start(timeout=180)
    return _spare_broker
