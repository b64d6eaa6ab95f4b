"""What every command shares: the consoles, the exit statuses, the settings (with Kafka
answering, for the commands that need it) and ``friendly``, which turns a ``DynoError`` into
one clear line on stderr and exit status 1."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from dyno_stream.config import Settings, load_settings
from dyno_stream.core.errors import DynoError

# no markup: item names and messages are printed exactly as they are, one line each
out = Console(highlight=False, markup=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)
#: ``get`` exits with this when the item does not exist or was deleted
EXIT_NOT_FOUND = 3
#: The worker refused the op (``op --then-get``): an expectation that failed, a late op.
EXIT_REFUSED = 4

F = TypeVar("F", bound=Callable[..., Any])


def _process_started() -> float:
    """When this process began, on ``time.monotonic``'s clock (Linux: both count from boot;
    elsewhere: now). On a loaded machine Python's start-up alone took 5 s, and the user
    waits for that too."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime
        started = ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic()
    # CLOCK_MONOTONIC and /proc's starttime count from boot alike (neither counts suspend)
    return min(started, time.monotonic())


#: When the command began: ``[kafka] connect_timeout_s`` counts from here.
_STARTED = _process_started()


def friendly(fn: F) -> F:
    """Report our errors as one line, not a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DynoError as exc:
            err.print(Text("error: ", style="red") + Text(str(exc)), soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def settings() -> Settings:
    return load_settings()


def kafka_settings() -> Settings:
    """The settings, once a Kafka broker answers.

    A command that needs Kafka ends within ``[kafka] connect_timeout_s`` with one line when
    none does, instead of waiting out its own timeouts (see ``kafka.connection``).
    librdkafka's own lines about it are hidden: that one line says it all (they show with
    ``DYNO_WORKER__LOG_LEVEL=DEBUG``).
    """
    from dyno_stream.kafka.connection import require_broker

    s = settings()
    if s.worker.log_level != "DEBUG":
        logging.getLogger("dyno_stream.librdkafka").setLevel(logging.ERROR)
    require_broker(s.kafka, started=_STARTED)
    return s
