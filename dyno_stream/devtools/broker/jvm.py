"""Running Kafka's own main classes with ``java``: storage formatting and the broker's JVM.

The command line is the one Kafka's ``bin/kafka-run-class.sh`` builds (heap, G1 tuning, log
dir and log4j config as system properties, the cached jars as the classpath), so the broker
behaves as it would started by Kafka's scripts.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shlex
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dyno_stream.core.errors import LocalBrokerError
from dyno_stream.devtools.broker.processes import tail

#: How long formatting storage (a short JVM run) may take.
FORMAT_TIMEOUT_S: Final = 120.0
#: Heap of the storage tool: a short run that needs far less than the broker.
_FORMAT_HEAP: Final = "-Xmx256m"
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


def find_java() -> str:
    """The ``java`` to run: ``$JAVA_HOME/bin/java`` like Kafka's scripts, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file():
            return str(candidate)
    java = shutil.which("java")
    if java is None:
        raise LocalBrokerError(
            "'java' is not on PATH (and JAVA_HOME is unset); Kafka needs Java 17+"
        )
    return java


def new_cluster_id() -> str:
    """A KRaft cluster id as ``kafka-storage random-uuid`` makes: 16 random bytes, base64url,
    never starting with ``-`` (Kafka's ``Uuid.randomUuid`` draws again too: the storage tool
    would read such an id as an option, and formatting failed once in 64 starts)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cluster_id.startswith("-"):
            return cluster_id


def kept_cluster_id(id_file: Path, data_dir: Path) -> str:
    """The cluster id kept in ``id_file``, made there once: formatted storage is bound to it.

    If ``id_file`` was lost but storage is formatted, the id is taken from the storage's
    ``meta.properties`` rather than inventing one the data does not match.
    """
    with contextlib.suppress(FileNotFoundError):
        existing = id_file.read_text(encoding="utf-8").strip()
        if existing:
            return existing
    cluster_id = ""
    with contextlib.suppress(FileNotFoundError):
        for line in (data_dir / "meta.properties").read_text("utf-8").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "cluster.id":
                cluster_id = value.strip()
    cluster_id = cluster_id or new_cluster_id()
    id_file.write_text(cluster_id + "\n", encoding="utf-8")
    return cluster_id


@dataclass(frozen=True)
class KafkaJvm:
    """How one broker home runs Kafka's main classes: which java, which jars, where logs go."""

    java: str
    #: The directory of the cached jars (see ``ensure_jars``), the whole classpath.
    libs: Path
    #: The working directory of every run: the broker's home.
    home: Path
    logs_dir: Path
    #: log4j 2's config (Kafka 4.x), or log4j 1's (``log4j.properties``: Kafka 3.x, reload4j)
    log4j_config: Path

    @property
    def _log_config_option(self) -> str:
        if self.log4j_config.name == "log4j.properties":
            return f"-Dlog4j.configuration=file:{self.log4j_config}"
        return f"-Dlog4j2.configurationFile={self.log4j_config}"

    def command(self, heap: str, *main: str) -> list[str]:
        """The java command running ``main`` (class and arguments) with ``heap`` flags."""
        return [
            self.java,
            *shlex.split(heap),
            *_JVM_OPTS,
            f"-Dkafka.logs.dir={self.logs_dir}",
            self._log_config_option,
            "-cp",
            f"{self.libs}{os.sep}*",
            *main,
        ]

    def format_storage(self, cluster_id: str, server_properties: Path, data_dir: Path) -> None:
        """Format ``data_dir`` for KRaft with Kafka's storage tool.

        ``--ignore-formatted`` keeps the call harmless on a dir that is formatted already.
        Raises :class:`LocalBrokerError` with the tool's output if it fails or takes too long.
        """
        cmd = self.command(
            _FORMAT_HEAP,
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_id}",  # one argument, even for an id kept from before
            f"--config={server_properties}",
            "--ignore-formatted",
        )
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
            raise LocalBrokerError(
                f"formatting the broker storage in {data_dir} took over {FORMAT_TIMEOUT_S:.0f}s"
            ) from exc
        if proc.returncode != 0:
            raise LocalBrokerError(
                f"formatting the broker storage in {data_dir} failed (exit "
                f"{proc.returncode}):\n{tail(proc.stdout or '') or '(no output)'}"
            )

    def launch(
        self, heap: str, server_properties: Path, console_file: Path
    ) -> subprocess.Popen[bytes]:
        """Start the broker JVM detached (own session, no terminal), its output in ``console_file``.

        The caller records the pid: it is what ``stop`` and a later ``status`` go by.
        """
        cmd = self.command(heap, "kafka.Kafka", str(server_properties))
        with console_file.open("wb") as console:
            try:
                # start_new_session: Ctrl-C in the terminal that started it, or the caller's
                # exit, must not take the broker down; only stop() does.
                return subprocess.Popen(
                    cmd,
                    cwd=self.home,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise LocalBrokerError(f"could not run {self.java}: {exc}") from exc
