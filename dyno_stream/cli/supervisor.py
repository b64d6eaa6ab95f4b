"""``dyno-stream worker --processes N``: N members of the consumer group, a child process each.

The worker is CPU-bound in one Python thread, so a second core only helps a second process.
The parent holds no Kafka client and no store: it starts the children (spawned, sharing the
data dir), restarts one that exits with a growing pause, passes SIGTERM/SIGINT on to them,
serves one ``/metrics`` (prometheus-client's multiprocess mode) and ``/healthz`` for the
whole worker, and exits with a status that says what happened (``exit_status``).

Why spawn, a shared data dir and summed metrics: ``docs/design/supervisor.md``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing import connection as mp_connection
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from dyno_stream.cli.logs import setup_logging
from dyno_stream.cli.worker_http import http_answer, http_get
from dyno_stream.config import Settings, advertised_http
from dyno_stream.core.errors import ConfigError, DynoError, KafkaAuthError
from dyno_stream.stream.http import Answer, HttpEndpoint, Query, RoutedReads
from dyno_stream.stream.reads import NOT_HERE, merge_page_answers

if TYPE_CHECKING:  # imported by a child only: the parent runs no worker
    from dyno_stream.stream.worker import Worker

log = logging.getLogger("dyno_stream.cli.supervisor")

#: Exit statuses of a worker of several processes (the README lists them).
EXIT_CLEAN = 0
#: A child kept failing (or failed in a way no restart heals): the others were stopped.
EXIT_GAVE_UP = 1
#: Stopped on request, but a child did not stop cleanly (a non-zero exit, or killed when it
#: had not stopped within the bound): its last batch may be published again on restart.
EXIT_UNCLEAN_STOP = 3

#: How long the parent waits for the children after passing a signal on, beyond the
#: longest the worker itself may wait for Kafka (``publish_timeout_s``) while stopping.
STOP_MARGIN_S = 30.0
#: How long a /healthz, /items or /rows request of the parent waits for each child (beyond
#: ``read_timeout_s``, for reads, which a child may wait that long to answer).
CHILD_HTTP_TIMEOUT_S = 2.0
#: The headers of a child's answer that the parent passes on.
_PASSED_ON = ("Location", "Retry-After")


# -- what to do when a child exits (pure) ----------------------------------------------------


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


# -- a child process ------------------------------------------------------------------------


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


# -- the parent ------------------------------------------------------------------------------


@dataclass
class _Child:
    index: int
    record: RestartRecord
    process: BaseProcess | None = None
    conn: Connection | None = None
    pid: int | None = None
    started_at: float = 0.0
    running_since: float | None = None
    http: str | None = None
    error: str | None = None
    heals: bool = True
    restart_at: float | None = None
    restarts: int = 0

    @property
    def alive(self) -> bool:
        process = self.process
        try:
            return process is not None and process.exitcode is None
        except ValueError:  # closed by the loop while the HTTP thread asked: it has exited
            return False

    @property
    def name(self) -> str:
        return f"child {self.index} (pid {self.pid})"


class Supervisor:
    """Runs ``count`` children until SIGTERM/SIGINT or until one is given up; ``run()``
    returns the exit status (``exit_status``)."""

    def __init__(self, settings: Settings, count: int, policy: RestartPolicy | None = None) -> None:
        self.settings = settings
        self.count = count
        self.policy = policy or RestartPolicy()
        self.stop_timeout_s = settings.worker.publish_timeout_s + STOP_MARGIN_S
        self.children = [_Child(i, RestartRecord(self.policy)) for i in range(count)]
        self.ending = Ending()
        self._signal: int | None = None
        self._context = multiprocessing.get_context("spawn")
        self._metrics_dir = ""
        self.http: HttpEndpoint | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def run(self) -> int:
        s = self.settings
        log.info(
            "worker starting %d processes",
            self.count,
            extra={"group": s.worker.group_id, "data_dir": str(s.worker.data_dir)},
        )
        self._metrics_dir = tempfile.mkdtemp(prefix="dyno-metrics-")
        # read by prometheus-client in each child as it is imported (children inherit it)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self._serve_http()
            for child in self.children:
                self._start(child)
            self._supervise()
            self._stop_children()
        finally:
            if self.http is not None:
                self.http.stop()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        status = exit_status(self.ending)
        if self.ending.at_once is not None:
            log.error("worker stopped at once on a second signal: every child was killed")
        elif self.ending.gave_up is not None:
            log.error("worker stopped: %s", self.ending.gave_up)
        elif self.ending.unclean:
            log.error("worker stopped; not cleanly: %s", "; ".join(self.ending.unclean))
        else:
            log.info("worker stopped")
        return status

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._signal is not None:
            log.warning("second signal: killing every child at once")
            self.ending.at_once = signum
            return
        log.info(
            "signal %s: passing it on to every child, then stopping",
            signal.Signals(signum).name,
        )
        self._signal = signum

    def _serve_http(self) -> None:
        w = self.settings.worker
        if not w.http_port:
            return
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._metrics_dir)  # type: ignore[no-untyped-call]
        registry.register(_SupervisorCollector(self))
        routed = RoutedReads(
            self._answer_item, self._answer_page, token=self._token, max_reads=w.http_max_reads
        )
        try:
            self.http = HttpEndpoint(
                w.http_host,
                w.http_port,
                _Registry(registry),
                _ChildrenHealth(self),
                self._read_item,
                self._read_rows,
                routed,
            )
        except OSError as exc:
            raise ConfigError(f"cannot serve HTTP at {w.http_host}:{w.http_port}: {exc}") from None
        self.http.start()
        log.info("http endpoint at %s (/metrics /healthz /items/<name> /rows)", self.http.address)

    # -- children -----------------------------------------------------------------------------

    def _start(self, child: _Child) -> None:
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=child_main,
            args=(
                child_settings(self.settings, child.index, self.count),
                child.index,
                self.http is not None,
                send,
            ),
            name=f"dyno-worker-{child.index}",
        )
        process.start()
        send.close()
        child.process, child.conn, child.pid = process, receive, process.pid
        child.started_at, child.running_since = time.monotonic(), None
        child.http, child.error, child.heals, child.restart_at = None, None, True, None
        log.info(
            "child %d started (pid %s)%s",
            child.index,
            process.pid,
            f", restart {child.restarts}" if child.restarts else "",
        )

    def _supervise(self) -> None:
        while self._signal is None and self.ending.at_once is None:
            now = time.monotonic()
            waits = [c.restart_at - now for c in self.children if c.restart_at is not None]
            ready: list[Any] = [c.process.sentinel for c in self.children if c.alive]  # type: ignore[union-attr]
            ready += [c.conn for c in self.children if c.conn is not None]
            mp_connection.wait(ready, timeout=max(0.0, min([0.5, *waits])))
            if self._signal is not None:
                # a Ctrl-C reaches a child still importing too: not a crash to restart
                return
            for child in self.children:
                self._read_reports(child)
                if child.process is not None and not child.alive:
                    self._exited(child)
                    if self.ending.gave_up is not None:
                        return
                if child.restart_at is not None and time.monotonic() >= child.restart_at:
                    child.restarts += 1
                    self._start(child)

    def _read_reports(self, child: _Child) -> None:
        conn = child.conn
        if conn is None:
            return
        try:
            while conn.poll():
                kind, *rest = conn.recv()
                if kind == "http":
                    child.http = rest[0]
                elif kind == "running":
                    child.running_since = time.monotonic()
                    log.info("child %d (pid %s) is running", child.index, child.pid)
                elif kind == "error":
                    child.error, child.heals = rest[0], rest[1]
        except (EOFError, OSError):  # the child is gone: its exit says the rest
            conn.close()
            child.conn = None

    def _exited(self, child: _Child) -> None:
        assert child.process is not None
        self._read_reports(child)
        exitcode = child.process.exitcode
        self._reap(child)
        now = time.monotonic()
        running_for = None if child.running_since is None else now - child.running_since
        delay = child.record.exited(running_for_s=running_for, heals=child.heals)
        ran = (
            f"after running {running_for:.1f} s"
            if running_for is not None
            else f"during start-up ({now - child.started_at:.1f} s)"
        )
        what = f"{child.name} {describe_exit(exitcode)} {ran}"
        if child.error:
            what += f": {child.error}"
        if delay is None:
            why = (
                "an error no restart mends"
                if not child.heals
                else f"it failed {child.record.startup_failures} times in a row during start-up"
            )
            self.ending.gave_up = f"{what}; giving up ({why})"
            log.error("%s; giving up (%s): stopping the other children", what, why)
            return
        child.restart_at = now + delay
        log.error("%s; restarting it in %.1f s", what, delay)

    def _reap(self, child: _Child) -> None:
        """An exited child's process, pipe and live gauges are let go."""
        assert child.process is not None
        child.process.join()
        if child.pid is not None:
            mark_process_dead(child.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
        if child.conn is not None:
            child.conn.close()
            child.conn = None
        child.process.close()
        child.process = None

    def _stop_children(self) -> None:
        """SIGTERM to every child, then wait (bounded); SIGKILL to those still running."""
        for child in self.children:
            child.restart_at = None
            if child.alive:
                assert child.process is not None and child.pid is not None
                os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        while any(c.alive for c in self.children):
            if self.ending.at_once is not None or time.monotonic() >= deadline:
                break
            sentinels = [c.process.sentinel for c in self.children if c.alive]  # type: ignore[union-attr]
            mp_connection.wait(sentinels, timeout=0.2)
        for child in self.children:
            if child.process is None:
                continue
            killed = child.alive
            if killed:
                if self.ending.at_once is None:
                    log.error(
                        "%s did not stop within %.0f s; killing it",
                        child.name,
                        self.stop_timeout_s,
                    )
                    self.ending.unclean.append(
                        f"{child.name} killed after {self.stop_timeout_s:.0f} s"
                    )
                child.process.kill()
            child.process.join()
            exitcode = child.process.exitcode
            self._read_reports(child)
            if killed:
                pass  # said above (or the second signal's doing)
            elif exitcode == 0:
                log.info("%s stopped", child.name)
            elif child.running_since is None:
                # Still starting (a Ctrl-C reaches it too before it ignores SIGINT, a SIGTERM
                # before its handler): it had not consumed anything, so nothing is amiss.
                log.info("%s stopped during start-up (%s)", child.name, describe_exit(exitcode))
            else:
                self.ending.unclean.append(f"{child.name} {describe_exit(exitcode)}")
            self._reap(child)

    # -- what the parent's HTTP endpoint answers ---------------------------------------------

    def _live_endpoints(self) -> Iterator[tuple[_Child, str]]:
        for child in list(self.children):
            url = child.http
            if url is not None and child.alive:
                yield child, url

    @property
    def _token(self) -> str | None:
        token = self.settings.worker.http_token
        return token.get_secret_value() if token is not None else None

    def _ask(self, url: str, timeout: float) -> tuple[int, Any, dict[str, str], bool] | None:
        """A child's answer to a read: status, JSON body, the headers passed on, and whether
        it says only that the child holds no store of the partition; None: no answer."""
        token = self._token
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        try:
            code, body, got = http_answer(url, timeout, headers)
            parsed = json.loads(body)
        except (OSError, ValueError) as exc:  # exited, restarting, or cut off mid-answer
            log.debug("no answer from %s: %s", url, exc)
            return None
        passed = {key: got[key] for key in _PASSED_ON if got[key] is not None}
        return code, parsed, passed, got[NOT_HERE] is not None

    def _unanswered(self, answered: int) -> Answer:
        silent = self.count - answered
        what = f"{silent} of {self.count} member processes did not answer"
        return 503, {"error": f"{what} (starting or restarting)"}, {"Retry-After": "1"}

    def _answer_item(self, name: str, query: Query) -> Answer:
        """``GET /items/<name>``: the answer of the child holding the item's partition (or
        a 307 elsewhere); when none holds it, what they all said (503: moving), once every
        child has answered: else 503, never a "no such item" that a silent child might
        have contradicted."""
        path = f"/items/{quote(name, safe='')}"
        if query:
            path += "?" + urlencode(query, doseq=True)
        timeout = self.settings.worker.read_timeout_s + CHILD_HTTP_TIMEOUT_S
        answered, not_here = 0, None
        for _child, url in self._live_endpoints():
            got = self._ask(url + path, timeout)
            if got is None:
                continue
            answered += 1
            code, body, headers, elsewhere = got
            if not elsewhere:
                return code, body, headers
            not_here = code, body, headers
        if not_here is not None and answered == self.count:
            return not_here
        return self._unanswered(answered)

    def _answer_page(self, query: Query) -> Answer:
        """``GET /items?...``: every child's page of the same query, merged. A child that did
        not answer leaves its partitions out of ``partitions``: the reader sees them missing."""
        path = "/items?" + urlencode(query, doseq=True)
        timeout = self.settings.worker.read_timeout_s + CHILD_HTTP_TIMEOUT_S
        pages: list[dict[str, Any]] = []
        for _child, url in self._live_endpoints():
            got = self._ask(url + path, timeout)
            if got is None:
                continue
            code, body, headers, _elsewhere = got
            if code != 200:  # a bad query, or a store closed under the page
                return code, body, headers
            pages.append(body)
        if not pages:
            return self._unanswered(0)
        # a child has checked the limit already
        limit = int(query.get("limit", [str(self.settings.worker.http_max_page)])[0])
        return 200, merge_page_answers(pages, limit), {}

    def _read_item(self, name: str) -> dict[str, Any] | None:
        code, body, _headers = self._answer_item(name, {})
        return body if code == 200 else None

    def _read_rows(self, only: str | None) -> list[tuple[str, str]]:
        query = "" if only is None else f"?item={quote(only, safe='')}"
        token = self._token
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        rows: list[tuple[str, str]] = []
        for _child, url in self._live_endpoints():
            try:
                code, body, _ = http_answer(f"{url}/rows{query}", CHILD_HTTP_TIMEOUT_S, headers)
            except OSError:  # exited meanwhile: its stores are read by whoever takes them
                continue
            if code == 200:
                for line in body.decode().splitlines():
                    key, _, value = line.partition(" = ")
                    rows.append((key, value))
        return rows


@dataclass
class _Registry:
    """The parent's registry, in the shape the HTTP endpoint serves."""

    registry: CollectorRegistry


class _SupervisorCollector(Collector):
    """The parent's own figures: children running, and restarts per child."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterable[Metric]:
        children = self.supervisor.children
        running = GaugeMetricFamily(
            "dyno_worker_processes_running", "Member processes of this worker running now"
        )
        running.add_metric([], sum(1 for c in children if c.alive))
        restarts = CounterMetricFamily(
            "dyno_worker_process_restarts",
            "Member processes started again after they exited",
            labels=["child"],
        )
        for c in children:
            restarts.add_metric([str(c.index)], c.restarts)
        return [running, restarts]


class _ChildrenHealth:
    """The parent's ``/healthz``: each child's own, and one answer for the whole worker
    (200 when every child answers ok)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def snapshot(self) -> tuple[bool, dict[str, Any]]:
        sup = self.supervisor
        children: list[dict[str, Any]] = []
        partitions: set[str] = set()
        states: dict[str, str] = {}
        for child in list(sup.children):
            entry: dict[str, Any] = {
                "child": child.index,
                "pid": child.pid if child.alive else None,
                "restarts": child.restarts,
                "http": child.http,
            }
            if child.alive and child.http is not None:
                try:
                    _code, body = http_get(f"{child.http}/healthz", timeout=CHILD_HTTP_TIMEOUT_S)
                    answer: dict[str, Any] = json.loads(body)
                except (OSError, ValueError) as exc:
                    answer = {"status": "unreachable", "reason": str(exc)}
                entry.update(answer)
                partitions.update(answer.get("partitions", []))
                states.update(answer.get("partition_states", {}))
            else:
                entry["status"] = (
                    "restarting"
                    if child.restart_at is not None
                    else "starting"
                    if child.alive
                    else "stopped"
                )
            children.append(entry)
        ok = sup._signal is None and all(c["status"] == "ok" for c in children)
        if ok:
            status = "ok"
        elif sup._signal is not None:
            status = "stopping"
        elif all(c["status"] in ("ok", "starting") for c in children):
            status = "starting"
        else:  # a child restarting, stalled, refusing or not answering
            status = "degraded"
        return ok, {
            "status": status,
            "processes": sup.count,
            "partitions": sorted(partitions),
            "partition_states": dict(sorted(states.items())),
            "children": children,
        }
