"""The worker's small HTTP endpoint, served on its own threads.

Endpoints (bound to 127.0.0.1 by default):

- ``/metrics``: Prometheus text format (``stream.metrics``).
- ``/healthz``: 200 with a JSON status while the worker's loop is alive, 503 when it is
  starting, stopping, has not finished a loop turn for ``stall_after_s``, or refuses to go on
  (``refused``, with the ``reason``).
- ``/items/<name>``: the item as this worker's store holds it (404 when no store of this
  worker has it, or it was deleted); ``/rows`` (optionally ``?item=<name>``): the LevelDB
  rows, seed-style.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlparse

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.exposition import generate_latest


@dataclass
class Health:
    """What /healthz reports; the worker's loop updates it."""

    state: str = "starting"
    last_loop: float = field(default_factory=time.monotonic)
    partitions: list[str] = field(default_factory=list)
    #: what works but needs an operator (a snapshot topic that is not co-partitioned)
    warnings: list[str] = field(default_factory=list)
    #: each held partition's state: RESTORING, RUNNING or PAUSED (``stream.assignment``)
    partition_states: dict[str, str] = field(default_factory=dict)
    stall_after_s: float = 60.0
    #: why the worker refuses to go on (e.g. the ops topic's partition count changed)
    reason: str | None = None
    #: why the worker runs but cannot do its work now (Kafka unreachable); it rides it out,
    #: so /healthz still answers 200: restarting the worker would not help
    degraded: str | None = None

    def beat(self) -> None:
        self.last_loop = time.monotonic()

    def snapshot(self) -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - self.last_loop
        ok = self.state == "running" and age < self.stall_after_s
        status = "ok" if ok else self.state if self.state != "running" else "stalled"
        reason = self.reason
        if ok and self.degraded is not None:
            status, reason = "degraded", self.degraded
        return ok, {
            "status": status,
            "partitions": self.partitions,
            "partition_states": self.partition_states,
            "seconds_since_loop": round(age, 3),
            **({"reason": reason} if reason is not None else {}),
            **({"warnings": self.warnings} if self.warnings else {}),
        }


class HasRegistry(Protocol):
    """What ``/metrics`` serves: a worker's ``WorkerMetrics``, or the registry that sums a
    worker's member processes (``stream.supervisor``)."""

    @property
    def registry(self) -> CollectorRegistry: ...


class HealthReport(Protocol):
    """What ``/healthz`` answers: ``(ok, body)``; a ``Health`` or the members' summary."""

    def snapshot(self) -> tuple[bool, dict[str, Any]]: ...


ItemReader = Callable[[str], dict[str, Any] | None]
RowReader = Callable[[str | None], list[tuple[str, str]]]
#: (status, JSON body, extra headers): a routed read's answer (``stream.reads``)
Answer = tuple[int, Any, dict[str, str]]
Query = dict[str, list[str]]


@dataclass(frozen=True)
class RoutedReads:
    """What a worker's endpoint answers beyond ``read_item``: routing, ``after=`` and pages
    (``stream.reads.StoreReads``); and how reads are guarded."""

    item: Callable[[str, Query], Answer]
    page: Callable[[Query], Answer]
    #: /items and /rows need ``Authorization: Bearer <token>`` when set
    token: str | None = None
    #: reads served at once; more are answered 503 at once
    max_reads: int = 32


class HttpEndpoint:
    """A tiny threaded HTTP server; serving never blocks the worker's loop."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: HasRegistry,
        health: HealthReport,
        read_item: ItemReader,
        read_rows: RowReader,
        routed: RoutedReads | None = None,
    ) -> None:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # requests are not worth a log line each

        self.metrics, self.health = metrics, health
        self.read_item, self.read_rows = read_item, read_rows
        self.routed = routed
        self._reads = threading.BoundedSemaphore(routed.max_reads if routed else 1024)
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="dyno-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        url = urlparse(req.path)
        try:
            if url.path == "/metrics":
                self._send(req, 200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)
            elif url.path == "/healthz":
                ok, body = self.health.snapshot()
                self._json(req, 200 if ok else 503, body)
            elif url.path.startswith("/items") or url.path == "/rows":
                if not self._authorized(req):
                    self._json(req, 401, {"error": "a bearer token is needed (worker.http_token)"})
                elif not self._reads.acquire(blocking=False):
                    self._json(req, 503, {"error": "too many reads at once"}, {"Retry-After": "1"})
                else:
                    try:
                        self._read(req, url.path, parse_qs(url.query))
                    finally:
                        self._reads.release()
            else:
                self._json(req, 404, {"error": "not found"})
        except Exception as exc:  # an endpoint error must never reach the worker
            self._json(req, 500, {"error": str(exc)})

    def _authorized(self, req: BaseHTTPRequestHandler) -> bool:
        token = self.routed.token if self.routed else None
        if token is None:
            return True
        given = req.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def _read(self, req: BaseHTTPRequestHandler, path: str, query: Query) -> None:
        if path.startswith("/items/"):
            name = unquote(path[len("/items/") :])
            if self.routed is not None:
                self._json(req, *self.routed.item(name, query))
                return
            item = self.read_item(name)
            if item is None:
                self._json(req, 404, {"error": f"no item {name!r} in this worker's stores"})
            else:
                self._json(req, 200, item)
        elif path == "/items" and self.routed is not None:
            self._json(req, *self.routed.page(query))
        elif path == "/rows":
            only = query.get("item", [None])[0]
            rows = self.read_rows(only)
            text = "".join(f"{k} = {v}\n" for k, v in rows)
            self._send(req, 200, text.encode(), "text/plain; charset=utf-8")
        else:
            self._json(req, 404, {"error": "not found"})

    def _json(
        self,
        req: BaseHTTPRequestHandler,
        code: int,
        body: Any,
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self._send(req, code, data, "application/json", headers)

    @staticmethod
    def _send(
        req: BaseHTTPRequestHandler,
        code: int,
        body: bytes,
        ctype: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        req.send_response(code)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            req.send_header(key, value)
        req.end_headers()
        req.wfile.write(body)
