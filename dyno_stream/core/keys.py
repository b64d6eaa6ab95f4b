"""Key encoding for LevelDB: ``<name>/<flake>/<op>``, level-dyno's layout.

A plain name is used as it is, so a store level-dyno wrote reads back unchanged. A name holding
``/``, ``%`` or a control character is percent-escaped (its UTF-8 bytes) inside the key, so no
two names share a key prefix (``a`` and ``a/b`` stay separate items). Escaped names never hold a
control character, so every internal key starts with ``\\x00`` and can never meet an item key.
"""

from __future__ import annotations

import re

from dyno_stream.core.errors import InvalidNameError

MAX_NAME_BYTES = 1024

SEP = "/"
_NEEDS_ESCAPE = re.compile(r"[%/\x00-\x1f\x7f-\x9f]")
_ESCAPED = re.compile(r"(?:%[0-9A-F]{2})+")

#: Prefix of every internal (non-item) key.
INTERNAL = b"\x00"
#: Materialized current state of each item, by raw UTF-8 name (so iteration is name order).
STATE_PREFIX = b"\x00state\x00"
#: Store metadata (format version) and, later, worker bookkeeping.
META_PREFIX = b"\x00meta\x00"


def check_name(name: object, field: str = "item") -> str:
    """Return ``name`` if it is a valid item name, else raise naming ``field``."""
    if not isinstance(name, str):
        raise InvalidNameError(field, f"must be a string, not {type(name).__name__}")
    if not name:
        raise InvalidNameError(field, "must not be empty")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidNameError(field, "is not valid UTF-8 (lone surrogate)") from None
    if size > MAX_NAME_BYTES:
        raise InvalidNameError(field, f"is {size} bytes; at most {MAX_NAME_BYTES} allowed")
    return name


def _escape_char(m: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in m.group(0).encode("utf-8"))


def escape_name(name: str) -> str:
    """The name as it stands in a key: unchanged unless it holds ``%``, ``/`` or a control."""
    if _NEEDS_ESCAPE.search(name) is None:
        return name
    return _NEEDS_ESCAPE.sub(_escape_char, name)


def unescape_name(escaped: str) -> str:
    if "%" not in escaped:
        return escaped
    return _ESCAPED.sub(
        lambda m: bytes.fromhex(m.group(0).replace("%", "")).decode("utf-8"), escaped
    )


def item_prefix(name: str) -> bytes:
    """The key prefix under which all of one item's rows lie."""
    return (escape_name(name) + SEP).encode("utf-8")


def row_key(name: str, flake: str, op: str) -> bytes:
    return f"{escape_name(name)}{SEP}{flake}{SEP}{op}".encode()


def split_key(key: bytes) -> tuple[str, str, str]:
    """``(name, flake, op)`` of an item row key."""
    escaped, flake, op = key.decode("utf-8").split(SEP)
    return unescape_name(escaped), flake, op


def state_key(name: str) -> bytes:
    return STATE_PREFIX + name.encode("utf-8")
