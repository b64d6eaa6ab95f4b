"""Conditional ops: an op may carry what it expects of its item, in two Kafka headers.

``dyno.expect.hash`` is the item's chain hash and ``dyno.expect.changes`` its changes count
(0: the item does not exist yet), either or both. The owning worker applies the op only if
the item matches when the op is applied (after every op before it in the partition), and
only if the op becomes the item's newest: an op placed before the item's newest op would
rewrite the history its expectation was about. Otherwise it is refused as
``expectation-failed`` with the item's actual hash and changes. An op without an
expectation placed later before a conditional one does not undo it: the check is made once.
"""

from __future__ import annotations

from dataclasses import dataclass

from dyno_stream.core.deadletter import KafkaHeaders
from dyno_stream.core.errors import ExpectationFailedError, ValidationError
from dyno_stream.core.ops import ItemState

H_EXPECT_HASH = "dyno.expect.hash"
H_EXPECT_CHANGES = "dyno.expect.changes"
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Expectation:
    """What a conditional op expects of its item (None: no condition on that)."""

    hash: str | None = None
    changes: int | None = None

    def __post_init__(self) -> None:
        if self.hash is not None and (len(self.hash) != 32 or not set(self.hash) <= _HEX):
            raise ValidationError(H_EXPECT_HASH, f"{self.hash!r} is not an MD5 hex digest")
        if self.changes is not None and self.changes < 0:
            raise ValidationError(H_EXPECT_CHANGES, f"{self.changes} is below 0")
        if self.hash is None and self.changes is None:
            raise ValidationError("expect", "an expectation names a hash, a changes count or both")

    def headers(self) -> KafkaHeaders:
        out: KafkaHeaders = []
        if self.hash is not None:
            out.append((H_EXPECT_HASH, self.hash.encode()))
        if self.changes is not None:
            out.append((H_EXPECT_CHANGES, str(self.changes).encode()))
        return out

    @classmethod
    def from_headers(cls, headers: list[tuple[str, bytes | str | None]]) -> Expectation | None:
        """The expectation a message's headers carry, if any; ``ValidationError`` when one
        is malformed (the op is then dead-lettered, not applied unconditionally)."""
        found: dict[str, str] = {}
        for key, value in headers:
            if key in (H_EXPECT_HASH, H_EXPECT_CHANGES):
                found[key] = (value or b"").decode() if not isinstance(value, str) else value
        if not found:
            return None
        changes = found.get(H_EXPECT_CHANGES)
        if changes is not None and not changes.isdigit():
            raise ValidationError(H_EXPECT_CHANGES, f"{changes!r} is not a whole number")
        return cls(found.get(H_EXPECT_HASH), None if changes is None else int(changes))

    def check(self, name: str, flake: str, item: ItemState) -> None:
        """Raise ``ExpectationFailedError`` unless ``item`` is as expected and an op at
        ``flake`` would be its newest."""
        problem = None
        if self.hash is not None and item.hash != self.hash:
            problem = f"hash {item.hash or '(none)'}, not {self.hash}"
        elif self.changes is not None and item.changes != self.changes:
            problem = f"{item.changes} changes, not {self.changes}"
        elif item.timestamp is not None and flake <= item.timestamp:
            problem = f"a newer op at {item.timestamp} than this one at {flake}"
        if problem is not None:
            raise ExpectationFailedError(
                f"{name!r} has {problem}: the conditional op is not applied",
                item.hash,
                item.changes,
            )
