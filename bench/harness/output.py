"""The results files: JSON under bench/results/, which docs/hooks.py reads figures from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent.parent / "results"


def write_json(path: Path | None, results: Any, indent: int = 2) -> None:
    """Write ``results`` to ``path`` (nothing if None), indented, with a final newline."""
    if path is not None:
        path.write_text(json.dumps(results, indent=indent) + "\n")
