"""Reading items from the workers that own them (``DynoClient.get``, ``dyno-stream get``/``ls``).

A read goes to the worker the group's description names for the item's partition
(``kafka.members``); without one (Kafka unreachable, no worker advertising), to the worker
address configured (``[worker] http_host``/``http_port``). A worker answers 200/404, or:

- 307 ``Location``: another worker owns the partition now; followed, the directory re-read;
- 503 ``Retry-After``: the partition is restoring or moving; tried again after that long;
- 504: ``after=`` not applied within the worker's read timeout; tried again;
- 409: the op at ``after=`` was refused (:class:`OpRefusedError`, with the reason);
- 410: with ``outcome``, the worker cannot tell what became of that op.

All within the caller's timeout, after which :class:`ReadTimeoutError` says what the last
answer was; :class:`WorkersUnreachableError` when no worker answered at all.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

from dyno_stream.client.http import bearer, http_get
from dyno_stream.config import Settings
from dyno_stream.core.errors import (
    DynoError,
    HistoryFoldedError,
    OpRefusedError,
    ReadTimeoutError,
    WorkersUnreachableError,
)
from dyno_stream.kafka.members import OwnerDirectory

#: The longest one request waits for a worker to answer (a read with ``after=`` waits on
#: the worker up to its own read timeout first).
_CONNECT_S = 5.0


def _item_query(
    after: tuple[int, int] | None, outcome: bool, as_of_ms: int | None, history: bool
) -> dict[str, str]:
    """The query string of ``GET /items/<name>`` for ``ItemReads.get``'s arguments."""
    query = {} if after is None else {"after": f"{after[0]}:{after[1]}"}
    if outcome:
        query["outcome"] = "1"
    if as_of_ms is not None:  # the item as it stood then; 410: its rows no longer hold it
        query["as_of"] = str(as_of_ms)
    if history:  # its rows, each with the chain hash after it
        query["history"] = "1"
    return query


def _raise_refusal(code: int, body: bytes, as_of_ms: int | None, address: str) -> None:
    """Raise the error of an answer that no retry changes: the op refused (409), the history
    folded (410 to an ``as_of`` read), a bad request or token."""
    if code == 409:
        refused = json.loads(body)
        raise OpRefusedError(refused["error"], refused["refused"], refused.get("actual", {}))
    if code == 410 and as_of_ms is not None:
        raise HistoryFoldedError(_error(body))
    if code in (401, 400, 410):
        raise DynoError(f"worker at {address}: {_error(body)}")


class ItemReads:
    """Thread-safe; one per client (it keeps an admin connection for the directory)."""

    def __init__(self, settings: Settings, admin_config: dict[str, Any]) -> None:
        self.settings = settings
        w = settings.worker
        self._headers = bearer(w.http_token_text)
        self._configured = f"{w.http_host}:{w.http_port}" if w.http_port else None
        self.directory = OwnerDirectory(settings, admin_config)

    def _owner(self, name: str) -> tuple[int | None, str | None]:
        try:
            partition, owner = self.directory.owner_of(name)
        except DynoError:
            return None, self._configured
        return partition, owner or self._configured

    def get(
        self,
        name: str,
        after: tuple[int, int] | None = None,
        timeout: float | None = None,
        outcome: bool = False,
        as_of_ms: int | None = None,
        history: bool = False,
    ) -> dict[str, Any] | None:
        """The item as its owning worker holds it (None: no such item, or deleted); with
        ``after=(partition, offset)``, once that worker has applied that offset, raising
        :class:`OpRefusedError` if it refused that op of the item. ``outcome``: raise
        rather than answer when the worker cannot tell whether it refused it."""
        timeout = self.settings.worker.read_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        query = _item_query(after, outcome, as_of_ms, history)
        last = "no worker address known (none advertised, [worker] http_port 0)"
        answered = False
        address: str | None = None
        while True:
            if address is None:
                partition, address = self._owner(name)
                if after is not None and partition is not None and partition != after[0]:
                    raise DynoError(f"{name!r} is on partition {partition}, not {after[0]}")
            retry_s = 0.05
            if address is not None:
                url = f"http://{address}/items/{quote(name, safe='')}"
                if query:
                    url += "?" + urlencode(query)
                try:
                    code, body, headers = http_get(url, _CONNECT_S + timeout, self._headers)
                except OSError as exc:
                    last = f"worker at {address} unreachable ({exc})"
                    self.directory.stale()
                    address = None
                else:
                    answered = True
                    if code == 200:
                        item: dict[str, Any] = json.loads(body)
                        return item
                    if code == 404:
                        return None
                    _raise_refusal(code, body, as_of_ms, address)
                    last = f"worker at {address} answered {code}: {_error(body)}"
                    if code == 307 and "Location" in headers:
                        self.directory.stale()
                        address = headers["Location"].split("/", 3)[2]
                        continue
                    retry_s = float(headers.get("Retry-After", "0.05"))
                    address = None
            if time.monotonic() + min(retry_s, 0.05) >= deadline:
                error = ReadTimeoutError if answered else WorkersUnreachableError
                raise error(f"read of {name!r} not answered within {timeout}s: {last}")
            time.sleep(max(0.0, min(retry_s, deadline - time.monotonic())))

    def list(self, prefix: str = "", page: int = 500) -> Iterator[dict[str, Any]]:
        """Every item whose name starts with ``prefix``, in name order, each once: the
        pages of every worker the group names, merged. Raises when a partition is not
        covered (restoring, no owner) after the read timeout."""
        deadline = time.monotonic() + self.settings.worker.read_timeout_s
        while True:
            owners = self.directory.owners()
            addresses = owners.addresses() or ([self._configured] if self._configured else [])
            covered: set[int] = set()
            streams = []
            for address in addresses:
                streams.append(self._pages(address, prefix, page, covered))
            # pages are read lazily by the merge: read the first of each to learn coverage
            firsts = [list(_take(s, 1)) for s in streams]
            missing = set(range(owners.partitions)) - covered
            if not missing:
                break
            self.directory.stale()
            if time.monotonic() >= deadline:
                raise ReadTimeoutError(
                    f"partitions {sorted(missing)} of {self.settings.topics.ops} have no "
                    "worker serving them now (restoring or moving)"
                )
            time.sleep(0.2)
        merged = heapq.merge(
            *(_chain(first, s) for first, s in zip(firsts, streams, strict=True)),
            key=lambda it: str(it["item"]),
        )
        seen: str | None = None
        for item in merged:
            if item["item"] != seen:  # a partition that moved between two pages
                seen = item["item"]
                yield item

    def _pages(
        self, address: str, prefix: str, page: int, covered: set[int]
    ) -> Iterator[dict[str, Any]]:
        after: str | None = None
        while True:
            query = {"prefix": prefix, "limit": str(page), **({"after": after} if after else {})}
            url = f"http://{address}/items?{urlencode(query)}"
            try:
                code, body, _ = http_get(url, _CONNECT_S, self._headers)
            except OSError as exc:
                raise WorkersUnreachableError(f"worker at {address} unreachable ({exc})") from None
            if code != 200:
                raise DynoError(f"worker at {address} answered {code}: {_error(body)}")
            answer = json.loads(body)
            if after is None:
                covered.update(answer["partitions"])
            yield from answer["items"]
            after = answer["next"]
            if after is None:
                return


def _take(it: Iterator[dict[str, Any]], n: int) -> Iterator[dict[str, Any]]:
    for _ in range(n):
        try:
            yield next(it)
        except StopIteration:
            return


def _chain(first: list[dict[str, Any]], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield from first
    yield from rest


def _error(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", body[:200].decode(errors="replace")))
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")
