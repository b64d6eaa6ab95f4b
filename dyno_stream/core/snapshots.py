"""Snapshots as subscribers see them: parsing one from the snapshot topic, and the rule that
decides which of two snapshots of an item is newer (at-least-once delivery and restores can
deliver one twice or out of order)."""

from __future__ import annotations

from typing import Any

import pydantic

from dyno_stream.core.events import Snapshot as SnapshotModel

#: A snapshot event as a dict (the wire contract's fields).
SnapshotDict = dict[str, Any]


def parse_snapshot(raw: bytes | None) -> SnapshotDict | None:
    """A snapshot event as a dict, or None for anything else (a topic can hold strays)."""
    if raw is None:
        return None
    try:
        return SnapshotModel.model_validate_json(raw).model_dump()
    except pydantic.ValidationError:
        return None


def is_newer(new: SnapshotDict, held: SnapshotDict | None) -> bool:
    """Whether ``new`` should replace ``held``: more changes, or a flatten of the same ones."""
    if held is None:
        return True
    if new["changes"] != held["changes"]:
        return bool(new["changes"] > held["changes"])
    return bool(new["count"] < held["count"])
