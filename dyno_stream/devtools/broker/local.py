"""A real Apache Kafka broker for development, demos, tests and CI, run from Maven Central jars.

Why this exists: our machines have Java and Maven and reach Maven Central, but have neither
Docker nor the Apache download site. So instead of a container or a tarball we resolve the
broker's own jars (``org.apache.kafka:kafka_2.13`` plus a log4j binding, listed in the packaged
``pom.xml`` beside it) once into a cache, and start ``kafka.Kafka`` with ``java`` as a single-node
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

Security (optional): besides the open PLAINTEXT listener (which the controller link and
admin work keep using, on loopback), a :class:`LocalBroker` can open a SASL_PLAINTEXT
listener with SCRAM logins (:class:`ScramUser`) and a TLS listener from PEM files
(:class:`BrokerTls`; SASL_SSL when there are SCRAM users, else SSL), so clients can be tested
against the same authentication and encryption a production cluster asks of them.

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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from dyno_stream.errors import BrokerError

__all__ = [
    "DEFAULT_HEAP",
    "DEFAULT_PORT",
    "KAFKA_VERSION",
    "BrokerStatus",
    "BrokerTls",
    "LocalBroker",
    "ScramUser",
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


_PACKAGE_DATA: Final = Path(__file__).resolve().parent


def _resource_text(name: str) -> str:
    """Text of a file shipped beside this module (package data, so it works installed).

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
        raise BrokerError("dyno_stream/devtools/broker/pom.xml has no <kafka.version> property")
    return (node.text or "").strip()


#: The Apache Kafka version the local broker runs (from ``dyno_stream/devtools/broker/pom.xml``).
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


def bootstrap_reachable(
    bootstrap: str, timeout: float = 5.0, client_config: Mapping[str, Any] | None = None
) -> bool:
    """Whether a Kafka cluster answers a metadata request at ``bootstrap`` within ``timeout`` s.

    A plain TCP probe comes first: it answers "no" in microseconds while nothing listens and
    keeps librdkafka from logging connection-refused noise. Only then an ``AdminClient`` asks
    for cluster metadata, which proves a Kafka broker (not just any server) is there and has
    registered itself (a broker that is still fencing lists no brokers).

    ``client_config`` adds librdkafka settings (security protocol, SASL login, TLS) for a
    listener that demands them; the answer is then also whether that login is accepted.
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
            **(client_config or {}),
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
    """A KRaft cluster id as ``kafka-storage random-uuid`` makes: 16 random bytes, base64url,
    never starting with ``-`` (Kafka's ``Uuid.randomUuid`` draws again too: the storage tool
    would read such an id as an option, and formatting failed once in 64 starts)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass(frozen=True)
class BrokerStatus:
    """A snapshot of a :class:`LocalBroker`: whether its JVM runs, and where to reach it."""

    running: bool
    pid: int | None
    bootstrap: str
    home: Path


ScramMechanismName = Literal["SCRAM-SHA-256", "SCRAM-SHA-512"]

#: Mechanisms the SASL listeners offer; a login is checked against its own mechanism's
#: credential, so offering both costs nothing and lets clients pick.
_SCRAM_MECHANISMS: Final[tuple[ScramMechanismName, ...]] = ("SCRAM-SHA-256", "SCRAM-SHA-512")
#: PBKDF2 rounds for stored SCRAM credentials (Kafka accepts 4096..16384).
_SCRAM_ITERATIONS: Final = 8192
_SCRAM_LOGIN: Final = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


@dataclass(frozen=True)
class ScramUser:
    """A login the broker's SASL listeners accept (the password never shows in a repr)."""

    name: str
    password: str = field(repr=False)
    mechanism: ScramMechanismName = "SCRAM-SHA-512"

    def client_config(self) -> dict[str, str]:
        """The librdkafka settings that log in as this user (without the security protocol)."""
        return {
            "sasl.mechanism": self.mechanism,
            "sasl.username": self.name,
            "sasl.password": self.password,
        }


@dataclass(frozen=True)
class BrokerTls:
    """PEM files for the broker's TLS listener.

    ``certificate`` holds the broker's certificate, then any intermediates (a chain, leaf
    first); its subject alternative names must include ``127.0.0.1``, the address clients
    dial, since librdkafka verifies the host name by default. ``private_key`` is its key,
    unencrypted PKCS#8 (``-----BEGIN PRIVATE KEY-----``, what ``openssl pkcs8 -topk8 -nocrypt``
    writes), the only unencrypted form Kafka's PEM key store reads.
    """

    certificate: Path
    private_key: Path


@dataclass
class LocalBroker:
    """A single-node KRaft Kafka broker living in ``home``, reached at ``127.0.0.1:port``.

    ``home`` holds everything the broker owns: ``config/`` (server.properties and the log4j
    config, rewritten on each start), ``data/`` (the log dirs and the KRaft metadata log),
    ``logs/`` (``server.log`` at WARN, ``broker.out`` for the JVM's own output), ``cluster.id``
    and ``broker.pid``. Deleting ``home`` while the broker is stopped resets it completely.

    The broker listens on loopback only (it is a development fixture, not a service) and its
    controller on ``port + 1``. Optional secured listeners, beside the open PLAINTEXT one that
    the controller link and admin work keep using: ``sasl_port`` (SASL_PLAINTEXT with SCRAM,
    needs ``scram_users``) and ``ssl_port`` (TLS from the PEM files in ``tls``; SASL_SSL when
    there are ``scram_users``, plain SSL otherwise). Each start stores the SCRAM users' current
    passwords in the cluster (an upsert through the PLAINTEXT listener, so passwords never
    appear on a command line or in a file) and waits until the users can log in.

    All state lives in ``home`` (the object itself keeps only its settings and the handle of
    a JVM it started, to reap it), so a new instance with the same ``home`` (another process,
    a CLI) sees and controls the same broker.
    """

    home: Path = field(default_factory=_default_home)
    port: int = field(default_factory=_default_port)
    heap: str = DEFAULT_HEAP
    #: Root of the jar cache (see :func:`ensure_jars`); None means :func:`default_cache_root`.
    cache_dir: Path | None = None
    #: Logins for the SASL listeners (SCRAM credentials stored in the cluster on each start).
    scram_users: tuple[ScramUser, ...] = ()
    #: Port of a SASL_PLAINTEXT listener (SCRAM); None: no such listener.
    sasl_port: int | None = None
    #: Port of a TLS listener (SASL_SSL with ``scram_users``, else SSL); needs ``tls``.
    ssl_port: int | None = None
    tls: BrokerTls | None = None
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
        self.scram_users = tuple(self.scram_users)
        if self.sasl_port is not None and not self.scram_users:
            raise BrokerError("a SASL listener (sasl_port) needs at least one SCRAM user")
        if self.ssl_port is not None and self.tls is None:
            raise BrokerError("a TLS listener (ssl_port) needs the broker's PEM files (tls)")
        ports = [p for p, _ in self._ports()]
        if len(set(ports)) != len(ports):
            raise BrokerError(f"the broker's listener ports must differ, not {ports}")
        for user in self.scram_users:
            if not user.name:
                raise BrokerError("a SCRAM user needs a name")
            if not user.password:
                raise BrokerError(f"SCRAM user {user.name!r} has an empty password")

    # -- paths and addresses ------------------------------------------------------------------

    @property
    def controller_port(self) -> int:
        """The KRaft controller listener's port: always the client port plus one."""
        return self.port + 1

    @property
    def bootstrap(self) -> str:
        """The ``bootstrap.servers`` value clients use (the open PLAINTEXT listener)."""
        return f"{_HOST}:{self.port}"

    @property
    def sasl_bootstrap(self) -> str | None:
        """``bootstrap.servers`` of the SASL_PLAINTEXT listener, if there is one."""
        return None if self.sasl_port is None else f"{_HOST}:{self.sasl_port}"

    @property
    def ssl_bootstrap(self) -> str | None:
        """``bootstrap.servers`` of the TLS listener, if there is one."""
        return None if self.ssl_port is None else f"{_HOST}:{self.ssl_port}"

    @property
    def ssl_protocol(self) -> Literal["SASL_SSL", "SSL"]:
        """The security protocol of the TLS listener: SASL_SSL when there are SCRAM users."""
        return "SASL_SSL" if self.scram_users else "SSL"

    def _ports(self) -> list[tuple[int, str]]:
        """Every port the broker listens on, with the role named in error messages."""
        ports = [(self.port, "client"), (self.controller_port, "controller")]
        if self.sasl_port is not None:
            ports.append((self.sasl_port, "SASL"))
        if self.ssl_port is not None:
            ports.append((self.ssl_port, "TLS"))
        return ports

    def _listeners(self) -> list[tuple[str, int]]:
        """The client listeners (name = security protocol) and their ports."""
        listeners = [("PLAINTEXT", self.port)]
        if self.sasl_port is not None:
            listeners.append(("SASL_PLAINTEXT", self.sasl_port))
        if self.ssl_port is not None:
            listeners.append((self.ssl_protocol, self.ssl_port))
        return listeners

    @property
    def keystore_file(self) -> Path:
        """The TLS listener's key store: the private key, then the certificate chain (PEM)."""
        return self.config_dir / "keystore.pem"

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
        AdminClient until it lists itself. Either way the SCRAM users' passwords are then
        stored and each secured listener is polled until it accepts a login.

        Raises :class:`BrokerError` if the port or the controller port is taken by anything
        else, if the JVM exits during start-up (with the tail of its logs), if it does not
        answer within ``timeout`` seconds (it is then stopped, so no half-started broker
        stays), or if this home's broker already runs with other listeners than asked for.
        """
        self.home.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.home / ".lock"):
            pid = self._running_pid()
            if pid is not None:
                self._check_running_config(pid)
                deadline = time.monotonic() + timeout
                if self._wait_ready(pid, deadline):
                    self._secure(deadline)
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
            try:
                if self._wait_ready(pid, deadline):
                    self._secure(deadline)
                    return self.bootstrap
            except BrokerError:
                if self._exited(pid) is None:  # up but not secured: no half-started broker
                    self._terminate(pid, 10.0)
                    self.pid_file.unlink(missing_ok=True)
                raise
            self._terminate(pid, 10.0)
            self.pid_file.unlink(missing_ok=True)
            raise BrokerError(
                f"the broker in {self.home} did not answer at {self.bootstrap} within "
                f"{timeout:.0f}s and was stopped; {self.log_file} ends with:\n"
                f"{self._logs_tail() or '(empty)'}"
            )

    def _check_running_config(self, pid: int) -> None:
        """Refuse to hand out a running broker whose listeners differ from the ones asked for.

        Without this, asking for a SASL listener from a home whose broker was started without
        one would "succeed" and leave clients failing to connect for no visible reason.
        """
        try:
            running = self.server_properties.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        if running != self._server_properties():
            raise BrokerError(
                f"the broker in {self.home} already runs (pid {pid}) with other settings "
                f"(listeners, ports) than asked for; stop it first (dyno-stream broker stop)"
            )

    def _secure(self, deadline: float) -> None:
        """Store the SCRAM users' passwords, then wait until each secured listener logs in."""
        if self.scram_users:
            self._store_scram_users(deadline)
        probes: list[tuple[str, str, dict[str, Any]]] = []
        if self.sasl_bootstrap is not None:
            for user in self.scram_users:
                conf = {"security.protocol": "SASL_PLAINTEXT", **user.client_config()}
                probes.append(("SASL_PLAINTEXT", self.sasl_bootstrap, conf))
        if self.ssl_bootstrap is not None:
            # Only "is it up and does the login work": the clients under test verify the
            # certificate themselves, against a CA this broker is not told about.
            tls: dict[str, Any] = {
                "security.protocol": self.ssl_protocol,
                "enable.ssl.certificate.verification": False,
            }
            for user in self.scram_users[:1]:
                tls.update(user.client_config())
            probes.append((self.ssl_protocol, self.ssl_bootstrap, tls))
        for listener, bootstrap, conf in probes:
            while not bootstrap_reachable(
                bootstrap, max(0.1, min(2.0, deadline - time.monotonic())), conf
            ):
                if time.monotonic() >= deadline:
                    who = f" as {conf['sasl.username']!r}" if "sasl.username" in conf else ""
                    raise BrokerError(
                        f"the broker's {listener} listener at {bootstrap} did not accept a "
                        f"connection{who} in time; its logs end with:\n"
                        f"{self._logs_tail() or '(empty)'}"
                    )
                time.sleep(0.2)

    def _store_scram_users(self, deadline: float) -> None:
        """Upsert every SCRAM user's credential through the open PLAINTEXT listener.

        Done on every start rather than with ``kafka-storage format --add-scram``: that works
        only on a fresh home and would put the passwords on a command line, where any local
        user can read them. The upsert also makes a changed password take effect at once.
        """
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        upserts: list[UserScramCredentialAlteration] = [
            UserScramCredentialUpsertion(
                user.name,
                ScramCredentialInfo(
                    ScramMechanism[user.mechanism.replace("-", "_")], _SCRAM_ITERATIONS
                ),
                user.password.encode("utf-8"),
            )
            for user in self.scram_users
        ]
        remaining = max(1.0, deadline - time.monotonic())
        futures = admin.alter_user_scram_credentials(upserts, request_timeout=remaining)
        for name, future in futures.items():
            try:
                future.result(timeout=remaining)
            except KafkaException as exc:
                raise BrokerError(f"storing the SCRAM login of {name!r} failed: {exc}") from exc

    def _check_ports_free(self) -> None:
        for port, role in self._ports():
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
            "listeners": ",".join(
                [
                    *(f"{name}://{_HOST}:{port}" for name, port in self._listeners()),
                    f"CONTROLLER://{_HOST}:{self.controller_port}",
                ]
            ),
            "advertised.listeners": ",".join(
                f"{name}://{_HOST}:{port}" for name, port in self._listeners()
            ),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(
                ["CONTROLLER:PLAINTEXT", *(f"{name}:{name}" for name, _ in self._listeners())]
            ),
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
        props.update(self._security_properties())
        header = (
            "# Written by dyno_stream.devtools.broker on every start; edits here are overwritten.\n"
        )
        return header + "".join(f"{key}={value}\n" for key, value in props.items())

    def _security_properties(self) -> dict[str, str]:
        """Settings of the SASL and TLS listeners (none without them).

        Kafka wants a JAAS login module per SASL listener and mechanism even where, as here,
        it only checks logins against the SCRAM credentials in the cluster metadata.
        """
        props: dict[str, str] = {}
        sasl_listeners = [name for name, _ in self._listeners() if name.startswith("SASL_")]
        if sasl_listeners:
            props["sasl.enabled.mechanisms"] = ",".join(_SCRAM_MECHANISMS)
            for name in sasl_listeners:
                for mechanism in _SCRAM_MECHANISMS:
                    key = f"listener.name.{name.lower()}.{mechanism.lower()}.sasl.jaas.config"
                    props[key] = _SCRAM_LOGIN
        if self.ssl_port is not None:
            prefix = f"listener.name.{self.ssl_protocol.lower()}."
            props[prefix + "ssl.keystore.type"] = "PEM"
            props[prefix + "ssl.keystore.location"] = str(self.keystore_file)
        return props

    def _write_keystore(self) -> None:
        """Join the TLS key and certificate chain into the one PEM file Kafka reads.

        Checked here, because Kafka's own complaint about a key in the wrong form is a stack
        trace deep in its log. Written owner-only: it holds a private key.
        """
        if self.tls is None:
            self.keystore_file.unlink(missing_ok=True)
            return
        try:
            key = self.tls.private_key.read_text(encoding="ascii")
            chain = self.tls.certificate.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise BrokerError(f"cannot read the broker's TLS files: {exc}") from exc
        if "-----BEGIN PRIVATE KEY-----" not in key:
            raise BrokerError(
                f"{self.tls.private_key} is not an unencrypted PKCS#8 PEM key "
                "('-----BEGIN PRIVATE KEY-----'); convert it with "
                "'openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8'"
            )
        if "-----BEGIN CERTIFICATE-----" not in chain:
            raise BrokerError(f"{self.tls.certificate} holds no PEM certificate")
        fd = os.open(self.keystore_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(key.strip() + "\n" + chain.strip() + "\n")

    def _write_config(self) -> None:
        for directory in (self.config_dir, self.data_dir, self.logs_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._write_keystore()
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
            f"--cluster-id={self._cluster_id()}",  # one argument, even for an id kept from before
            f"--config={self.server_properties}",
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
