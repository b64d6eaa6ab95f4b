"""The wire contract: pydantic models of op events, flatten commands and snapshots.

These models are the single source of the contract: the store applies them, the worker
validates raw Kafka bytes into them, the client builds them, and ``schemas/`` holds their JSON
Schema (``dyno-stream schemas export``). The field names and op names are level-dyno's.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter
from typing_extensions import TypedDict

from dyno_stream.core import ops
from dyno_stream.core.errors import (
    InvalidChangeError,
    InvalidFlakeError,
    InvalidNameError,
    NotJsonError,
    ValidationError,
)
from dyno_stream.core.flake import FLAKE_RE
from dyno_stream.core.keys import MAX_NAME_BYTES, check_name

MD5_PATTERN = r"^[0-9a-f]{32}$"
_T = TypeVar("_T")


def _name(v: str) -> str:
    return check_name(v)


def check_event_name(name: str) -> None:
    """The part of ``check_name`` that pydantic's constraints cannot say, made cheap.

    ``EventName`` already holds the name to 1..1,024 characters; an ASCII name is then
    valid, and only others need their UTF-8 size and encodability checked.
    """
    if not name.isascii():
        check_name(name)


ItemName = Annotated[
    str,
    pydantic.AfterValidator(_name),
    Field(
        min_length=1,
        description=f"Item name: any non-empty UTF-8 string of at most {MAX_NAME_BYTES} bytes.",
    ),
]
#: ``ItemName`` without the Python validator, for op events: the event's validation stays in
#: pydantic-core and ``check_event_name`` finishes it (``parse_event``, ``make_op``, the store).
EventName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_NAME_BYTES,
        description=f"Item name: any non-empty UTF-8 string of at most {MAX_NAME_BYTES} bytes.",
    ),
]
FlakeId = Annotated[
    str,
    Field(
        pattern=FLAKE_RE.pattern,
        description="Flake id: 48-bit ms, 16-bit counter, 16-bit pid, 48-bit node, hex.",
        examples=["013d58c7276e-0000-188c-786ae2e1f629"],
    ),
]
AttrName = Annotated[str, Field(description="Attribute name.")]
FiniteFloat = Annotated[pydantic.StrictFloat, Field(allow_inf_nan=False)]
#: Numbers are strict: "5" or true is not a number, so the stored change is the event's own.
FiniteNumber = pydantic.StrictInt | FiniteFloat
Scalar = pydantic.StrictStr | pydantic.StrictBool | pydantic.StrictInt | FiniteFloat | None


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# The changes are TypedDicts, not models: they validate to the plain JSON data that the op
# semantics take and the store serializes, with no conversion step on the hot path.
class FieldBy(TypedDict):
    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    field: AttrName
    by: FiniteNumber


class FieldStr(TypedDict):
    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    field: AttrName
    str: Annotated[str, Field(description="Text to append.")]


class FieldValue(TypedDict):
    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    field: AttrName
    value: Scalar


class _cached(functools.cached_property[_T]):
    """``functools.cached_property`` without its lock (Python 3.11 takes one on every first
    read, which doubled the cost of validating an event). Models are not shared between
    threads while they are being built, and the value is a pure function of the model."""

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any:
        if instance is None:
            return self
        value = self.func(instance)
        instance.__dict__[self.attrname] = value  # later reads find it here first
        return value


class _Op(_Model):
    """Common part of every op event.

    ``change_json`` is the change as stored in LevelDB and fed to the history hash: computed
    on first use and kept in the instance's ``__dict__`` (a ``cached_property``, so later
    reads are plain attribute reads). It is not a field: it is not part of the wire form.
    ``parse_event`` and ``make_op`` compute it at once, so a change that cannot be stored
    (a non-finite number, text that is not UTF-8) is refused there, naming its field; the
    store computes it for models built any other way.

    There is deliberately no pydantic validator on these models: a Python validator costs
    more than all of pydantic's own work on an event (see bench/bench_compare.py), and
    the worker validates every event it consumes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ignored_types=(_cached,))

    item: EventName
    ts: Annotated[
        FlakeId,
        Field(
            description="The op's time. Flake id: 48-bit ms, 16-bit counter, 16-bit pid, "
            "48-bit node, hex. More than worker.max_clock_skew_s (60 s) ahead of the Kafka "
            "message's timestamp: dead-lettered as clock-skew."
        ),
    ]
    #: Where this op's change can hold a float: "*" anywhere, a key of the change, or "".
    _float_field: ClassVar[str] = "*"

    @_cached
    def change_json(self) -> str:
        return _change_text(self)

    @property
    def change_value(self) -> Any:
        """The change as plain JSON data (what the op semantics take)."""
        return getattr(self, "change")  # noqa: B009 - each subclass declares its own type

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; with ``update``, validated again (and ``change_json`` not carried over)."""
        if update:
            return self.model_validate({**self.model_dump(), **update})
        return super().model_copy(deep=deep)


class PutItem(_Op):
    op: Literal["putItem"] = "putItem"
    change: dict[str, JsonValue]


class DelItem(_Op):
    op: Literal["delItem"] = "delItem"
    change: Annotated[dict[str, JsonValue], Field(max_length=0)] = Field(default_factory=dict)
    _float_field: ClassVar[str] = ""


class PutAttrs(_Op):
    op: Literal["putAttrs"] = "putAttrs"
    change: dict[str, JsonValue]


class DelAttrs(_Op):
    op: Literal["delAttrs"] = "delAttrs"
    change: list[AttrName]
    _float_field: ClassVar[str] = ""


class IncAttrBy(_Op):
    op: Literal["incAttrBy"] = "incAttrBy"
    change: FieldBy
    _float_field: ClassVar[str] = "by"


class DecAttrBy(_Op):
    op: Literal["decAttrBy"] = "decAttrBy"
    change: FieldBy
    _float_field: ClassVar[str] = "by"


class Append(_Op):
    op: Literal["append"] = "append"
    change: FieldStr
    _float_field: ClassVar[str] = ""


class AddToSet(_Op):
    op: Literal["addToSet"] = "addToSet"
    change: FieldValue
    _float_field: ClassVar[str] = "value"


class Flatten(_Model):
    """Flatten command: fold the item's history up to the row whose chain hash is ``hash``.

    With ``before`` (compaction), only rows older than that flake are folded, and a hash that
    an earlier pass already folded away is not an error.
    """

    item: ItemName
    op: Literal["flatten"] = "flatten"
    hash: Annotated[str, Field(pattern=MD5_PATTERN, description="Chain hash (MD5 hex).")]
    before: Annotated[
        FlakeId | None,
        Field(
            description="Fold only rows older than this flake (the lateness cut-off). More "
            "than worker.max_clock_skew_s ahead of the message's timestamp: clock-skew."
        ),
    ] = None


class Erase(_Model):
    """Erase command: remove every row and the cached state of the item at once, leaving
    only its deleted marker (no attribute values), and publish its tombstone.

    Ordered with the item's other ops on its partition. ``ts`` is the erasure's time: an op
    older than it that arrives afterwards is ``late``, so nothing from before the erasure
    comes back; a newer op starts the item again from an empty value.
    """

    item: ItemName
    op: Literal["erase"] = "erase"
    ts: Annotated[
        FlakeId,
        Field(
            description="The erasure's time (flake id). More than worker.max_clock_skew_s "
            "ahead of the Kafka message's timestamp: dead-lettered as clock-skew."
        ),
    ]


Op = Annotated[
    PutItem | DelItem | PutAttrs | DelAttrs | IncAttrBy | DecAttrBy | Append | AddToSet,
    Field(discriminator="op"),
]
Event = Annotated[
    PutItem
    | DelItem
    | PutAttrs
    | DelAttrs
    | IncAttrBy
    | DecAttrBy
    | Append
    | AddToSet
    | Flatten
    | Erase,
    Field(discriminator="op"),
]
OpModel = PutItem | DelItem | PutAttrs | DelAttrs | IncAttrBy | DecAttrBy | Append | AddToSet
EventModel = OpModel | Flatten | Erase

OP_MODELS: dict[str, type[OpModel]] = {
    m.model_fields["op"].default: m
    for m in (PutItem, DelItem, PutAttrs, DelAttrs, IncAttrBy, DecAttrBy, Append, AddToSet)
}

_event_adapter: TypeAdapter[EventModel] = TypeAdapter(Event)
#: pydantic-core's validator itself: ``TypeAdapter.validate_json`` adds Python-level checks
#: of its keyword arguments to every call, a tenth of the cost of validating a small event.
_validate_json = _event_adapter.validator.validate_json


class Source(_Model):
    topic: str
    partition: int
    offset: int


class Snapshot(_Model):
    """The materialized item as the worker publishes it after each batch that touched it."""

    item: ItemName
    value: dict[str, JsonValue] | None
    timestamp: FlakeId | None
    changes: int
    hash: str | None
    count: int
    source: Source | None = None


#: Header of a ``delItem`` sent by expiry (``dyno-stream compact --expire-after``): the
#: item's chain hash when the pass saw it idle. The worker applies the delItem only if the
#: item still has that hash and no earlier op of it came in the same batch (it was not
#: changed meanwhile); otherwise it drops it and answers with the item's snapshot.
H_EXPIRE_IF_HASH = "dyno.expire.if-hash"


class TombstoneHeaders(_Model):
    """The headers of a tombstone: the snapshot topic's message (key = item name, value =
    null) that says an item was deleted. Each value is UTF-8 text; numbers in decimal.

    The source says which op made the deletion (a restore treats the item as deleted at that
    offset); the item's timestamp, changes, hash and count are those of the deleted item (no
    attribute value), so a restore keeps its deleted marker and a newer-than rule holds
    across the deletion.
    """

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    source_topic: str = Field(alias="dyno.source.topic", description="The ops topic.")
    source_partition: str = Field(
        alias="dyno.source.partition", description="Its partition (decimal)."
    )
    source_offset: str = Field(
        alias="dyno.source.offset", description="Offset of the op that deleted it (decimal)."
    )
    item_timestamp: str = Field(
        alias="dyno.item.timestamp", description="Flake of the deletion: the item's last op."
    )
    item_changes: str = Field(alias="dyno.item.changes", description="Ops ever applied.")
    item_hash: str = Field(alias="dyno.item.hash", description="Chain hash after the last op.")
    item_count: str = Field(alias="dyno.item.count", description="Rows the store holds.")
    erased_rows: str | None = Field(
        None,
        alias="dyno.erased.rows",
        description="Only on the answer to an erase command: the item's rows the store "
        "removed (decimal; 0: the store held nothing of the item).",
    )


_TYPE_TAGS = {"int", "float", "str", "bool", "none"}


def _is_union_tag(parent: str, part: str) -> bool:
    return (parent in ("by", "value") and part in _TYPE_TAGS) or "[" in part or "`" in part


def _convert(exc: pydantic.ValidationError) -> ValidationError:
    """Turn pydantic's error into ours, naming the first field that was wrong."""
    errors = exc.errors(include_url=False)
    # a number that is not finite is the real story, whatever else the union tried
    err = next((e for e in errors if e["type"] == "finite_number"), errors[0])
    loc = [str(p) for p in err["loc"]]
    # discriminated unions put the op name in the path: drop it, it is not a field; an error
    # of the op model itself comes from the change check (_serialize_change)
    if loc and loc[0] in (*ops.OP_NAMES, "flatten", "erase"):
        loc = loc[1:] or ["change"]
    # unions add the member's type name to the path (`by.int`, `value.str`, ...): not a
    # field either; only unions do, so a real field named "str" stays
    loc = [p for i, p in enumerate(loc) if not (i and _is_union_tag(loc[i - 1], p))]
    field = ".".join(loc) or "event"
    msg = err["msg"].removeprefix("Value error, ")
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, ValidationError):
        field, msg = ctx_err.field, str(ctx_err).split(": ", 1)[-1]
    if err["type"] == "json_invalid":
        return NotJsonError("event", msg)
    if err["type"] == "union_tag_invalid":
        field, msg = "op", f"unknown op; expected one of {', '.join(ops.OP_NAMES)}, flatten, erase"
    elif err["type"] == "union_tag_not_found":
        field, msg = "op", "missing"
    cls: type[ValidationError]
    if field == "item":
        cls = InvalidNameError
    elif field == "ts":
        cls = InvalidFlakeError
    else:
        cls = InvalidChangeError
    return cls(field, msg)


def _change_text(event: _Op) -> str:
    """``change_json``'s text: the change as compact JSON, refused when it cannot be stored."""
    change = event.change_value
    # Only shapes that can hold a float need the walk that checks them; the others go
    # straight to the encoder.
    floats = event._float_field
    may_float = floats == "*" or (floats and type(change[floats]) is float)
    try:
        return ops.dumps(change) if may_float else ops.dumps_floatless(change)
    except UnicodeError:
        raise InvalidChangeError("change", "is not valid UTF-8 text (lone surrogate)") from None
    except ValueError:
        _check_finite(change, "change")  # raises, naming the field
        raise


def make_op(op: str, item: str, change: Any, ts: str) -> OpModel:
    """Build and validate an op model from Python values; raise our ``ValidationError``."""
    model = OP_MODELS.get(op)
    if model is None:
        raise InvalidChangeError(
            "op", f"unknown op {op!r}; expected one of {', '.join(ops.OP_NAMES)}"
        )
    if not isinstance(item, str):
        raise InvalidNameError("item", f"must be a string, not {type(item).__name__}")
    if not isinstance(ts, str) or not FLAKE_RE.fullmatch(ts):
        raise InvalidFlakeError("ts", f"{ts!r} is not a flake id")
    try:
        event = model(item=item, ts=ts, change=change)
    except pydantic.ValidationError as exc:
        raise _convert(exc) from None
    check_event_name(event.item)
    event.change_json  # noqa: B018 - computed now, so a change that cannot be stored is refused
    return event


def _check_finite(value: Any, field: str) -> None:
    """Python callers can pass NaN where JSON cannot: name the exact field."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidChangeError(field, "is not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{field}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, f"{field}.{i}")


def parse_event(raw: bytes | str) -> EventModel:
    """Validate one raw event (JSON bytes straight from Kafka)."""
    try:
        event: EventModel = _validate_json(raw)
    except pydantic.ValidationError as exc:
        raise _convert(exc) from None
    check_event_name(event.item)
    if isinstance(event, _Op):  # not a flatten or erase command
        # computed now, so a change that cannot be stored is refused here; stored where the
        # cached property finds it, without the cost of calling it (a quarter of this call)
        event.__dict__["change_json"] = _change_text(event)
    return event


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of each wire message, by file name."""
    return {
        "op-event.schema.json": _event_adapter.json_schema(),
        "snapshot.schema.json": Snapshot.model_json_schema(),
        "tombstone-headers.schema.json": TombstoneHeaders.model_json_schema(by_alias=True),
    }
