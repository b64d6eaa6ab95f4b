"""A LevelDB write fault, injected into a worker subprocess by the fault suite.

Put this directory on ``PYTHONPATH`` and set ``DYNO_FAULT_LEVELDB_WRITES=N``: Python imports
this module at start-up, and every LevelDB database the process opens then lets N write batches
through (counted over the whole process) and refuses every later one with ``plyvel.IOError``,
writing nothing of it, the way LevelDB itself answers once its disk is full (its error is
sticky until the database is reopened). Only write batches fail; reads keep working.

plyvel's ``DB`` is an extension type that cannot be subclassed, so ``plyvel.DB`` is replaced by
a thin proxy; dyno-stream looks ``plyvel.DB`` up when it opens a store, so it gets the proxy.
Nothing here is imported unless the variable is set.

``DYNO_FAULT_RESTORE_ITEMS_PER_S=R`` slows every restore's snapshot read to about R messages
a second (a slow disk or network), so that a test can kill, revoke or cut the ops topic
while a restore of a few thousand items is still running. The wait is taken in 20 ms slices
between fetches and ends as soon as the restore is cancelled, so cancelling stays prompt.

``DYNO_FAULT_FILE_SIZE_LIMIT=B`` limits every file the process writes to B bytes
(``RLIMIT_FSIZE``, inherited by its children) and ignores ``SIGXFSZ``, so a write past the
limit fails with ``EFBIG`` (File too large) instead of killing the process: LevelDB's log
then refuses a write batch part-way through a backlog, as a full disk would (``ENOSPC``),
where no tmpfs can be mounted (the tests do not run as root).

``DYNO_FAULT_ACK_DELAY_S=D`` holds back each delivery report of the process's producers for
D seconds (a slow broker's acknowledgements), so that a worker always has batches in flight:
published, not yet acknowledged.
"""

from __future__ import annotations

import os
import sys
import time
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

_FILE_SIZE_LIMIT = os.environ.get("DYNO_FAULT_FILE_SIZE_LIMIT")

if _FILE_SIZE_LIMIT is not None:
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(_FILE_SIZE_LIMIT), int(_FILE_SIZE_LIMIT)))

_RESTORE_RATE = os.environ.get("DYNO_FAULT_RESTORE_ITEMS_PER_S")

if _RESTORE_RATE is not None:
    from dyno_stream.kafka import reading

    _real_read = reading.read_restore_snapshots
    _rate = float(_RESTORE_RATE)

    def _slow_read(settings: Any, partition: int, co_partitioned: bool, **kw: Any) -> Any:
        cancelled = kw.get("cancelled") or (lambda: False)
        progress = kw.get("on_progress")
        started = time.monotonic()

        def throttled(n: int) -> None:
            until = started + n / _rate
            while time.monotonic() < until and not cancelled():
                time.sleep(0.02)
            if progress is not None:
                progress(n)

        print(f"faultinject: restore of partition {partition} slowed", file=sys.stderr, flush=True)
        return _real_read(settings, partition, co_partitioned, **{**kw, "on_progress": throttled})

    # dyno_stream.stream.worker imports the name from here when it is first imported (later)
    reading.read_restore_snapshots = _slow_read

_ACK_DELAY = os.environ.get("DYNO_FAULT_ACK_DELAY_S")

if _ACK_DELAY is not None:
    import confluent_kafka

    _delay = float(_ACK_DELAY)

    class _SlowAckProducer(confluent_kafka.Producer):
        """Delivery reports come D seconds late, from a later poll() or flush()."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._held: list[tuple[float, Any, Any, Any]] = []

        def produce(self, *args: Any, **kwargs: Any) -> None:
            cb = kwargs.pop("on_delivery", None) or kwargs.pop("callback", None)
            if cb is not None:
                held = self._held

                def later(err: Any, msg: Any) -> None:
                    held.append((time.monotonic() + _delay, cb, err, msg))

                kwargs["on_delivery"] = later
            super().produce(*args, **kwargs)

        def _fire_due(self) -> int:
            now = time.monotonic()
            due = [h for h in self._held if h[0] <= now]
            self._held[:] = [h for h in self._held if h[0] > now]
            for _, cb, err, msg in due:
                cb(err, msg)
            return len(due)

        def poll(self, timeout: float = -1) -> int:
            n: int = super().poll(timeout)
            return n + self._fire_due()

        def flush(self, timeout: float = -1) -> int:
            left: int = super().flush(timeout)
            deadline = time.monotonic() + (timeout if timeout >= 0 else 3600)
            while self._held and time.monotonic() < deadline:
                time.sleep(0.01)
                self._fire_due()
            return left + len(self._held)

        def __len__(self) -> int:
            return int(super().__len__()) + len(self._held)

    confluent_kafka.Producer = _SlowAckProducer  # type: ignore[misc]

_KILL_AT_TOMBSTONE = os.environ.get("DYNO_FAULT_KILL_AT_TOMBSTONE")

if _KILL_AT_TOMBSTONE is not None:
    # ``DYNO_FAULT_KILL_AT_TOMBSTONE=PATH``: the first time the process produces a tombstone
    # (a null value) while no file PATH exists, it creates PATH and SIGKILLs itself before the
    # tombstone leaves: a worker killed between an erasure's write batch (its rows removed)
    # and its tombstone. Run again with the same PATH, it produces normally.
    import signal

    import confluent_kafka

    _flag = _KILL_AT_TOMBSTONE

    class _KillAtTombstoneProducer(confluent_kafka.Producer):
        def produce(self, *args: Any, **kwargs: Any) -> None:
            value = args[1] if len(args) > 1 else kwargs.get("value")
            if value is None and not os.path.exists(_flag):
                with open(_flag, "w") as fh:
                    fh.write("killed\n")
                print("faultinject: killed before a tombstone", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            super().produce(*args, **kwargs)

    confluent_kafka.Producer = _KillAtTombstoneProducer  # type: ignore[misc]
