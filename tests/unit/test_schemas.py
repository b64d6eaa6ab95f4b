"""The JSON Schemas checked in under ``schemas/`` against the pydantic models they describe."""

from __future__ import annotations

import json

from helpers import REPO

from dyno_stream.core.events import json_schemas


def test_checked_in_schemas_match_the_models() -> None:
    """``schemas/`` must be exactly what ``dyno-stream schemas export`` writes today."""
    directory = REPO / "schemas"
    want = json_schemas()
    assert directory.is_dir(), "schemas/ is missing: run `make schemas` and check it in"
    assert sorted(p.name for p in directory.iterdir()) == sorted(want), (
        "schemas/ holds other files than json_schemas(): run `make schemas`"
    )
    for name, schema in want.items():
        text = (directory / name).read_text()
        assert json.loads(text) == schema, f"schemas/{name} is stale: run `make schemas`"
        assert text == json.dumps(schema, indent=2, ensure_ascii=False) + "\n", (
            f"schemas/{name} is not formatted as `make schemas` writes it"
        )
