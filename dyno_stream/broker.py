"""A real Apache Kafka broker for development, demos, tests and CI, run from Maven Central jars.

Why this exists: our machines have Java and Maven and reach Maven Central, but have neither
Docker nor the Apache download site. So instead of a container or a tarball we resolve the
broker's own jars (``org.apache.kafka:kafka_2.13`` plus a log4j binding, listed in the packaged
``kafka/pom.xml``) once into a cache, and start ``kafka.Kafka`` with ``java`` as a single-node
KRaft broker (broker and controller in one process). It is the same broker as in production,
so tests exercise real Kafka semantics rather than a fake.

The pieces:

* :func:`ensure_jars` downloads the jars once (``mvn dependency:copy-dependencies``) and is
  idempotent: a marker written only after a complete download tells a finished cache from a
  half one.
* :class:`LocalBroker` formats storage, starts the JVM detached from the calling process (so a
  CLI can start it and exit), records its pid in its home directory, waits until it answers,
  and stops it again. Every call is idempotent, so scripts can call ``start`` blindly.
* :func:`bootstrap_reachable` tells whether a Kafka cluster answers at an address.

Environment overrides (read when a :class:`LocalBroker` is made / the cache is resolved):
``DYNO_BROKER_HOME``, ``DYNO_BROKER_PORT`` and ``DYNO_KAFKA_CACHE``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from dyno_stream.errors import BrokerError

__all__ = [
    "DEFAULT_HEAP",
    "DEFAULT_PORT",
    "KAFKA_VERSION",
    "BrokerStatus",
    "LocalBroker",
    "bootstrap_reachable",
    "default_cache_root",
    "ensure_jars",
]

#: Port of the PLAINTEXT listener clients use; the KRaft controller listens on the next port.
DEFAULT_PORT: Final = 19092
#: JVM heap flags. Kafka's scripts default to 1 GB; half of that is plenty for a test broker and
#: leaves room on a 2-core CI machine that also runs the tests and the worker.
DEFAULT_HEAP: Final = "-Xms256m -Xmx512m"
#: How long a single ``mvn`` download may take before we give up (a cold cache is ~45 MB).
MVN_TIMEOUT_S: Final = 900.0
#: How long formatting storage (a short JVM run) may take.
FORMAT_TIMEOUT_S: Final = 120.0

_HOST: Final = "127.0.0.1"
_NODE_ID: Final = 1
_LOG_TAIL_LINES: Final = 40
# The same JVM tuning as Kafka's bin/kafka-run-class.sh (KAFKA_JVM_PERFORMANCE_OPTS), plus
# ExitOnOutOfMemoryError: a half-dead broker that still holds its port is worse than a dead one.
_JVM_OPTS: Final = (
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


_PACKAGE_DATA: Final = Path(__file__).resolve().parent / "kafka"


def _resource_text(name: str) -> str:
    """Text of a file shipped in ``dyno_stream/kafka`` (package data, so it works installed).

    Found next to this module rather than via ``importlib.resources``: pip installs (regular or
    editable) always put package data on disk, and this keeps working even where an editable
    install registered the package as a namespace package.
    """
    return (_PACKAGE_DATA / name).read_text(encoding="utf-8")


def _pom_kafka_version() -> str:
    """The Kafka version pinned in the packaged pom, so the version lives in one place only."""
    root = ET.fromstring(_resource_text("pom.xml"))
    node = root.find(
        "{http://maven.apache.org/POM/4.0.0}properties/"
        "{http://maven.apache.org/POM/4.0.0}kafka.version"
    )
    if node is None or not (node.text or "").strip():
        raise BrokerError("dyno_stream/kafka/pom.xml has no <kafka.version> property")
    return (node.text or "").strip()


#: The Apache Kafka version the local broker runs (from ``dyno_stream/kafka/pom.xml``).
KAFKA_VERSION: Final = _pom_kafka_version()


# --------------------------------------------------------------------------------------------
# Jars
# --------------------------------------------------------------------------------------------


def default_cache_root() -> Path:
    """Where downloaded broker jars are cached, unless ``ensure_jars`` is given a directory.

    ``DYNO_KAFKA_CACHE`` if set, else ``$XDG_CACHE_HOME/dyno-stream`` (``~/.cache/dyno-stream``).
    The root is shared by all versions: each lives in its own ``kafka-<version>`` subdirectory,
    so bumping the pinned version never mixes jars of two Kafka releases on one classpath.
    """
    env = os.environ.get("DYNO_KAFKA_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dyno-stream"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if needed).

    Two processes (parallel test workers, a CLI and a test run) may try to download the jars or
    start the same broker home at once; the lock makes the second wait and then find the work
    done instead of corrupting it. The kernel drops the lock if the holder dies.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


_ANSI_ESCAPE: Final = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    """Last ``lines`` meaningful lines of ``text``: enough context for an error message.

    Drops terminal colour codes (Maven 3.8 emits some even with ``-B -Dstyle.color=never``)
    and Maven's empty ``[ERROR]`` spacer lines, which would only crowd out the real cause.
    """
    kept = []
    for line in _ANSI_ESCAPE.sub("", text).splitlines():
        if line.strip() and line.strip() != "[ERROR]":
            kept.append(line.rstrip())
    return "\n".join(kept[-lines:])


def _file_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """Tail of a log file, reading only its end (logs can be large); '' if it does not exist."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except FileNotFoundError:
        return ""
    return _tail(data.decode("utf-8", errors="replace"), lines)


def _marker_valid(marker: Path, fingerprint: str, libs: Path) -> bool:
    """Whether a previous download of exactly this pom completed into ``libs``."""
    try:
        first_line = marker.read_text(encoding="utf-8").split("\n", 1)[0].strip()
    except FileNotFoundError:
        return False
    return first_line == fingerprint and (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file()


def ensure_jars(cache_dir: Path | None = None) -> Path:
    """Make sure the broker's runtime jars are cached, downloading them once; return their dir.

    The jars land in ``<cache root>/kafka-<version>/libs`` where the cache root is ``cache_dir``
    or :func:`default_cache_root`. Maven does the resolving (it knows the transitive runtime
    dependencies and checksums, and reuses ``~/.m2``), run on a copy of the packaged pom in a
    temporary directory so nothing is written into the installed package.

    Idempotent and crash safe: Maven writes into a staging directory that is renamed into place,
    and a marker (holding a hash of the pom) is written only after that, so an interrupted
    download is redone and a changed pom triggers a fresh download.

    Raises :class:`BrokerError` if Maven is missing or fails (with the tail of its output).
    """
    root = (cache_dir if cache_dir is not None else default_cache_root()).expanduser()
    version_dir = root / f"kafka-{KAFKA_VERSION}"
    libs = version_dir / "libs"
    marker = version_dir / "libs.complete"
    pom_text = _resource_text("pom.xml")
    fingerprint = hashlib.sha256(pom_text.encode("utf-8")).hexdigest()
    if _marker_valid(marker, fingerprint, libs):
        return libs

    with _file_lock(version_dir / ".lock"):
        if _marker_valid(marker, fingerprint, libs):  # another process finished meanwhile
            return libs
        marker.unlink(missing_ok=True)
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError(
                "Maven ('mvn') is not on PATH; it is needed once to download the Kafka "
                f"{KAFKA_VERSION} broker jars into {libs} (install Maven 3.8+ and Java 17+)"
            )
        staging = version_dir / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix="dyno-kafka-pom-") as tmp:
            pom = Path(tmp) / "pom.xml"
            pom.write_text(pom_text, encoding="utf-8")
            cmd = [
                mvn,
                "-q",
                "-B",
                "-Dstyle.color=never",
                # -U: after a network failure Maven would otherwise replay the failure it
                # cached in ~/.m2 instead of trying again, defeating a retry.
                "-U",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ]
            try:
                # Maven prints its [ERROR] lines on stdout, so both streams are kept, merged.
                proc = subprocess.run(
                    cmd,
                    cwd=tmp,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=MVN_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise BrokerError(
                    f"downloading the Kafka {KAFKA_VERSION} jars with Maven took longer than "
                    f"{MVN_TIMEOUT_S:.0f}s; is Maven Central reachable?"
                ) from exc
        if proc.returncode != 0 or not any(staging.glob("*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            raise BrokerError(
                f"could not download the Kafka {KAFKA_VERSION} broker jars: "
                f"'{shlex.join(cmd)}' exited with {proc.returncode}; its output ends with:\n"
                f"{_tail(proc.stdout or '') or '(no output)'}"
            )
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        jars = sorted(p.name for p in libs.glob("*.jar"))
        marker.write_text(fingerprint + "\n" + "\n".join(jars) + "\n", encoding="utf-8")
    return libs


# --------------------------------------------------------------------------------------------
# Reachability
# --------------------------------------------------------------------------------------------


def _split_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    """``"h1:p1,[::1]:p2"`` -> ``[("h1", p1), ("::1", p2)]``; malformed entries are skipped."""
    hosts: list[tuple[str, int]] = []
    for entry in bootstrap.split(","):
        entry = entry.strip()
        if "://" in entry:
            entry = entry.split("://", 1)[1]
        host, sep, port = entry.rpartition(":")
        if not sep or not port.isdigit():
            continue
        hosts.append((host.strip("[]") or _HOST, int(port)))
    return hosts


def _tcp_open(host: str, port: int, timeout: float) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=max(timeout, 0.05)):
            return True
    except OSError:
        return False


def bootstrap_reachable(bootstrap: str, timeout: float = 5.0) -> bool:
    """Whether a Kafka cluster answers a metadata request at ``bootstrap`` within ``timeout`` s.

    A plain TCP probe comes first: it answers "no" in microseconds while nothing listens and
    keeps librdkafka from logging connection-refused noise. Only then an ``AdminClient`` asks
    for cluster metadata, which proves a Kafka broker (not just any server) is there and has
    registered itself (a broker that is still fencing lists no brokers).
    """
    deadline = time.monotonic() + timeout
    hosts = _split_bootstrap(bootstrap)
    if not any(_tcp_open(h, p, deadline - time.monotonic()) for h, p in hosts):
        return False
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            # Silence librdkafka: a probe that fails is an answer, not something to log.
            "log_level": 0,
            "socket.connection.setup.timeout.ms": max(1000, int(remaining * 1000)),
        }
    )
    try:
        metadata = admin.list_topics(timeout=max(remaining, 0.1))
    except KafkaException:
        return False
    return bool(metadata.brokers)


# --------------------------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------------------------


def _default_home() -> Path:
    env = os.environ.get("DYNO_BROKER_HOME")
    return Path(env).expanduser() if env else Path.cwd() / ".dyno" / "broker"


def _default_port() -> int:
    env = os.environ.get("DYNO_BROKER_PORT")
    if not env:
        return DEFAULT_PORT
    try:
        port = int(env)
    except ValueError:
        raise BrokerError(f"DYNO_BROKER_PORT must be a port number, not {env!r}") from None
    return port


def _find_java() -> str:
    """The ``java`` to run: ``$JAVA_HOME/bin/java`` like Kafka's scripts, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file():
            return str(candidate)
    java = shutil.which("java")
    if java is None:
        raise BrokerError("'java' is not on PATH (and JAVA_HOME is unset); Kafka needs Java 17+")
    return java


def _port_free(port: int) -> bool:
    """Whether we could listen on ``127.0.0.1:port`` right now.

    SO_REUSEADDR mirrors what the JVM does for server sockets, so a port whose last connections
    linger in TIME_WAIT after a restart does not count as taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its parent's wait counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True  # no procfs (not Linux): trust kill(0)
    # Format: "pid (comm) S ..."; comm may contain spaces and parentheses, so split at the last ')'.
    state = stat.rpartition(")")[2].split()[:1]
    return state != ["Z"] and state != ["X"]


def _process_args(pid: int) -> list[str] | None:
    """Command line of ``pid``, or None where it cannot be read (no procfs, gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [arg.decode("utf-8", errors="replace") for arg in raw.split(b"\0") if arg]


def _new_cluster_id() -> str:
    """A KRaft cluster id as ``kafka-storage random-uuid`` makes: 16 random bytes, base64url."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class BrokerStatus:
    """A snapshot of a :class:`LocalBroker`: whether its JVM runs, and where to reach it."""

    running: bool
    pid: int | None
    bootstrap: str
    home: Path


@dataclass
class LocalBroker:
    """A single-node KRaft Kafka broker living in ``home``, reached at ``127.0.0.1:port``.

    ``home`` holds everything the broker owns: ``config/`` (server.properties and the log4j
    config, rewritten on each start), ``data/`` (the log dirs and the KRaft metadata log),
    ``logs/`` (``server.log`` at WARN, ``broker.out`` for the JVM's own output), ``cluster.id``
    and ``broker.pid``. Deleting ``home`` while the broker is stopped resets it completely.

    The broker listens on loopback only (it is a development fixture, not a service) and its
    controller on ``port + 1``. All state lives in ``home`` (the object itself keeps only its
    settings and the handle of a JVM it started, to reap it), so a new instance with the same
    ``home`` (another process, a CLI) sees and controls the same broker.
    """

    home: Path = field(default_factory=_default_home)
    port: int = field(default_factory=_default_port)
    heap: str = DEFAULT_HEAP
    #: Root of the jar cache (see :func:`ensure_jars`); None means :func:`default_cache_root`.
    cache_dir: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # Absolute, because the paths end up in server.properties read by a JVM whose working
        # directory is ``home`` itself; resolved, so that two instances for the same home (via
        # a symlink, a relative path) agree on the paths matched against the JVM's command line.
        self.home = Path(self.home).expanduser().resolve()
        if not 1 <= self.port <= 65534:
            raise BrokerError(
                f"broker port must be in 1..65534 (port+1 is the controller's), not {self.port}"
            )

    # -- paths and addresses ------------------------------------------------------------------

    @property
    def controller_port(self) -> int:
        """The KRaft controller listener's port: always the client port plus one."""
        return self.port + 1

    @property
    def bootstrap(self) -> str:
        """The ``bootstrap.servers`` value clients use."""
        return f"{_HOST}:{self.port}"

    @property
    def config_dir(self) -> Path:
        return self.home / "config"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def server_properties(self) -> Path:
        return self.config_dir / "server.properties"

    @property
    def log_file(self) -> Path:
        """The broker's own log (log4j, WARN and above)."""
        return self.logs_dir / "server.log"

    @property
    def console_file(self) -> Path:
        """The JVM's stdout/stderr: VM start-up failures and crashes land here."""
        return self.logs_dir / "broker.out"

    # -- state --------------------------------------------------------------------------------

    def _read_pid(self) -> int | None:
        try:
            text = self.pid_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def _is_our_process(self, pid: int) -> bool:
        """Whether ``pid`` is alive and is this home's broker (not a recycled pid)."""
        if not _process_alive(pid):
            return False
        args = _process_args(pid)
        if args is None:
            return True  # cannot tell without procfs; a live pid from our pid file will do
        return "kafka.Kafka" in args and str(self.server_properties) in args

    def _running_pid(self) -> int | None:
        pid = self._read_pid()
        return pid if pid is not None and self._is_our_process(pid) else None

    def is_running(self) -> bool:
        """Whether this home's broker JVM is alive (it may still be starting up)."""
        return self._running_pid() is not None

    def status(self) -> BrokerStatus:
        """Running state, pid and address; reads only local files, never the network."""
        pid = self._running_pid()
        return BrokerStatus(
            running=pid is not None, pid=pid, bootstrap=self.bootstrap, home=self.home
        )

    # -- start --------------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> str:
        """Start the broker if needed and wait until it answers; return its bootstrap address.

        ``timeout`` bounds the wait for the broker to answer; a first-time jar download
        (see :func:`ensure_jars`) comes on top of it.

        Idempotent: if this home's broker already runs, only waits for it to answer. A fresh
        start fetches the jars (once), writes the config, formats storage (first time only),
        launches the JVM in its own session so it outlives the caller, and polls it with an
        AdminClient until it lists itself.

        Raises :class:`BrokerError` if the port or the controller port is taken by anything
        else, if the JVM exits during start-up (with the tail of its logs), or if it does not
        answer within ``timeout`` seconds (it is then stopped, so no half-started broker stays).
        """
        self.home.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.home / ".lock"):
            pid = self._running_pid()
            if pid is not None:
                deadline = time.monotonic() + timeout
                if self._wait_ready(pid, deadline):
                    return self.bootstrap
                raise BrokerError(
                    f"the broker in {self.home} runs (pid {pid}) but did not answer at "
                    f"{self.bootstrap} within {timeout:.0f}s; see {self.log_file}"
                )
            self.pid_file.unlink(missing_ok=True)  # stale: that process is gone
            self._check_ports_free()
            libs = ensure_jars(self.cache_dir)
            java = _find_java()
            self._write_config()
            self._format_storage(java, libs)
            # The clock starts here: a first-time jar download must not eat the start budget.
            deadline = time.monotonic() + timeout
            pid = self._launch(java, libs)
            if self._wait_ready(pid, deadline):
                return self.bootstrap
            self._terminate(pid, 10.0)
            self.pid_file.unlink(missing_ok=True)
            raise BrokerError(
                f"the broker in {self.home} did not answer at {self.bootstrap} within "
                f"{timeout:.0f}s and was stopped; {self.log_file} ends with:\n"
                f"{self._logs_tail() or '(empty)'}"
            )

    def _check_ports_free(self) -> None:
        for port, role in ((self.port, "client"), (self.controller_port, "controller")):
            if _port_free(port):
                continue
            who = (
                "another Kafka broker"
                if bootstrap_reachable(f"{_HOST}:{port}", 2.0)
                else "another process"
            )
            raise BrokerError(
                f"cannot start the broker in {self.home}: its {role} port {_HOST}:{port} is "
                f"already in use by {who}, not by this broker. Stop that process or pick "
                f"another port (DYNO_BROKER_PORT; the controller uses port+1)."
            )

    def _cluster_id(self) -> str:
        """This home's cluster id: made once and kept, since formatted storage is bound to it.

        If ``cluster.id`` was lost but storage is formatted, the id is taken from the
        storage's ``meta.properties`` rather than inventing one the data does not match.
        """
        id_file = self.home / "cluster.id"
        with contextlib.suppress(FileNotFoundError):
            existing = id_file.read_text(encoding="utf-8").strip()
            if existing:
                return existing
        cluster_id = ""
        with contextlib.suppress(FileNotFoundError):
            for line in (self.data_dir / "meta.properties").read_text("utf-8").splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "cluster.id":
                    cluster_id = value.strip()
        cluster_id = cluster_id or _new_cluster_id()
        id_file.write_text(cluster_id + "\n", encoding="utf-8")
        return cluster_id

    def _server_properties(self) -> str:
        """server.properties for a single-node combined broker+controller on loopback."""
        props = {
            "process.roles": "broker,controller",
            "node.id": str(_NODE_ID),
            # Static voters: storage must then be formatted without --standalone.
            "controller.quorum.voters": f"{_NODE_ID}@{_HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{_HOST}:{self.port},"
            f"CONTROLLER://{_HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{_HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # One node: every internal topic must make do with one replica.
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # The worker creates its topics explicitly (partitions, compaction); a typo in a
            # topic name must fail loudly instead of silently creating a new topic.
            "auto.create.topics.enable": "false",
            # Fast for tests: consumer groups rebalance at once instead of waiting 3 s, and
            # the internal topics created on first use have 4 partitions instead of 50, which
            # makes the first consumer group (and first transaction) markedly quicker.
            "group.initial.rebalance.delay.ms": "0",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.num.partitions": "4",
            # The log cleaner (compacted topics) reserves 128 MB of heap by default: a quarter of
            # our small heap. 16 MB compacts test-sized topics just as well.
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        }
        header = "# Written by dyno_stream.broker on every start; edits here are overwritten.\n"
        return header + "".join(f"{key}={value}\n" for key, value in props.items())

    def _write_config(self) -> None:
        for directory in (self.config_dir, self.data_dir, self.logs_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.server_properties.write_text(self._server_properties(), encoding="utf-8")
        (self.config_dir / "log4j2.properties").write_text(
            _resource_text("log4j2.properties"), encoding="utf-8"
        )

    def _java_base(self, java: str, libs: Path, heap: str) -> list[str]:
        """The java command up to the main class, as Kafka's kafka-run-class.sh builds it."""
        return [
            java,
            *shlex.split(heap),
            *_JVM_OPTS,
            f"-Dkafka.logs.dir={self.logs_dir}",
            f"-Dlog4j2.configurationFile={self.config_dir / 'log4j2.properties'}",
            "-cp",
            f"{libs}{os.sep}*",
        ]

    def _format_storage(self, java: str, libs: Path) -> None:
        """Format the log dir for KRaft once; a formatted dir (meta.properties) is left alone.

        Skipping the JVM run when already formatted saves a few seconds per restart;
        ``--ignore-formatted`` keeps the call harmless should the check ever be wrong.
        """
        if (self.data_dir / "meta.properties").is_file():
            return
        cmd = [
            *self._java_base(java, libs, "-Xmx256m"),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            self._cluster_id(),
            "-c",
            str(self.server_properties),
            "--ignore-formatted",
        ]
        try:
            proc = subprocess.run(
                cmd,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=FORMAT_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(
                f"formatting the broker storage in {self.data_dir} took over "
                f"{FORMAT_TIMEOUT_S:.0f}s"
            ) from exc
        if proc.returncode != 0:
            raise BrokerError(
                f"formatting the broker storage in {self.data_dir} failed (exit "
                f"{proc.returncode}):\n{_tail(proc.stdout or '') or '(no output)'}"
            )

    def _launch(self, java: str, libs: Path) -> int:
        """Start the JVM detached (own session, no terminal) and record its pid."""
        cmd = [*self._java_base(java, libs, self.heap), "kafka.Kafka", str(self.server_properties)]
        with self.console_file.open("wb") as console:
            try:
                # start_new_session: Ctrl-C in the terminal that started it, or the caller's
                # exit, must not take the broker down; only stop() does.
                self._proc = subprocess.Popen(
                    cmd,
                    cwd=self.home,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise BrokerError(f"could not run {java}: {exc}") from exc
        self.pid_file.write_text(f"{self._proc.pid}\n", encoding="utf-8")
        return self._proc.pid

    def _exited(self, pid: int) -> int | None:
        """Exit code if the process ``pid`` is gone (-1 if unknown), else None."""
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll()  # reaps our own child, so it does not linger as a zombie
        return None if _process_alive(pid) else -1

    def _wait_ready(self, pid: int, deadline: float) -> bool:
        """Poll until the broker answers (True), the deadline passes (False) or the JVM dies.

        The JVM dying raises :class:`BrokerError` with the tails of both logs, since that is
        where the reason (bad config, port clash, JVM flags) is.
        """
        while True:
            code = self._exited(pid)
            if code is not None:
                self.pid_file.unlink(missing_ok=True)
                raise BrokerError(
                    f"the broker JVM in {self.home} exited during start-up (code {code}); "
                    f"its logs end with:\n{self._logs_tail() or '(empty)'}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if bootstrap_reachable(self.bootstrap, min(2.0, remaining)):
                return True
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def _logs_tail(self) -> str:
        parts = []
        for path in (self.console_file, self.log_file):
            tail = _file_tail(path, _LOG_TAIL_LINES // 2)
            if tail:
                parts.append(f"--- {path} ---\n{tail}")
        return "\n".join(parts)

    # -- stop ---------------------------------------------------------------------------------

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop this home's broker: SIGTERM, then SIGKILL after ``timeout`` seconds.

        SIGTERM lets Kafka shut down cleanly (flush, close logs), which makes the next start
        skip log recovery. Returns True if a broker was running and is now stopped, False if
        there was nothing to stop. The pid file is removed either way.
        """
        if not self.home.is_dir():
            return False
        with _file_lock(self.home / ".lock"):
            pid = self._running_pid()
            if pid is None:
                self.pid_file.unlink(missing_ok=True)
                return False
            self._terminate(pid, timeout)
            self.pid_file.unlink(missing_ok=True)
            return True

    def _terminate(self, pid: int, timeout: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if self._wait_exit(pid, timeout):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not self._wait_exit(pid, 10.0):
            raise BrokerError(f"the broker in {self.home} (pid {pid}) survived SIGKILL")

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._exited(pid) is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        if self._proc is not None and self._proc.pid == pid:
            self._proc = None
        return True
