"""Which of two snapshots of an item a ``MaterializedView`` keeps: ``is_newer``.

The views themselves, over the real broker, are in ``tests/integration/test_views.py``.
"""

from __future__ import annotations

from dyno_stream.core.snapshots import is_newer


def test_is_newer() -> None:
    held = {"changes": 5, "count": 3}
    assert is_newer(held, None)
    assert is_newer({"changes": 6, "count": 9}, held)
    assert is_newer({"changes": 5, "count": 1}, held)  # a flatten of the same changes
    assert not is_newer({"changes": 5, "count": 3}, held)  # a duplicate
    assert not is_newer({"changes": 5, "count": 4}, held)
    assert not is_newer({"changes": 4, "count": 1}, held)
