"""Free ports for a local broker started beside others (tests, benchmarks)."""

from __future__ import annotations

import socket


def free_port_pair(attempts: int = 50) -> int:
    """A free port whose next port is free too: the broker listens on the first, its
    controller on the second (``LocalBroker``)."""
    for _ in range(attempts):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no two free neighbouring ports in {attempts} attempts")
