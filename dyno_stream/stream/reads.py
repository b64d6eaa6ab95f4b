"""Reads for the HTTP endpoint: an item, a page of items, or rows, from this worker's stores.

Served on the endpoint's threads, never on the loop's; a read waits for at most the batch in
progress. Routing (``answer_item``): the placement rule gives the item's partition; a worker
holding it answers, others answer 307 with the owner's address, 503 while it is restoring or
has no owner. ``after=P:O`` waits until offset O of partition P is applied (504 past
``read_timeout_s``). A member process of ``worker --processes`` marks answers for partitions
it holds no store of (``NOT_HERE``) so the parent, asking each child, answers as one worker.
The details: ``docs/design/reads.md``.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Generator, Mapping
from contextlib import ExitStack, closing
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from dyno_stream.core.errors import DynoError, HistoryFoldedError, StoreClosedError
from dyno_stream.kafka.members import OwnerDirectory
from dyno_stream.store.partition import PartitionStore

#: (status, JSON body, extra headers)
Answer = tuple[int, Any, dict[str, str]]
#: How often a read with ``after=`` looks again at the store's offset.
_AFTER_POLL_S = 0.002
#: Above every code point: the end of a prefix's name range.
_NAME_END = "\U0010ffff"
#: The header of an answer that says only "this process holds no store of the item's
#: partition" (``siblings``): a sibling process may hold it.
NOT_HERE = "X-Dyno-Not-Here"


@dataclass(frozen=True)
class View:
    """What a read asks of an item: as it is (the default), as it stood at a time
    (``?as_of=<ms since the epoch>``), or its history (``?history=1``)."""

    as_of_ms: int | None = None
    history: bool = False

    @classmethod
    def parse(cls, query: Mapping[str, list[str]]) -> View:
        """Raises ValueError naming what is wrong."""
        as_of = query.get("as_of", [None])[0]
        if as_of is not None and not as_of.isdigit():
            raise ValueError(f"as_of={as_of!r}: expected milliseconds since the epoch")
        return cls(None if as_of is None else int(as_of), "history" in query)


@dataclass(frozen=True)
class After:
    """``?after=<partition>:<offset>``: a produce's place in the ops topic."""

    partition: int
    offset: int

    @classmethod
    def parse(cls, text: str) -> After:
        """Raises ValueError naming what is wrong."""
        partition, sep, offset = text.partition(":")
        if not sep or not partition.isdigit() or not offset.isdigit():
            raise ValueError(f"after={text!r}: expected <partition>:<offset>, e.g. 3:1042")
        return cls(int(partition), int(offset))

    def __str__(self) -> str:
        return f"{self.partition}:{self.offset}"


def page_bounds(prefix: str, after: str | None) -> tuple[str, str]:
    """The inclusive name range of a page: from the prefix (or just past ``after``) to the
    end of the prefix's names."""
    start = prefix
    if after is not None and after >= start:
        start = after + "\x00"
    return start, prefix + _NAME_END


def merge_pages(pages: list[list[str]], limit: int | None = None) -> list[str]:
    """Names from several sorted pages in one order, each once (a partition that moved
    between two pages may show an item twice)."""
    merged = (name for name, _ in itertools.groupby(heapq.merge(*pages)))
    return list(itertools.islice(merged, limit))


def merge_page_answers(pages: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """One page (``answer_page``'s body) from the pages of several processes asked the same
    query: the first ``limit`` items in name order, each once, and the partitions all of
    them cover. ``next`` is the last item whenever any process has more after it."""
    streams = [page["items"] for page in pages]
    merged = heapq.merge(*streams, key=lambda it: str(it["item"]))
    once = (next(group) for _name, group in itertools.groupby(merged, key=lambda it: it["item"]))
    items = list(itertools.islice(once, limit))
    more = len(items) == limit or any(page["next"] is not None for page in pages)
    return {
        "items": items,
        "next": items[-1]["item"] if items and more else None,
        "partitions": sorted({p for page in pages for p in page["partitions"]}),
        "incomplete": sorted({label for page in pages for label in page["incomplete"]}),
    }


class StoreReads:
    def __init__(
        self,
        stores: Callable[[], Mapping[tuple[str, int], PartitionStore]],
        states: Callable[[], Mapping[str, str]] = dict,
        *,
        topic: str = "",
        directory: Callable[[], OwnerDirectory | None] = lambda: None,
        self_address: Callable[[], str | None] = lambda: None,
        read_timeout_s: float = 10.0,
        max_page: int = 1000,
        siblings: bool = False,
    ) -> None:
        self._stores, self._states = stores, states
        self.topic = topic
        self._directory, self._self_address = directory, self_address
        self.read_timeout_s, self.max_page = read_timeout_s, max_page
        #: a member process of ``worker --processes``: see the module's docstring
        self.siblings = siblings

    def item(self, name: str, view: View | None = None) -> dict[str, Any] | None:
        for ps in list(self._stores().values()):
            try:
                found = self._read(ps, name, view)
            except StoreClosedError:  # its partition left meanwhile: not where the item is
                continue
            if found is not None:
                return found
        return None

    @staticmethod
    def _read(ps: PartitionStore, name: str, view: View | None = None) -> dict[str, Any] | None:
        """The item in ``ps`` (None: not there, or deleted), as ``view`` asks. Raises
        ``StoreClosedError`` when the store closed under the read (its partition revoked):
        that is not "no item"; and ``HistoryFoldedError`` for a time its rows no longer hold."""
        try:
            if view is not None and view.history:
                entries = ps.store.history(name)
                if not entries:
                    return None
                return {
                    "item": name,
                    "history": [e.as_dict() for e in entries],
                    "partition": ps.label,
                }
            if view is not None and view.as_of_ms is not None:
                item = ps.store.as_of(name, view.as_of_ms)
            else:
                item = ps.store.get_item(name)
        except (StoreClosedError, HistoryFoldedError):
            raise
        except DynoError:
            return None
        if item.value is None:  # deleted: its marker holds no value
            return None
        return item.as_dict(partition=ps.label)

    def answer_item(self, name: str, query: Mapping[str, list[str]]) -> Answer:
        """The answer to ``GET /items/<name>[?after=P:O]`` (see the module's docstring)."""
        after = None
        if "after" in query:
            try:
                after = After.parse(query["after"][0])
            except ValueError as exc:
                return 400, {"error": str(exc)}, {}
        outcome = "outcome" in query
        if outcome and after is None:
            return 400, {"error": "outcome: says what became of the op at after=P:O"}, {}
        try:
            view = View.parse(query)
        except ValueError as exc:
            return 400, {"error": str(exc)}, {}
        try:
            return self._answer_routed(name, query, after, outcome, view)
        except HistoryFoldedError as exc:
            return 410, {"error": str(exc)}, {}

    def _answer_routed(
        self,
        name: str,
        query: Mapping[str, list[str]],
        after: After | None,
        outcome: bool,
        view: View,
    ) -> Answer:
        directory = self._directory()
        try:
            owners = directory.owners() if directory is not None else None
        except DynoError:
            owners = None  # Kafka unreachable: answer from what this worker holds
        if owners is None:
            if after is not None:
                return self._answer_at(
                    name, after, time.monotonic() + self.read_timeout_s, outcome, view
                )
            found = self.item(name, view)
            return (200, found, {}) if found else (404, self._not_found(name), self._not_here())

        partition = owners.partition_of(name)
        if after is not None and after.partition != partition:
            return 400, {"error": f"after={after}: {name!r} is on partition {partition}"}, {}
        state = self._states().get(f"{self.topic}/{partition}")
        if state in ("RUNNING", "PAUSED"):
            return self._answer_at(
                name,
                after or After(partition, -1),
                time.monotonic() + self.read_timeout_s,
                outcome,
                view,
            )
        retry = {"Retry-After": "1"}
        if state == "RESTORING":
            return 503, {"error": f"partition {partition} is restoring here"}, retry
        owner = owners.by_partition.get(partition)
        if owner is None or owner == self._self_address():
            assert directory is not None
            if owner is None or not self.siblings:  # else a sibling's, as the group says
                directory.stale()  # the group has moved on since it was read
            error = {"error": f"partition {partition} is moving: no owner now"}
            return 503, error, {**retry, **self._not_here()}
        params = {k: v[0] for k, v in query.items()}
        location = f"http://{owner}/items/{quote(name, safe='')}"
        if params:
            location += "?" + urlencode(params)
        return 307, {"owner": owner, "partition": partition}, {"Location": location}

    def _answer_at(
        self,
        name: str,
        after: After,
        deadline: float,
        outcome: bool = False,
        view: View | None = None,
    ) -> Answer:
        """The item once this worker's store of ``after.partition`` is past ``after.offset``;
        409 when the store refused that op of the item (never the item without it), and
        with ``outcome`` 410 when the store does not know (``PartitionStore.outcomes_from``)."""
        while True:
            ps = self._stores().get((self.topic, after.partition))
            if ps is None:
                error = {"error": f"partition {after.partition} left"}
                return 503, error, {"Retry-After": "1", **self._not_here()}
            applied = ps.next_offset or 0
            if applied > after.offset:
                unknown = _unknown_outcome(ps, after) if outcome else None
                if unknown is not None:
                    return 410, {"error": unknown}, {}
                refused = ps.refusal(after.offset) if after.offset >= 0 else None
                if refused is not None and refused.get("item") == name:
                    return 409, _refused(after, refused), {}
                try:
                    found = self._read(ps, name, view)
                except StoreClosedError:  # revoked under the read: ask the owner again
                    return 503, {"error": f"partition {after.partition} left"}, {"Retry-After": "1"}
                return (200, found, {}) if found else (404, self._not_found(name), {})
            if time.monotonic() >= deadline:
                return (
                    504,
                    {
                        "error": f"offset {after.offset} of partition {after.partition} not "
                        f"applied within {self.read_timeout_s}s",
                        "applied_through": applied - 1,
                        "behind": after.offset + 1 - applied,
                    },
                    {},
                )
            time.sleep(_AFTER_POLL_S)

    @staticmethod
    def _not_found(name: str) -> dict[str, str]:
        return {"error": f"no item {name!r} in this worker's stores"}

    def _not_here(self) -> dict[str, str]:
        """The header of an answer that a sibling process may answer otherwise."""
        return {NOT_HERE: "1"} if self.siblings else {}

    def answer_page(self, query: Mapping[str, list[str]]) -> Answer:
        """``GET /items?prefix=P&limit=N&after=NAME``: this worker's items in name order,
        with the partitions the page covers (a restoring one is not: ``incomplete``)."""
        prefix = query.get("prefix", [""])[0]
        after = query.get("after", [None])[0]
        try:
            limit = int(query.get("limit", [str(self.max_page)])[0])
        except ValueError:
            return 400, {"error": "limit: expected a number"}, {}
        if not 1 <= limit <= self.max_page:
            return 400, {"error": f"limit: from 1 to {self.max_page}"}, {}
        start, end = page_bounds(prefix, after)
        states = self._states()
        stores = {
            key: ps
            for key, ps in self._stores().items()
            if states.get(ps.label) in ("RUNNING", "PAUSED")
        }
        items: list[dict[str, Any]] = []
        with ExitStack() as stack:
            streams = [
                stack.enter_context(closing(_named(ps, start, end))) for ps in stores.values()
            ]
            try:
                for _name, item in itertools.islice(
                    heapq.merge(*streams, key=lambda pair: pair[0]), limit
                ):
                    items.append(item)
            except DynoError as exc:  # a store closed under the page: its partition left
                return 503, {"error": str(exc)}, {"Retry-After": "1"}
        return (
            200,
            {
                "items": items,
                "next": items[-1]["item"] if len(items) == limit else None,
                "partitions": sorted(p for _t, p in stores),
                "incomplete": sorted(
                    label for label, s in states.items() if s not in ("RUNNING", "PAUSED")
                ),
            },
            {},
        )

    def rows(self, name: str | None) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = []
        for ps in list(self._stores().values()):
            try:
                rows.extend(ps.store.rows(name))
            except DynoError:
                continue
        return sorted(rows)


def _unknown_outcome(ps: PartitionStore, after: After) -> str | None:
    known = ps.outcomes_from
    if known is not None and after.offset >= known:
        return None
    since = "no offset yet" if known is None else f"offset {known}"
    return (
        f"the outcome of {after} is not known here: {ps.label}'s store records refusals "
        f"from {since} (older ones were its last owner's, or pruned)"
    )


def _refused(after: After, refused: dict[str, Any]) -> dict[str, Any]:
    details = refused.get("details", {})
    actual = {
        k.removeprefix("dyno.actual."): int(v) if v.isdigit() else v
        for k, v in details.items()
        if k.startswith("dyno.actual.")
    }
    return {
        "error": f"the op at {after} was refused ({refused['reason']}): {refused['message']}",
        "refused": refused["reason"],
        "actual": actual,
    }


def _named(
    ps: PartitionStore, start: str, end: str
) -> Generator[tuple[str, dict[str, Any]], None, None]:
    for name, item in ps.store.query(start, end):
        yield name, item.as_dict(partition=ps.label)
