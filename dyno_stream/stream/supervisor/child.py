"""A member process of the worker: its settings (``child_settings``) and its entry point
(``child_main``), which runs the worker until SIGTERM and reports to the parent over a pipe."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing import connection as mp_connection
from multiprocessing.connection import Connection
from types import FrameType
from typing import TYPE_CHECKING, Any

from dyno_stream.config import Settings, advertised_http
from dyno_stream.core.errors import ConfigError, DynoError, KafkaAuthError
from dyno_stream.stream.http import HttpEndpoint
from dyno_stream.stream.logs import setup_logging

if TYPE_CHECKING:  # imported by a child only: the parent runs no worker
    from dyno_stream.stream.worker import Worker

log = logging.getLogger("dyno_stream.stream.supervisor")


def child_settings(settings: Settings, index: int, count: int) -> Settings:
    """Child ``index``'s settings (of ``count``): the worker's, with what must differ.

    - ``processes`` 1: a child runs the worker itself;
    - ``http_port`` 0: a child serves the parent only, on a port of the system's choosing;
    - ``advertised_http``: the parent's, which reads reach the child through;
    - ``instance_id`` (static membership) gets ``-<index>``: one id per member, the same
      one after a restart, so a restarted child gets its partitions back without a rebalance;
    - ``kafka.client_id`` gets ``-<index>``, so the broker's logs tell children apart;
    - ``memory_mb`` is divided among the children: the budget is the whole worker's.
    """
    w = settings.worker
    worker: dict[str, Any] = {
        "processes": 1,
        "http_port": 0,
        "memory_mb": max(16, w.memory_mb // count),  # 16: the setting's least
        # the parent's address: the children's items are read through the parent's endpoint
        "advertised_http": advertised_http(w),
    }
    if w.instance_id is not None:
        worker["instance_id"] = f"{w.instance_id}-{index}"
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"client_id": f"{settings.kafka.client_id}-{index}"}
            ),
            "worker": w.model_copy(update=worker),
        }
    )


class _ChildLogs(logging.Filter):
    """Tags each line of a child with its index (``child=1``), as text or as a JSON key."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.child = self.index
        return True


class _Reports:
    """What a child tells the parent, over a pipe that more than one thread writes."""

    def __init__(self, conn: Connection) -> None:
        self._conn, self._lock = conn, threading.Lock()

    def send(self, *message: Any) -> None:
        # OSError: the parent is gone; the parent watch stops the worker
        with self._lock, contextlib.suppress(OSError):
            self._conn.send(message)


def child_main(settings: Settings, index: int, serve_http: bool, conn: Connection) -> None:
    """A child's life: the worker of ``settings`` (see ``child_settings``) until SIGTERM."""
    # Ctrl-C reaches the whole process group; the parent passes it on as one SIGTERM. A
    # second signal makes a worker exit at once, without its last commit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from dyno_stream.stream.worker import Worker

    setup_logging(settings.worker.log_format, settings.worker.log_level)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ChildLogs(index))
    reports = _Reports(conn)
    worker = Worker(settings, handle_signals=False)
    signals: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if signals:
            log.warning("second signal: exiting at once")
            os._exit(128 + signum)
        signals.append(signum)
        log.info("signal %s: finishing the batch, then stopping", signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    threading.Thread(target=_stop_when_parent_dies, args=(worker,), daemon=True).start()
    endpoint = None
    if serve_http:
        endpoint = HttpEndpoint(
            "127.0.0.1",
            0,
            worker.metrics,
            worker.health,
            worker.reads.item,
            worker.reads.rows,
            worker.member_reads(),
        )
        endpoint.start()
        reports.send("http", endpoint.address)
    threading.Thread(target=_report_running, args=(worker, reports), daemon=True).start()
    try:
        code = worker.run()
    except BaseException as exc:
        known = isinstance(exc, DynoError)
        message = str(exc) if known else f"{type(exc).__name__}: {exc}"
        log.error("worker stopped: %s", message, exc_info=not known)
        # a setting to fix (a refused login, a partition count that changed) is not mended
        # by starting again
        reports.send("error", message, not isinstance(exc, ConfigError | KafkaAuthError))
        sys.exit(1)
    finally:
        if endpoint is not None:
            endpoint.stop()
    sys.exit(code)


def _stop_when_parent_dies(worker: Worker) -> None:
    """A parent killed outright (SIGKILL) passes nothing on: stop as if told to."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    mp_connection.wait([parent.sentinel])
    log.warning("the parent process is gone: stopping")
    worker.stop()


def _report_running(worker: Worker, reports: _Reports) -> None:
    """Tell the parent once the worker is connected and in its loop (start-up is over)."""
    while worker.health.state == "starting":
        time.sleep(0.05)
    if worker.health.state == "running":
        reports.send("running")
