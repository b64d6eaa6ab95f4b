"""A real Apache Kafka broker for development, demos, tests and CI, run from Maven Central jars.

Our machines have Java and Maven and reach Maven Central, but neither Docker nor the Apache
download site: so the broker's own jars are resolved once into a cache and ``kafka.Kafka``
runs with ``java`` as a single-node KRaft broker. :class:`LocalBroker` formats storage,
starts the JVM detached, records its pid, waits until it answers, and stops it; every call is
idempotent. Overrides: ``DYNO_BROKER_HOME``, ``DYNO_BROKER_PORT``, ``DYNO_KAFKA_VERSION``
(a 3.x or 4.x release), ``DYNO_KAFKA_CACHE``. Its collaborators and why:
``docs/design/local-broker.md``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from dyno_stream.core.errors import LocalBrokerError
from dyno_stream.devtools.broker.jars import (
    ensure_jars,
    kafka_version,
    major_version,
    resource_text,
    version_key,
)
from dyno_stream.devtools.broker.jvm import KafkaJvm, find_java, kept_cluster_id
from dyno_stream.devtools.broker.processes import (
    LOG_TAIL_LINES,
    LOOPBACK_HOST,
    bootstrap_reachable,
    file_lock,
    file_tail,
    port_free,
    process_alive,
    process_args,
)
from dyno_stream.devtools.broker.security import BrokerTls, ListenerSecurity, ScramUser
from dyno_stream.devtools.broker.server_config import render_server_properties

#: Port of the PLAINTEXT listener clients use; the KRaft controller listens on the next port.
DEFAULT_PORT: Final = 19092
#: JVM heap flags. Kafka's scripts default to 1 GB; half of that is plenty for a test broker and
#: leaves room on a 2-core CI machine that also runs the tests and the worker.
DEFAULT_HEAP: Final = "-Xms256m -Xmx512m"


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
        raise LocalBrokerError(f"DYNO_BROKER_PORT must be a port number, not {env!r}") from None
    return port


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

    The broker listens on loopback only, its controller on ``port + 1``. Optional secured
    listeners beside the open PLAINTEXT one: ``sasl_port`` (SASL_PLAINTEXT with SCRAM, needs
    ``scram_users``) and ``ssl_port`` (TLS from the PEM files in ``tls``; SASL_SSL with
    ``scram_users``). Each start upserts the SCRAM users' passwords through the PLAINTEXT
    listener (never on a command line or in a file) and waits until they can log in.

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
    #: The Apache Kafka release to run (see :func:`kafka_version`); its jars are cached apart.
    kafka_version: str = field(default_factory=kafka_version)
    #: server.properties settings over the rendered ones (tests: :data:`FAST_GROUP_TIMING`)
    properties: Mapping[str, str] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # Absolute: the paths end up in server.properties, read by a JVM running in ``home``;
        # resolved: two instances for one home agree on the JVM's command line.
        self.home = Path(self.home).expanduser().resolve()
        self.kafka_version = kafka_version(self.kafka_version)
        if not 1 <= self.port <= 65534:
            raise LocalBrokerError(
                f"broker port must be in 1..65534 (port+1 is the controller's), not {self.port}"
            )
        self.scram_users = tuple(self.scram_users)
        if self.sasl_port is not None and not self.scram_users:
            raise LocalBrokerError("a SASL listener (sasl_port) needs at least one SCRAM user")
        if self.ssl_port is not None and self.tls is None:
            raise LocalBrokerError("a TLS listener (ssl_port) needs the broker's PEM files (tls)")
        ports = [p for p, _ in self._ports()]
        if len(set(ports)) != len(ports):
            raise LocalBrokerError(f"the broker's listener ports must differ, not {ports}")
        for user in self.scram_users:
            if not user.name:
                raise LocalBrokerError("a SCRAM user needs a name")
            if not user.password:
                raise LocalBrokerError(f"SCRAM user {user.name!r} has an empty password")

    # -- paths and addresses ------------------------------------------------------------------

    @property
    def controller_port(self) -> int:
        """The KRaft controller listener's port: always the client port plus one."""
        return self.port + 1

    @property
    def bootstrap(self) -> str:
        """The ``bootstrap.servers`` value clients use (the open PLAINTEXT listener)."""
        return f"{LOOPBACK_HOST}:{self.port}"

    @property
    def sasl_bootstrap(self) -> str | None:
        """``bootstrap.servers`` of the SASL_PLAINTEXT listener, if there is one."""
        return self._security.sasl_bootstrap

    @property
    def ssl_bootstrap(self) -> str | None:
        """``bootstrap.servers`` of the TLS listener, if there is one."""
        return self._security.ssl_bootstrap

    @property
    def ssl_protocol(self) -> Literal["SASL_SSL", "SSL"]:
        """The security protocol of the TLS listener: SASL_SSL when there are SCRAM users."""
        return self._security.ssl_protocol

    @property
    def _security(self) -> ListenerSecurity:
        """The secured listeners as this broker's settings say now (they may be changed)."""
        return ListenerSecurity(
            self.scram_users, self.sasl_port, self.ssl_port, self.tls, self.keystore_file
        )

    def _ports(self) -> list[tuple[int, str]]:
        """Every port the broker listens on, with the role named in error messages."""
        return [
            (self.port, "client"),
            (self.controller_port, "controller"),
            *self._security.ports(),
        ]

    def _listeners(self) -> list[tuple[str, int]]:
        """The client listeners (name = security protocol) and their ports."""
        return [("PLAINTEXT", self.port), *self._security.listeners()]

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
    def log_config(self) -> Path:
        """The broker's logging config: log4j 2's for Kafka 4.x, log4j 1's (reload4j) for 3.x."""
        name = "log4j2.properties" if major_version(self.kafka_version) >= 4 else "log4j.properties"
        return self.config_dir / name

    @property
    def formatted_by_file(self) -> Path:
        """The Kafka version that formatted ``data_dir``: an older release cannot read it."""
        return self.home / "kafka.version"

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
        if not process_alive(pid):
            return False
        args = process_args(pid)
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

        Raises :class:`LocalBrokerError` if the port or the controller port is taken by anything
        else, if the JVM exits during start-up (with the tail of its logs), if it does not
        answer within ``timeout`` seconds (it is then stopped, so no half-started broker
        stays), or if this home's broker already runs with other listeners than asked for.
        """
        self.home.mkdir(parents=True, exist_ok=True)
        with file_lock(self.home / ".lock"):
            pid = self._running_pid()
            if pid is not None:
                self._check_running_config(pid)
                deadline = time.monotonic() + timeout
                if self._wait_ready(pid, deadline):
                    self._secure(deadline)
                    return self.bootstrap
                raise LocalBrokerError(
                    f"the broker in {self.home} runs (pid {pid}) but did not answer at "
                    f"{self.bootstrap} within {timeout:.0f}s; see {self.log_file}"
                )
            self.pid_file.unlink(missing_ok=True)  # stale: that process is gone
            self._check_ports_free()
            self._check_formatted_version()
            libs = ensure_jars(self.cache_dir, self.kafka_version)
            java = find_java()
            self._write_config()
            self._format_storage(java, libs)
            # The clock starts here: a first-time jar download must not eat the start budget.
            deadline = time.monotonic() + timeout
            pid = self._launch(java, libs)
            try:
                if self._wait_ready(pid, deadline):
                    self._secure(deadline)
                    return self.bootstrap
            except LocalBrokerError:
                if self._exited(pid) is None:  # up but not secured: no half-started broker
                    self._terminate(pid, 10.0)
                    self.pid_file.unlink(missing_ok=True)
                raise
            self._terminate(pid, 10.0)
            self.pid_file.unlink(missing_ok=True)
            raise LocalBrokerError(
                f"the broker in {self.home} did not answer at {self.bootstrap} within "
                f"{timeout:.0f}s and was stopped; {self.log_file} ends with:\n"
                f"{self._logs_tail() or '(empty)'}"
            )

    def _check_formatted_version(self) -> None:
        """Refuse to start an older Kafka on storage a newer one formatted (its metadata
        version is beyond what the older release reads): say so, rather than the JVM's
        stack trace."""
        try:
            formatted = self.formatted_by_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return
        if version_key(formatted) > version_key(self.kafka_version):
            raise LocalBrokerError(
                f"the broker storage in {self.home} was formatted by Kafka {formatted}, newer "
                f"than the {self.kafka_version} asked for, which cannot read it: use another "
                f"home (DYNO_BROKER_HOME) or delete {self.home} while the broker is stopped"
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
            raise LocalBrokerError(
                f"the broker in {self.home} already runs (pid {pid}) with other settings "
                "(Kafka version, listeners, ports) than asked for; stop it first "
                "(dyno-stream broker stop)"
            )

    def _secure(self, deadline: float) -> None:
        """Store the SCRAM users' passwords, then wait until each secured listener logs in."""
        self._security.secure(self.bootstrap, deadline, self._logs_tail)

    def _check_ports_free(self) -> None:
        for port, role in self._ports():
            if port_free(port):
                continue
            who = (
                "another Kafka broker"
                if bootstrap_reachable(f"{LOOPBACK_HOST}:{port}", 2.0)
                else "another process"
            )
            raise LocalBrokerError(
                f"cannot start the broker in {self.home}: its {role} port "
                f"{LOOPBACK_HOST}:{port} is already in use by {who}, not by this broker. "
                f"Stop that process or pick another port (DYNO_BROKER_PORT; the controller "
                f"uses port+1)."
            )

    def _server_properties(self) -> str:
        """server.properties for a single-node combined broker+controller on loopback; its
        first line names the Kafka version, so a running broker of another one is refused."""
        return f"# Kafka {self.kafka_version}\n" + render_server_properties(
            listeners=self._listeners(),
            controller_port=self.controller_port,
            data_dir=self.data_dir,
            security=self._security.server_properties(),
            overrides=self.properties,
        )

    def _write_config(self) -> None:
        for directory in (self.config_dir, self.data_dir, self.logs_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._security.write_keystore()
        self.server_properties.write_text(self._server_properties(), encoding="utf-8")
        self.log_config.write_text(resource_text(self.log_config.name), encoding="utf-8")

    def _jvm(self, java: str, libs: Path) -> KafkaJvm:
        """How this home runs Kafka's main classes with ``java`` and the jars in ``libs``."""
        return KafkaJvm(
            java,
            libs,
            home=self.home,
            logs_dir=self.logs_dir,
            log4j_config=self.log_config,
        )

    def _format_storage(self, java: str, libs: Path) -> None:
        """Format the log dir for KRaft once; a formatted dir (meta.properties) is left alone.

        Skipping the JVM run when already formatted saves a few seconds per restart;
        ``--ignore-formatted`` keeps the call harmless should the check ever be wrong.
        """
        if (self.data_dir / "meta.properties").is_file():
            return
        cluster_id = kept_cluster_id(self.home / "cluster.id", self.data_dir)
        self._jvm(java, libs).format_storage(cluster_id, self.server_properties, self.data_dir)
        self.formatted_by_file.write_text(self.kafka_version + "\n", encoding="utf-8")

    def _launch(self, java: str, libs: Path) -> int:
        """Start the JVM detached (own session, no terminal) and record its pid."""
        self._proc = self._jvm(java, libs).launch(
            self.heap, self.server_properties, self.console_file
        )
        self.pid_file.write_text(f"{self._proc.pid}\n", encoding="utf-8")
        return self._proc.pid

    def _exited(self, pid: int) -> int | None:
        """Exit code if the process ``pid`` is gone (-1 if unknown), else None."""
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll()  # reaps our own child, so it does not linger as a zombie
        return None if process_alive(pid) else -1

    def _wait_ready(self, pid: int, deadline: float) -> bool:
        """Poll until the broker answers (True), the deadline passes (False) or the JVM dies.

        The JVM dying raises :class:`LocalBrokerError` with the tails of both logs, since that is
        where the reason (bad config, port clash, JVM flags) is.
        """
        while True:
            code = self._exited(pid)
            if code is not None:
                self.pid_file.unlink(missing_ok=True)
                raise LocalBrokerError(
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
            tail = file_tail(path, LOG_TAIL_LINES // 2)
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
        with file_lock(self.home / ".lock"):
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
            raise LocalBrokerError(f"the broker in {self.home} (pid {pid}) survived SIGKILL")

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._exited(pid) is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        if self._proc is not None and self._proc.pid == pid:
            self._proc = None
        return True
