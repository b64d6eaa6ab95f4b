"""Store benchmarks (issue: the dyno store). Prints a table; run `make bench-store`.

- apply of 1,000-op batches (pre-validated models, as the worker hands them over);
- get_item on an item with 10,000 unflattened rows vs an item with 1 row;
- flatten of a 10,000-row item;
- beside apply, the floor: the least any Python apply must do per op (``bench_floor``).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import plyvel
from harness.output import write_json
from rich.console import Console
from rich.table import Table

from dyno_stream.core.events import OpModel, make_op
from dyno_stream.core.flake import FlakeGenerator
from dyno_stream.core.ops import md5
from dyno_stream.store import DynoStore


def make_ops(n: int, items: int, gen: FlakeGenerator, seed: int = 7) -> list[OpModel]:
    """A mixed workload of small ops (mostly putAttrs and incAttrBy) over ``items`` names."""
    rnd = random.Random(seed)
    out: list[OpModel] = []
    for i in range(n):
        name = f"user-{rnd.randrange(items):05d}"
        kind = i % 4
        if kind == 0:
            out.append(make_op("putAttrs", name, {"email": f"u{i}@example.com", "n": i}, gen()))
        elif kind == 1:
            out.append(make_op("incAttrBy", name, {"field": "visits", "by": 1}, gen()))
        elif kind == 2:
            out.append(make_op("append", name, {"field": "log", "str": "x"}, gen()))
        else:
            out.append(make_op("addToSet", name, {"field": "tags", "value": f"t{i % 7}"}, gen()))
    return out


def bench_apply(path: Path, total: int, batch: int, items: int) -> float:
    gen = FlakeGenerator(node=1, pid=1)
    events = make_ops(total, items, gen)
    with DynoStore(path) as store:
        t0 = time.perf_counter()
        for i in range(0, total, batch):
            store.apply(events[i : i + batch])
        return total / (time.perf_counter() - t0)


def bench_floor(path: Path, total: int, batch: int, items: int) -> float:
    """The least any Python apply must do per op, with nothing of the store around it.

    Per op: the row key, the chained MD5 and the row into a plyvel write batch, one LevelDB
    write per batch; the value is kept only for putAttrs, and there are no counts, no late or
    duplicate checks, no state cache or journal. What this loop reaches bounds ``apply``.
    """
    gen = FlakeGenerator(node=4, pid=4)
    events = make_ops(total, items, gen)
    for e in events:
        e.change_json  # noqa: B018 - computed when validated, in the worker too
    db = plyvel.DB(str(path), create_if_missing=True)
    chains: dict[str, list[Any]] = {}
    try:
        t0 = time.perf_counter()
        for i in range(0, total, batch):
            wb = db.write_batch()
            for m in events[i : i + batch]:
                name, flake, op, text = m.item, m.ts, m.op, m.change_json
                st = chains.get(name)
                if st is None:
                    st = chains[name] = [{}, ""]
                if op == "putAttrs":
                    st[0].update(m.change_value)
                st[1] = md5(f"{st[1]}\n{name}\n{flake}\n{op}\n{text}\n".encode()).hexdigest()
                wb.put(f"{name}/{flake}/{op}".encode(), text.encode())
            wb.write()
        return total / (time.perf_counter() - t0)
    finally:
        db.close()


def bench_get(path: Path, rows: int, reps: int) -> tuple[float, float]:
    gen = FlakeGenerator(node=2, pid=2)
    with DynoStore(path) as store:
        store.put_item("small", {"a": 1}, ts=gen())
        big = [make_op("putAttrs", "big", {"a": i, "b": "x" * 20}, gen()) for i in range(rows)]
        for i in range(0, rows, 1000):
            store.apply(big[i : i + 1000])
        assert store.get_item("big").count == rows

        def per_call(name: str) -> float:
            samples = []
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(reps):
                    store.get_item(name)
                samples.append((time.perf_counter() - t0) / reps)
            return min(samples)

        return per_call("small"), per_call("big")


def bench_flatten(path: Path, rows: int, runs: int) -> float:
    gen = FlakeGenerator(node=3, pid=3)
    times = []
    with DynoStore(path) as store:
        for r in range(runs):
            name = f"big-{r}"
            ops = [make_op("putAttrs", name, {"a": i, "b": "x" * 20}, gen()) for i in range(rows)]
            for i in range(0, rows, 1000):
                store.apply(ops[i : i + 1000])
            h = store.get_item(name).hash
            assert h is not None
            t0 = time.perf_counter()
            assert store.flatten(name, h)
            times.append(time.perf_counter() - t0)
            assert store.get_item(name).count == 1
    return statistics.median(times)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ops", type=int, default=300_000)
    ap.add_argument("--items", type=int, default=1_000)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    return ap.parse_args()


def run(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        ops_s = bench_apply(Path(tmp) / "apply", args.ops, 1000, args.items)
        floor = bench_floor(Path(tmp) / "floor", args.ops, 1000, args.items)
        small, big = bench_get(Path(tmp) / "get", 10_000, 2_000)
        flat = bench_flatten(Path(tmp) / "flatten", 10_000, 5)
    return {
        "apply_ops_per_s": ops_s,
        "floor_ops_per_s": floor,
        "get_1_row_s": small,
        "get_10k_rows_s": big,
        "flatten_10k_s": flat,
    }


def report(args: argparse.Namespace, res: dict[str, float]) -> None:
    small, big = res["get_1_row_s"], res["get_10k_rows_s"]
    table = Table(title="dyno store")
    table.add_column("benchmark")
    table.add_column("figure", justify="right")
    table.add_column("target", justify="right")
    table.add_row(
        f"apply, 1,000-op batches, {args.items:,} items",
        f"{res['apply_ops_per_s']:,.0f} ops/s",
        ">= 300,000 ops/s",
    )
    table.add_row(
        "  floor: key, MD5, row put; nothing else", f"{res['floor_ops_per_s']:,.0f} ops/s", ""
    )
    table.add_row("get_item, 1 row", f"{small * 1e6:.1f} us", "")
    table.add_row("get_item, 10,000 rows", f"{big * 1e6:.1f} us", f"<= 2x ({big / small:.2f}x)")
    table.add_row(
        "flatten, 10,000 rows (median of 5)", f"{res['flatten_10k_s'] * 1e3:.1f} ms", "< 50 ms"
    )
    Console().print(table)
    write_json(args.json, res)


def main() -> None:
    args = parse()
    report(args, run(args))


if __name__ == "__main__":
    main()
