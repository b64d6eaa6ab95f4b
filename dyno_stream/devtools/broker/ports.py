"""Free ports for a local broker started beside others (tests, benchmarks)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: Linux's default range of ephemeral ports, used when the kernel's cannot be read.
_EPHEMERAL_DEFAULT = (32768, 60999)
#: The lowest port handed out: above the well-known and the commonly configured ones.
_LOWEST = 10000


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _EPHEMERAL_DEFAULT


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(attempts: int = 50) -> int:
    """A free port for a listener started soon after (an HTTP endpoint, a broker listener),
    below the ephemeral range like :func:`free_port_pair`."""
    return free_port_pair(attempts)


def free_port_pair(attempts: int = 50) -> int:
    """A free port whose next port is free too: the broker listens on the first, its
    controller on the second (``LocalBroker``).

    Picked at random below the kernel's ephemeral range when there is room: a port from
    that range, free when asked, is soon taken by some client's outgoing connection (with
    tests in several processes, before the broker's JVM gets to bind it).
    """
    low, _ = _ephemeral_range()
    rnd = random.SystemRandom()
    if low - 2 > _LOWEST:
        for _ in range(attempts):
            port = rnd.randrange(_LOWEST, low - 2)
            if _bindable(port) and _bindable(port + 1):
                return port
    for _ in range(attempts):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if _bindable(port + 1):
            return port
    raise RuntimeError(f"no two free neighbouring ports in {attempts} attempts")
