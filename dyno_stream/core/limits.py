"""Limits on one event: configurable, enforced by the worker, each with its own reason.

The ops topic is open to any producer, and one event must not make a worker slow, huge or
crash. Each limit is a ``[worker]`` setting (``max_event_bytes``, ``max_name_bytes``,
``max_depth``, ``max_attrs``); a broken one dead-letters the event with its own reason. The
checks sit on the hot path, so each costs next to nothing for an ordinary event; ``explain``
(the error path only) reports an event beyond a limit as such even when the parser refused it
first. Where each is checked and why it is cheap: ``docs/design/limits.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import orjson

from dyno_stream.core.errors import (
    InvalidNameError,
    NameTooLongError,
    NotJsonError,
    TooDeepError,
    TooManyAttrsError,
    ValidationError,
)
from dyno_stream.core.keys import MAX_NAME_BYTES
from dyno_stream.core.ops import PUT_ATTRS, PUT_ITEM

if TYPE_CHECKING:  # the store imports this module: keep its imports light
    from dyno_stream.core.events import EventModel


class LimitSettings(Protocol):
    """The settings the limits are read from (``config.WorkerSettings`` has them): a
    protocol, so the core does not import the configuration layer above it."""

    @property
    def max_event_bytes(self) -> int: ...
    @property
    def max_name_bytes(self) -> int: ...
    @property
    def max_depth(self) -> int: ...
    @property
    def max_attrs(self) -> int: ...


#: The ops whose change can nest (every other op's change has a fixed, flat shape).
_NESTING = frozenset({PUT_ITEM, PUT_ATTRS})
#: A UTF-8 character takes at most this many bytes.
_MAX_CHAR_BYTES = 4


class Limits:
    """The limits one worker enforces (``Limits.from_settings(settings.worker)``)."""

    __slots__ = (
        "_deep_chars",
        "_name_chars",
        "max_attrs",
        "max_depth",
        "max_event_bytes",
        "max_name_bytes",
    )

    def __init__(
        self,
        max_event_bytes: int = 1_048_576,
        max_name_bytes: int = MAX_NAME_BYTES,
        max_depth: int = 32,
        max_attrs: int = 10_000,
    ) -> None:
        self.max_event_bytes = max_event_bytes
        self.max_name_bytes = max_name_bytes
        self.max_depth = max_depth
        self.max_attrs = max_attrs
        # Thresholds below which a check cannot fail, worked out once. A name of n characters
        # has at most 4n UTF-8 bytes; a change nested d deep has d opening and d closing
        # brackets in its JSON text, so a text of at most 2 * max_depth characters is never
        # too deep, whatever it holds.
        self._name_chars = max_name_bytes // _MAX_CHAR_BYTES
        self._deep_chars = 2 * max_depth + 1

    @classmethod
    def from_settings(cls, w: LimitSettings) -> Limits:
        return cls(w.max_event_bytes, w.max_name_bytes, w.max_depth, w.max_attrs)

    def __repr__(self) -> str:
        return (
            f"Limits(max_event_bytes={self.max_event_bytes}, max_name_bytes="
            f"{self.max_name_bytes}, max_depth={self.max_depth}, max_attrs={self.max_attrs})"
        )

    def check(self, event: EventModel) -> None:
        """Raise the ``LimitError`` a parsed event breaks (name length, nesting depth).

        A few comparisons for an ordinary event (0.23-0.36 us here with the call, in
        ``bench/bench_limits.py``): the name is measured only when its length in characters
        allows it to be too long; a change is looked at only for the ops whose change can
        nest, only when its JSON text is long enough to hold too many brackets, then its
        brackets are counted, and it is walked only when there are more of them than
        ``max_depth``. Flat changes are never walked.
        """
        name = event.item
        if len(name) > self._name_chars:
            size = len(name.encode("utf-8", "surrogatepass"))
            if size > self.max_name_bytes:
                raise NameTooLongError(
                    "item", f"is {size} bytes; the limit is {self.max_name_bytes}"
                )
        if event.op in _NESTING:
            text: str = event.change_json  # type: ignore[union-attr]  # an op, by its name
            if (
                len(text) > self._deep_chars
                and text.count("{") + text.count("[") > self.max_depth
                and nesting_depth(event.change, self.max_depth) > self.max_depth  # type: ignore[union-attr]
            ):
                raise TooDeepError("change", f"is nested deeper than the limit of {self.max_depth}")

    def explain(self, exc: ValidationError, raw: bytes) -> ValidationError:
        """The error to report for an event the parser refused: a ``LimitError`` when the
        event breaks a limit (its name is too long, it nests too deep for the parser), else
        ``exc`` itself. Runs on the error path only."""
        if isinstance(exc, InvalidNameError):
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return exc
            name = doc.get("item") if isinstance(doc, dict) else None
            if isinstance(name, str):
                size = len(name.encode("utf-8", "surrogatepass"))
                if size > self.max_name_bytes:
                    return NameTooLongError(
                        "item", f"is {size} bytes; the limit is {self.max_name_bytes}"
                    )
        elif (
            isinstance(exc, NotJsonError)
            # the event object is one level more than its change
            and raw.count(b"{") + raw.count(b"[") > self.max_depth + 1
            and raw_depth(raw) > self.max_depth + 1
        ):
            return TooDeepError(
                "change",
                f"is nested deeper than the limit of {self.max_depth} (the JSON parser "
                f"refused it: {str(exc).removeprefix('event: ')})",
            )
        return exc


def nesting_depth(value: Any, stop: int) -> int:
    """Objects and arrays on the deepest path through ``value`` (a scalar is 0).

    Iterative, so no nesting can exhaust the stack; stops counting once past ``stop``.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        t = type(v)
        if t is not dict and t is not list:
            continue
        if depth > deepest:
            deepest = depth
            if deepest > stop:
                return deepest
        for child in v.values() if t is dict else v:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return deepest


def raw_depth(raw: bytes) -> int:
    """The deepest bracket nesting in JSON bytes, brackets inside strings not counted.

    For events the parser refused: tells "nested too deep" from other broken JSON.
    """
    depth = deepest = 0
    in_string = escaped = False
    for b in raw:
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:  # backslash
                escaped = True
            elif b == 0x22:  # quote
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x7B, 0x5B):  # { [
            depth += 1
            deepest = max(deepest, depth)
        elif b in (0x7D, 0x5D):  # } ]
            depth -= 1
    return deepest


def check_attrs(value: dict[str, Any], op: str, change: Any, max_attrs: int) -> None:
    """Raise ``TooManyAttrsError`` when ``op`` would leave ``value`` with more than
    ``max_attrs`` attributes, and more than it has now (an item over a lowered limit can still
    be changed and shrunk, never grown).

    The store calls this only when ``len(value) + len(change)`` exceeds the limit: no op adds
    more attributes than its change has keys, so below that nothing can be over.
    """
    before = len(value)
    if op == PUT_ITEM:
        after = len(change)
    elif op == PUT_ATTRS:
        after = before + sum(1 for k in change if k not in value)
    elif isinstance(change, dict) and "field" in change:  # incAttrBy ... addToSet: one field
        after = before + (change["field"] not in value)
    else:  # delAttrs, delItem: never more
        return
    check_attr_count(op, before, after, max_attrs)


def check_attr_count(op: str, before: int, after: int, max_attrs: int) -> None:
    """The rule itself: more than ``max_attrs`` attributes, and more than before, is refused."""
    if after > max_attrs and after > before:
        raise TooManyAttrsError(
            "change", f"{op} would give the item {after} attributes; the limit is {max_attrs}"
        )
