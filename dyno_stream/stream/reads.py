"""Reads for the HTTP endpoint: an item or rows from whichever open store holds them.

Served on the endpoint's threads while the loop writes: each store serializes its own
reads and writes, and a store closed under a read (its partition revoked) is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dyno_stream.core.errors import DynoError
from dyno_stream.store.partition import PartitionStore


class StoreReads:
    def __init__(self, stores: Callable[[], Mapping[tuple[str, int], PartitionStore]]) -> None:
        self._stores = stores

    def item(self, name: str) -> dict[str, Any] | None:
        for ps in list(self._stores().values()):
            try:
                item = ps.store.get_item(name)
            except DynoError:
                continue
            if item.value is not None:  # not when deleted: its marker holds no value
                return item.as_dict(partition=ps.label)
        return None

    def rows(self, name: str | None) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = []
        for ps in list(self._stores().values()):
            try:
                rows.extend(ps.store.rows(name))
            except DynoError:
                continue
        return sorted(rows)
