"""Processes, ports and logs of the local broker: the operating-system side of running it.

Kept apart from the launcher (``local.py``) because these helpers know nothing of Kafka's
configuration: whether a port is free, whether a pid is alive and whose command line it has,
an advisory lock between processes, the tail of a log for an error message, and whether a
Kafka cluster answers at an address.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

#: The only address the local broker listens on: it is a development fixture, not a service.
LOOPBACK_HOST: Final = "127.0.0.1"
#: Lines of a log quoted in an error message.
LOG_TAIL_LINES: Final = 40


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
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


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """Last ``lines`` meaningful lines of ``text``: enough context for an error message.

    Drops terminal colour codes (Maven 3.8 emits some even with ``-B -Dstyle.color=never``)
    and Maven's empty ``[ERROR]`` spacer lines, which would only crowd out the real cause.
    """
    kept = []
    for line in _ANSI_ESCAPE.sub("", text).splitlines():
        if line.strip() and line.strip() != "[ERROR]":
            kept.append(line.rstrip())
    return "\n".join(kept[-lines:])


def file_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Tail of a log file, reading only its end (logs can be large); '' if it does not exist."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except FileNotFoundError:
        return ""
    return tail(data.decode("utf-8", errors="replace"), lines)


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
        hosts.append((host.strip("[]") or LOOPBACK_HOST, int(port)))
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


def port_free(port: int) -> bool:
    """Whether we could listen on ``127.0.0.1:port`` right now.

    SO_REUSEADDR mirrors what the JVM does for server sockets, so a port whose last connections
    linger in TIME_WAIT after a restart does not count as taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK_HOST, port))
        except OSError:
            return False
    return True


def process_alive(pid: int) -> bool:
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


def process_args(pid: int) -> list[str] | None:
    """Command line of ``pid``, or None where it cannot be read (no procfs, gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [arg.decode("utf-8", errors="replace") for arg in raw.split(b"\0") if arg]
