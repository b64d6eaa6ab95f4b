"""A partition store records the ops topic's partition count it was built for, and refuses
another (the worker's and the client's refusal are in
tests/integration/test_repartition.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dyno_stream.core.errors import PartitionCountError
from dyno_stream.store.partition import PartitionStore


def test_store_built_for_4_partitions_refuses_8(tmp_path: Path) -> None:
    ps = PartitionStore.open(tmp_path, "dyno.ops", 2, sync=False)
    ps.check_partitions(4)  # recorded on first sight
    ps.check_partitions(4)
    ps.close()
    ps = PartitionStore.open(tmp_path, "dyno.ops", 2, sync=False)
    try:
        with pytest.raises(PartitionCountError) as caught:
            ps.check_partitions(8)
    finally:
        ps.close()
    assert str(caught.value) == (
        "ops topic dyno.ops has 8 partitions, was 4: items would split across stores; "
        "see 'dyno-stream repartition'"
    )
