"""What to do when a member process exits: the pause before a restart, when to give up, and
the exit status that says how the worker ended. Pure: no process, no clock."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

#: Exit statuses of a worker of several processes (the README lists them).
EXIT_CLEAN = 0
#: A child kept failing (or failed in a way no restart heals): the others were stopped.
EXIT_GAVE_UP = 1
#: Stopped on request, but a child did not stop cleanly (a non-zero exit, or killed when it
#: had not stopped within the bound): its last batch may be published again on restart.
EXIT_UNCLEAN_STOP = 3


@dataclass(frozen=True)
class RestartPolicy:
    """When a child that exited is started again, and when the parent stops trying."""

    #: the pause before the first restart, doubled for each failure in a row ...
    first_delay_s: float = 1.0
    #: ... up to this
    max_delay_s: float = 30.0
    #: a child that has been running this long had a healthy run: its failures are forgotten
    healthy_after_s: float = 30.0
    #: a child that failed this many times in a row before it was running (its settings,
    #: its disk, the broker refusing it) is given up, with its error
    startup_failures_to_give_up: int = 5

    def delay(self, failures: int) -> float:
        """The pause before restarting after the ``failures``-th failure in a row (>= 1)."""
        return min(self.max_delay_s, self.first_delay_s * 2.0 ** max(0, failures - 1))


@dataclass
class RestartRecord:
    """One child's failures in a row, which decide what follows its next exit."""

    policy: RestartPolicy
    #: exits since the last healthy run
    failures: int = 0
    #: of those, the last ones in a row that came before the child was running
    startup_failures: int = 0

    def exited(self, *, running_for_s: float | None, heals: bool) -> float | None:
        """The pause before starting the child again, or None: give up.

        ``running_for_s``: how long it ran once running (None: it never got there);
        ``heals``: False for an error no restart mends (a configuration error).
        """
        if running_for_s is not None and running_for_s >= self.policy.healthy_after_s:
            self.failures = 0
        self.failures += 1
        self.startup_failures = 0 if running_for_s is not None else self.startup_failures + 1
        if not heals or self.startup_failures >= self.policy.startup_failures_to_give_up:
            return None
        return self.policy.delay(self.failures)


@dataclass
class Ending:
    """How the worker ended, which decides its exit status."""

    #: the line that names the child given up and why
    gave_up: str | None = None
    #: the second signal, on which every child was killed at once
    at_once: int | None = None
    #: children that did not stop cleanly when asked to
    unclean: list[str] = field(default_factory=list)


def exit_status(ending: Ending) -> int:
    """0: stopped on request, every child cleanly; 1: a child was given up; 3: stopped, but
    a child did not stop cleanly; 128 + n: a second signal n killed the children at once."""
    if ending.at_once is not None:
        return 128 + ending.at_once
    if ending.gave_up is not None:
        return EXIT_GAVE_UP
    if ending.unclean:
        return EXIT_UNCLEAN_STOP
    return EXIT_CLEAN


def describe_exit(exitcode: int | None) -> str:
    """A child's exit as a log line says it (multiprocessing: -n for signal n)."""
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"exited with status {exitcode}"
