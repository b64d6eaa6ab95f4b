"""A repartition run's state file: what the run has done so far, saved after each step, so
that a run that crashed resumes where it stopped (``jobs.repartition``)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class State:
    """What a run has done so far; saved after each step, so a crashed run resumes."""

    old_ops: str
    old_snapshots: str
    new_ops: str
    new_snapshots: str
    partitions: int
    recorded: int
    fenced: bool = False
    #: the old ops topic's ends once fenced (no op gets past them)
    ends: dict[int, int] = field(default_factory=dict)
    #: the workers' committed offsets, read before the snapshots
    committed: dict[int, int] = field(default_factory=dict)
    #: the old snapshot topic's ends when read: a resumed run reads the same snapshots
    snapshot_ends: dict[int, int] = field(default_factory=dict)
    items: int | None = None  # set once every snapshot is copied
    #: per old partition, the next offset to forward from (after the last flush)
    cursor: dict[int, int] = field(default_factory=dict)
    forwarded: int = 0
    done: bool = False
    seconds: float = 0.0
    runs: int = 0

    @classmethod
    def load(cls, path: Path) -> State | None:
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        for name in ("ends", "committed", "snapshot_ends", "cursor"):
            raw[name] = {int(k): v for k, v in raw[name].items()}
        return cls(**raw)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)  # never half a state file, whenever the process dies
