"""The parent of the worker's member processes: starts them, restarts one that exits (by
``policy``), passes signals on, and answers HTTP for the whole worker by asking each child."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import connection as mp_connection
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any
from urllib.parse import quote, urlencode

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from dyno_stream.client.http import bearer, http_get
from dyno_stream.config import Settings
from dyno_stream.core.errors import ConfigError
from dyno_stream.stream.http import Answer, HttpEndpoint, Query, RoutedReads
from dyno_stream.stream.reads import NOT_HERE, merge_page_answers
from dyno_stream.stream.supervisor.aggregate import (
    CHILD_HTTP_TIMEOUT_S,
    ChildrenHealth,
    RegistryView,
    SupervisorCollector,
)
from dyno_stream.stream.supervisor.child import child_main, child_settings
from dyno_stream.stream.supervisor.policy import (
    Ending,
    RestartPolicy,
    RestartRecord,
    describe_exit,
    exit_status,
)

log = logging.getLogger("dyno_stream.stream.supervisor")

#: How long the parent waits for the children after passing a signal on, beyond the
#: longest the worker itself may wait for Kafka (``publish_timeout_s``) while stopping.
STOP_MARGIN_S = 30.0
#: The headers of a child's answer that the parent passes on.
_PASSED_ON = ("Location", "Retry-After")


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

    @property
    def stopping(self) -> bool:
        """A signal asked the worker to stop."""
        return self._signal is not None

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
        registry.register(SupervisorCollector(self))
        routed = RoutedReads(
            self._answer_item,
            self._answer_page,
            token=w.http_token_text,
            max_reads=w.http_max_reads,
        )
        try:
            self.http = HttpEndpoint(
                w.http_host,
                w.http_port,
                RegistryView(registry),
                ChildrenHealth(self),
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

    def _ask(self, url: str, timeout: float) -> tuple[int, Any, dict[str, str], bool] | None:
        """A child's answer to a read: status, JSON body, the headers passed on, and whether
        it says only that the child holds no store of the partition; None: no answer."""
        try:
            code, body, got = http_get(url, timeout, bearer(self.settings.worker.http_token_text))
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
        headers = bearer(self.settings.worker.http_token_text)
        rows: list[tuple[str, str]] = []
        for _child, url in self._live_endpoints():
            try:
                code, body, _ = http_get(f"{url}/rows{query}", CHILD_HTTP_TIMEOUT_S, headers)
            except OSError:  # exited meanwhile: its stores are read by whoever takes them
                continue
            if code == 200:
                for line in body.decode().splitlines():
                    key, _, value = line.partition(" = ")
                    rows.append((key, value))
        return rows
