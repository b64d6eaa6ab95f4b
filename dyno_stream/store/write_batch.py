"""The write batch: what one write of a ``DynoStore`` stages, and how it places each op.

Every write (``apply``, ``flatten``, ``restore``) is one LevelDB write batch: the rows and any
internal_rows internal rows (the worker's consumed offsets) land together or not at all.

Ops normally arrive in flake order, and are then applied to the state directly. An op that
sorts before the item's last row (out-of-order delivery) is placed by replaying the item's rows
with it, so the result never depends on arrival order.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import plyvel

from dyno_stream.core import ops
from dyno_stream.core.errors import (
    ConflictError,
    DynoError,
    InvalidChangeError,
    InvalidFlakeError,
    LateOpError,
    StoreWriteError,
    UnknownHashError,
)
from dyno_stream.core.events import OpModel, check_event_name
from dyno_stream.core.flake import is_flake
from dyno_stream.core.keys import escape_name, item_prefix, row_key, state_key
from dyno_stream.core.limits import check_attr_count, check_attrs
from dyno_stream.core.ops import HISTORY, ItemState, md5

ItemRow = tuple[bytes, str, str, str]  # key, flake, op, stored text
Rows = Mapping[bytes, bytes | None]  # key -> value, or None to delete


def replay_rows(name: str, rows: list[ItemRow]) -> ItemState:
    """The state an item's rows (``WriteBatch.item_rows``) replay to."""
    return ops.replay(name, ((flake, op, text) for _, flake, op, text in rows))


def _replay_prefix(
    name: str, rows: list[ItemRow], hash_: str | None, before: str | None = None
) -> tuple[int, ItemState, bool]:
    """Replay an item's rows from the first, up to the row whose chain hash is ``hash_``
    (and, given ``before``, not past the last row older than that flake): what a flatten folds.

    Returns the index of the last row replayed (-1 when none), the state those rows replay
    to, and whether a row with ``hash_`` was reached.
    """
    upto, folded = -1, ItemState()
    for i, (_, flake, op, text) in enumerate(rows):
        if before is not None and flake >= before:
            break
        if op == HISTORY:
            folded.push_history(flake, text)
        else:
            folded.push(name, flake, op, ops.loads(text), text)
        upto = i
        if folded.hash == hash_:
            return upto, folded, True
    return upto, folded, False


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """LevelDB refusing a write (disk full, I/O error) raises ``StoreWriteError``, which
    names the store at ``path``; nothing of that write batch is stored."""
    try:
        yield
    except plyvel.Error as exc:
        cause = exc.args[0] if exc.args else exc
        if isinstance(cause, bytes):  # plyvel gives LevelDB's message as bytes
            cause = cause.decode("utf-8", "replace")
        raise StoreWriteError(f"LevelDB write to {path} failed: {cause}") from exc


class WriteBatch:
    """One LevelDB write batch in the making: the rows it stages (``rows``; a delete is None),
    read back as if written (``item_rows``), and the state of every item it touched
    (``states``).

    A state comes from the store's state cache when there (and is then changed in place: that
    is what makes a batch cheap) or is read from its state row. Nothing touches LevelDB until
    ``commit``, so an error anywhere leaves the rows as they were; the caller puts the cached
    states right (``StateCache.forget``).
    """

    def __init__(self, db: Any, cache: dict[str, ItemState], max_attrs: int = sys.maxsize) -> None:
        self._db = db
        self._cache = cache
        self._max_attrs = max_attrs
        self.states: dict[str, ItemState] = {}  # every item this batch touched
        # per item: its escaped key prefix (``name/``) and the keys this batch wrote for it
        self.pending: dict[str, tuple[str, list[bytes]]] = {}
        self.rows: dict[bytes, bytes | None] = {}  # key -> value, or None to delete
        #: items erased by this batch (``erase``): their key ranges are compacted once written
        self.erased: list[str] = []

    def state(self, name: str) -> ItemState:
        st = self.states.get(name)
        if st is None:
            st = self._cache.get(name)
            if st is None:
                check_event_name(name)  # a model built without parse_event or make_op
                raw = self._db.get(state_key(name))
                st = ItemState() if raw is None else ItemState.decode(raw)
            self.states[name] = st
            self.pending[name] = (escape_name(name) + "/", [])
        return st

    def stored(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The rows under ``prefix`` as stored before this batch, in key order."""
        return iter(self._db.iterator(prefix=prefix))

    def put(self, name: str, key: bytes, value: bytes | None) -> None:
        """Stage a row of ``name`` (a delete when value is None)."""
        self.rows[key] = value
        self.pending[name][1].append(key)

    def item_rows(self, name: str) -> list[ItemRow]:
        """The item's rows as they will be after this batch, in key order."""
        prefix = item_prefix(name)
        out: list[ItemRow] = []
        for key, value in self.rows_under(name, prefix):
            flake, op = key[len(prefix) :].decode().split("/")
            out.append((key, flake, op, value.decode("utf-8")))
        return out

    def rows_under(self, name: str, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """The item's rows under ``prefix`` (all of them, or one flake's) as they will be
        after this batch, in key order."""
        merged: dict[bytes, bytes | None] = dict(self._db.iterator(prefix=prefix))
        if name in self.pending:
            merged.update((k, self.rows[k]) for k in self.pending[name][1] if k.startswith(prefix))
        return sorted((k, v) for k, v in merged.items() if v is not None)

    def apply_op(self, model: OpModel) -> bool:
        """Add one op; return False when it was a duplicate (nothing to do)."""
        # The hot path of every write, run once per op: kept lean on purpose (one lookup per
        # dict, ItemState.push inlined); see bench/bench_store.py.
        name, flake, op = model.item, model.ts, model.op
        st = self.states.get(name)
        if st is None:
            st = self.state(name)
        if st.base is not None and flake <= st.base:
            raise LateOpError(
                f"{name!r}: op at {flake} is not after the item's history row at {st.base}; "
                "it can no longer be placed"
            )
        text = model.change_json
        prefix, staged = self.pending[name]
        key = f"{prefix}{flake}/{op}".encode()
        last = st.timestamp
        if last is None or flake > last:
            # limits: no op adds more attributes than its change has keys
            if len(st.value) + len(model.change) > self._max_attrs:
                check_attrs(st.value, op, model.change, self._max_attrs)
            try:
                st.value = ops.apply_op(st.value, op, model.change)
            except DynoError:
                raise
            except (ArithmeticError, ValueError, TypeError) as exc:  # never crash a batch
                raise InvalidChangeError("change", f"cannot apply {op}: {exc}") from None
            st.hash = md5(f"{st.hash}\n{name}\n{flake}\n{op}\n{text}\n".encode()).hexdigest()
            st.timestamp = flake
            st.changes += 1
            st.count += 1
            st.deleted = op == "delItem"
            self.rows[key] = text.encode()
            staged.append(key)
            return True
        # Out of order (or a redelivery): check the flake's own rows, then replay with the op
        # in place. A redelivery is found without reading the item's history (which made
        # each one cost the whole history: 1,000 ops of an item redelivered ran at about
        # 1,000 ops/s in bench_compare.py).
        same = self.rows_under(name, f"{prefix}{flake}/".encode())
        if same:
            (held_key, held_value), *others = same
            if not others and held_key == key and held_value == text.encode():
                return False
            held_op = held_key.rsplit(b"/", 1)[1].decode()
            raise ConflictError(
                f"{name!r}: flake {flake} already holds {held_op} {held_value.decode()}; "
                f"refusing {op} {text}"
            )
        rows = self.item_rows(name)
        rows.append((key, flake, op, text))
        rows.sort()
        new = replay_rows(name, rows)
        check_attr_count(op, len(st.value), len(new.value), self._max_attrs)
        self.states[name] = new
        self.put(name, key, text.encode())
        return True

    def flatten(self, name: str, hash_: str) -> bool:
        """Fold rows up to the one whose chain hash is ``hash_``; False when nothing to fold."""
        st = self.state(name)
        rows = self.item_rows(name)
        if st.count and hash_ == st.hash:
            # the common case, fold everything: the state already is that row's result
            upto, folded = len(rows) - 1, st.copy()
        else:
            upto, folded, found = _replay_prefix(name, rows, hash_)
            if not found:
                raise UnknownHashError(f"{name!r}: no row of its history has hash {hash_}")
        return self._fold(name, rows, upto, folded)

    def flatten_before(self, name: str, flake: str, hash_: str | None = None) -> bool:
        """Fold every row older than ``flake`` (and, given ``hash_``, not past its row).

        With ``hash_`` this is compaction's flatten: fold what is both older than the
        lateness cut-off and already published with that hash. A hash no longer in the rows
        of an item that has a history row was folded by an earlier pass: nothing to do.
        """
        if not is_flake(flake):
            raise InvalidFlakeError("flake", f"{flake!r} is not a flake id")
        st = self.state(name)
        rows = self.item_rows(name)
        upto, folded, reached = _replay_prefix(name, rows, hash_, before=flake)
        found = reached or hash_ is None or (st.count > 0 and hash_ == st.hash)
        if not found:
            # the hash may stand after the cut-off: follow the chain (hashes only)
            h = folded.hash
            for _, f, op, text in rows[upto + 1 :]:
                h = text.split(":", 1)[0] if op == HISTORY else ops.chain_hash(h, name, f, op, text)
                if h == hash_:
                    found = True
                    break
        if not found:
            if st.base is not None:
                return False  # folded by an earlier pass
            raise UnknownHashError(f"{name!r}: no row of its history has hash {hash_}")
        if upto == len(rows) - 1 and st.count:
            folded = st.copy()  # keep the state's exact value object
        return self._fold(name, rows, upto, folded)

    def erase(self, name: str, flake: str) -> int:
        """Remove every row of the item and leave only its deleted marker: a history row at
        the erasure's time (or the item's last op, if later) holding null, its chain hash and
        changes carried on past the erasure (no attribute value is kept). The state
        row is rewritten in this same write, not behind it: no value of the item is left in
        a row or in the state cache once the batch lands. An op older than the marker is
        then late; a newer one starts the item again from an empty value.

        Returns the rows removed, not counting a deleted marker replaced (it holds no value):
        0 says the store held nothing of the item, which is how an erasure of an item that
        lives elsewhere (or nowhere) is told from one that removed it. The marker is written
        even then, so an op from before the erasure still on its way stays out."""
        if not is_flake(flake):
            raise InvalidFlakeError("ts", f"{flake!r} is not a flake id")
        st = self.state(name)
        removed = 0
        for key, _, op, text in self.item_rows(name):
            self.put(name, key, None)
            removed += op != HISTORY or not text.endswith(":null")
        at = max(flake, st.timestamp or flake)
        hash_ = ops.chain_hash(st.hash, name, at, "erase", "{}")
        marker = ItemState({}, at, st.changes + 1, hash_, 1, at, deleted=True)
        history = ops.encode_history(hash_, marker.changes, None).encode()
        self.put(name, row_key(name, at, HISTORY), history)
        self.states[name] = marker
        self.rows[state_key(name)] = marker.encode()
        self.erased.append(name)
        return removed

    def _fold(self, name: str, rows: list[ItemRow], upto: int, folded: ItemState) -> bool:
        if upto < 0 or (upto == 0 and rows[0][2] == HISTORY):
            return False  # nothing older, or already folded to exactly there
        for key, *_ in rows[: upto + 1]:
            self.put(name, key, None)
        flake = rows[upto][1]
        history = ops.encode_history(folded.hash, folded.changes, folded.history_value())
        self.put(name, row_key(name, flake, HISTORY), history.encode())
        st = self.states[name]
        st.base = flake
        st.count -= upto  # upto+1 rows become one
        return True

    def commit(self, db: Any, internal_rows: Rows, sync: bool, journal: Rows) -> None:
        """Write the rows, the journal of newly dirty states and ``internal_rows``, atomically."""
        with db.write_batch(sync=sync, transaction=True) as wb:
            put, delete = wb.put, wb.delete
            for key, value in self.rows.items():
                if value is None:
                    delete(key)
                else:
                    put(key, value)
            for key, value in (*journal.items(), *internal_rows.items()):
                if value is None:
                    delete(key)
                else:
                    put(key, value)
