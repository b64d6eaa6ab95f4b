"""The broker's jars and resource files: the packaged poms, the Kafka versions, the cache.

Our machines reach Maven Central but not the Apache download site, so the broker runs from
its own jars (``org.apache.kafka:kafka_2.13`` plus a logging binding, listed in a pom beside
this module), which :func:`ensure_jars` resolves once per Kafka version with Maven into a
cache. A marker written only after a complete download tells a finished cache from a half one.

Two release lines are supported, each with its pom: Kafka 4.x (``pom.xml``, whose
``kafka.version`` is the default, :data:`KAFKA_VERSION`) logs through log4j 2; Kafka 3.x
(``pom-3.xml``, 3.7 and later) through reload4j. Any version of a line is the same pom with
``-Dkafka.version`` on Maven's command line.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Final

from dyno_stream.core.errors import LocalBrokerError
from dyno_stream.devtools.broker.processes import file_lock, tail

#: How long a single ``mvn`` download may take before we give up (a cold cache is ~45 MB).
MVN_TIMEOUT_S: Final = 900.0

_RESOURCES: Final = Path(__file__).resolve().parent


def resource_text(name: str) -> str:
    """Text of a file shipped beside this module (package data, so it works installed).

    Found next to this module rather than via ``importlib.resources``: pip installs (regular or
    editable) always put package data on disk, and this keeps working even where an editable
    install registered the package as a namespace package.
    """
    return (_RESOURCES / name).read_text(encoding="utf-8")


def _pom_kafka_version(name: str = "pom.xml") -> str:
    """The Kafka version pinned in a packaged pom, so the version lives in one place only."""
    root = ET.fromstring(resource_text(name))
    node = root.find(
        "{http://maven.apache.org/POM/4.0.0}properties/"
        "{http://maven.apache.org/POM/4.0.0}kafka.version"
    )
    if node is None or not (node.text or "").strip():
        raise LocalBrokerError(
            f"dyno_stream/devtools/broker/{name} has no <kafka.version> property"
        )
    return (node.text or "").strip()


#: The Apache Kafka version the local broker runs by default (from ``pom.xml`` beside this
#: module); ``DYNO_KAFKA_VERSION`` or ``--kafka-version`` pick another (:func:`kafka_version`).
KAFKA_VERSION: Final = _pom_kafka_version()

_VERSION: Final = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


def kafka_version(version: str | None = None) -> str:
    """The Kafka version to run: ``version``, else ``DYNO_KAFKA_VERSION``, else the default.

    Raises :class:`LocalBrokerError` for a version this tooling cannot start (not x.y.z, or
    older than 3.7: the single-node KRaft settings it writes need 3.7's group settings).
    """
    chosen = version or os.environ.get("DYNO_KAFKA_VERSION") or KAFKA_VERSION
    match = _VERSION.match(chosen)
    if match is None or (int(match[1]), int(match[2])) < (3, 7) or int(match[1]) > 4:
        raise LocalBrokerError(
            f"Kafka version {chosen!r} is not one the local broker runs: give a release "
            f"3.7.0 to 4.x.y, such as 3.9.1 or {KAFKA_VERSION} (DYNO_KAFKA_VERSION, "
            "--kafka-version)"
        )
    return chosen


def major_version(version: str) -> int:
    """The release line of ``version`` (3 or 4): it decides the pom and the logging."""
    return int(version.split(".", 1)[0])


def version_key(version: str) -> tuple[int, ...]:
    """``"3.9.1"`` as ``(3, 9, 1)``, to compare releases (anything unreadable sorts first)."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return ()


def pom_name(version: str) -> str:
    """The packaged pom that lists ``version``'s runtime jars."""
    return "pom.xml" if major_version(version) >= 4 else "pom-3.xml"


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


def _marker_valid(marker: Path, fingerprint: str, libs: Path, version: str) -> bool:
    """Whether a previous download of exactly this pom completed into ``libs``."""
    try:
        first_line = marker.read_text(encoding="utf-8").split("\n", 1)[0].strip()
    except FileNotFoundError:
        return False
    return first_line == fingerprint and (libs / f"kafka_2.13-{version}.jar").is_file()


def ensure_jars(cache_dir: Path | None = None, version: str | None = None) -> Path:
    """Make sure Kafka ``version``'s runtime jars are cached, downloading them once; return
    their dir. ``version``: see :func:`kafka_version` (default: :data:`KAFKA_VERSION`).

    The jars land in ``<cache root>/kafka-<version>/libs`` where the cache root is ``cache_dir``
    or :func:`default_cache_root`. Maven does the resolving (it knows the transitive runtime
    dependencies and checksums, and reuses ``~/.m2``), run on a copy of the packaged pom in a
    temporary directory so nothing is written into the installed package.

    Idempotent and crash safe: Maven writes into a staging directory that is renamed into place,
    and a marker (holding a hash of the pom) is written only after that, so an interrupted
    download is redone and a changed pom triggers a fresh download.

    Raises :class:`LocalBrokerError` if Maven is missing or fails (with the tail of its output).
    """
    version = kafka_version(version)
    root = (cache_dir if cache_dir is not None else default_cache_root()).expanduser()
    version_dir = root / f"kafka-{version}"
    libs = version_dir / "libs"
    marker = version_dir / "libs.complete"
    pom_text = resource_text(pom_name(version))
    # the version too where it is not the pom's own: a pom serves every version of its line
    # (-Dkafka.version), and a cache made for the pinned one stays valid as it was made
    pinned = version == _pom_kafka_version(pom_name(version))
    fingerprint = hashlib.sha256(
        pom_text.encode("utf-8") if pinned else f"{version}\n{pom_text}".encode()
    ).hexdigest()
    if _marker_valid(marker, fingerprint, libs, version):
        return libs

    with file_lock(version_dir / ".lock"):
        if _marker_valid(marker, fingerprint, libs, version):  # another finished meanwhile
            return libs
        marker.unlink(missing_ok=True)
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LocalBrokerError(
                "Maven ('mvn') is not on PATH; it is needed once to download the Kafka "
                f"{version} broker jars into {libs} (install Maven 3.8+ and Java 17+)"
            )
        staging = version_dir / "libs.partial"
        _maven_download(mvn, pom_text, version, staging)
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        jars = sorted(p.name for p in libs.glob("*.jar"))
        marker.write_text(fingerprint + "\n" + "\n".join(jars) + "\n", encoding="utf-8")
    return libs


def _maven_download(mvn: str, pom_text: str, version: str, staging: Path) -> None:
    """Maven copies the pom's runtime dependencies for ``version`` into ``staging``; on a
    failure ``staging`` is removed and the error names the command and its output's end."""
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
            f"-Dkafka.version={version}",
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
            raise LocalBrokerError(
                f"downloading the Kafka {version} jars with Maven took longer than "
                f"{MVN_TIMEOUT_S:.0f}s; is Maven Central reachable?"
            ) from exc
    if proc.returncode != 0 or not any(staging.glob("*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        raise LocalBrokerError(
            f"could not download the Kafka {version} broker jars: "
            f"'{shlex.join(cmd)}' exited with {proc.returncode}; its output ends with:\n"
            f"{tail(proc.stdout or '') or '(no output)'}"
        )
