"""A LevelDB write fault, injected into a worker subprocess by the fault suite.

Put this directory on ``PYTHONPATH`` and set ``DYNO_FAULT_LEVELDB_WRITES=N``: Python imports
this module at start-up, and every LevelDB database the process opens then lets N write batches
through (counted over the whole process) and refuses every later one with ``plyvel.IOError``,
writing nothing of it, the way LevelDB itself answers once its disk is full (its error is
sticky until the database is reopened). Only write batches fail; reads keep working.

plyvel's ``DB`` is an extension type that cannot be subclassed, so ``plyvel.DB`` is replaced by
a thin proxy; dyno-stream looks ``plyvel.DB`` up when it opens a store, so it gets the proxy.
Nothing here is imported unless the variable is set.
"""

from __future__ import annotations

import os
import sys
from typing import Any

_LIMIT = os.environ.get("DYNO_FAULT_LEVELDB_WRITES")

if _LIMIT is not None:
    import plyvel

    _RealDB = plyvel.DB
    _state = {"writes": 0, "limit": int(_LIMIT), "failed": 0}

    class _FaultyBatch:
        def __init__(self, batch: Any) -> None:
            self._batch = batch

        def __getattr__(self, name: str) -> Any:
            return getattr(self._batch, name)

        def __enter__(self) -> _FaultyBatch:
            self._batch.__enter__()
            return self

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
            if exc_type is None and _state["writes"] >= _state["limit"]:
                _state["failed"] += 1
                self._batch.clear()  # nothing of it is written
                print(
                    f"faultinject: refusing LevelDB write batch {_state['writes'] + 1}",
                    file=sys.stderr,
                    flush=True,
                )
                raise plyvel.IOError("IO error: injected fault: No space left on device")
            if exc_type is None:
                _state["writes"] += 1
            return self._batch.__exit__(exc_type, exc, tb)

    class _FaultyDB:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._db = _RealDB(*args, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._db, name)

        def write_batch(self, *args: Any, **kwargs: Any) -> _FaultyBatch:
            return _FaultyBatch(self._db.write_batch(*args, **kwargs))

    plyvel.DB = _FaultyDB
