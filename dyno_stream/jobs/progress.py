"""How a long job shows its progress: a rich progress bar on a terminal, plain log lines
every few seconds under cron or in a log file. Compaction and repartition both use it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

log = logging.getLogger("dyno_stream.jobs")


class Reporter:
    """A rich progress bar on a terminal; plain log lines under cron."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.interactive = console.is_terminal

    @contextmanager
    def task(self, what: str, total: int | None) -> Iterator[Callable[[int], None]]:
        if self.interactive:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            ) as progress:
                task = progress.add_task(what, total=total)
                yield lambda n: progress.advance(task, n)
        else:
            log.info("%s (%s)", what, "?" if total is None else f"{total:,}")
            done = [0]
            last = [time.monotonic()]

            def advance(n: int) -> None:
                done[0] += n
                if time.monotonic() - last[0] > 10:
                    last[0] = time.monotonic()
                    log.info("%s: %s done", what, f"{done[0]:,}")

            yield advance
            log.info("%s: %s done", what, f"{done[0]:,}")
