"""The broker a benchmark runs against, and its scratch directory."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dyno_stream.devtools.broker import LocalBroker, free_port_pair
from harness.settings import TAGS, delete_bench_topics, free_port

__all__ = ["bench_broker", "free_port", "scratch"]


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary directory for the run's data, removed at exit."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def bench_broker(
    bootstrap: str | None = None, own_in: Path | None = None, timeout: float = 90.0
) -> Iterator[str]:
    """Yield the bootstrap address of the broker to run against.

    ``bootstrap`` given: that broker, left running. ``own_in`` given: a broker of its own in
    that directory on free ports (others on this machine run theirs beside), stopped at exit
    and its topics with it. Otherwise the machine's local broker, started if needed and
    stopped at exit only if started here. On a broker that goes on running, the run's bench
    topics are deleted at exit.
    """
    broker: LocalBroker | None = None
    own = bootstrap is None and own_in is not None
    if bootstrap is None:
        local = LocalBroker() if own_in is None else LocalBroker(own_in, port=free_port_pair())
        broker = None if local.is_running() else local
        bootstrap = local.start(timeout=timeout)
    try:
        yield bootstrap
    finally:
        if own:
            TAGS.clear()  # its topics go with it
        else:
            delete_bench_topics()
        if broker is not None:
            broker.stop()
