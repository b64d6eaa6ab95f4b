"""``dyno-stream worker --processes N``: N members of the consumer group, a child process each.

The worker is CPU-bound in one Python thread, so a second core only helps a second process.
The parent holds no Kafka client and no store: it starts the children (spawned, sharing the
data dir), restarts one that exits with a growing pause (``policy``), passes SIGTERM/SIGINT
on to them (``child``), serves one ``/metrics`` and ``/healthz`` for the whole worker
(``aggregate``), and exits with a status that says what happened (``exit_status``).

Why spawn, a shared data dir and summed metrics: ``docs/design/supervisor.md``.
"""

from dyno_stream.stream.supervisor.child import child_main, child_settings
from dyno_stream.stream.supervisor.policy import (
    EXIT_CLEAN,
    EXIT_GAVE_UP,
    EXIT_UNCLEAN_STOP,
    Ending,
    RestartPolicy,
    RestartRecord,
    describe_exit,
    exit_status,
)
from dyno_stream.stream.supervisor.supervisor import Supervisor

__all__ = [
    "EXIT_CLEAN",
    "EXIT_GAVE_UP",
    "EXIT_UNCLEAN_STOP",
    "Ending",
    "RestartPolicy",
    "RestartRecord",
    "Supervisor",
    "child_main",
    "child_settings",
    "describe_exit",
    "exit_status",
]
