"""``dyno-stream demo`` as a user runs it, held to what the quick start shows.

The demo starts a local broker of its own (``DYNO_BROKER_HOME`` and ``DYNO_BROKER_PORT`` put
it in a temporary home on free ports, so it never meets a developer's broker or the session's)
and a worker in another process, and stops both. The demo block of docs/quick-start.md is
read here and each of its lines must appear in the demo's output, in order; flakes and
hashes differ per run, so they are matched by their pattern, and how they relate is checked instead.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import reference
from conftest import free_port
from helpers import REPO, cli_env, free_port_pair

from dyno_stream.devtools.broker import LocalBroker

FLAKE = r"[0-9a-f]{12}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
HASH = r"[0-9a-f]{32}"


def quick_start_demo_lines() -> list[str]:
    """The lines of the quick start's block that shows the demo's output."""
    text = (REPO / "docs" / "quick-start.md").read_text()
    after = text.split("`make demo` starts the broker", 1)[1]
    block = after.split("```\n", 2)[1]
    return [line.strip() for line in block.splitlines() if line.strip()]


def line_pattern(line: str) -> re.Pattern[str]:
    """``line`` as a regular expression: its flakes and hashes stand for any flake, hash."""
    parts = re.split(f"({FLAKE}|{HASH})", line)
    return re.compile(
        "".join(
            FLAKE if re.fullmatch(FLAKE, p) else HASH if re.fullmatch(HASH, p) else re.escape(p)
            for p in parts
        )
    )


@pytest.mark.kafka  # starts a broker of its own
def test_demo_prints_what_the_readme_shows(tmp_path: Path) -> None:
    home = tmp_path / "broker"
    env = cli_env(
        DYNO_BROKER_HOME=str(home),
        DYNO_BROKER_PORT=str(free_port_pair()),
        DYNO_DEMO_HTTP_PORT=str(free_port()),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "dyno_stream", "demo"],
        cwd=tmp_path,  # its data (.dyno/demo) goes here
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    shown = proc.stdout + proc.stderr
    assert proc.returncode == 0, shown[-3000:]
    assert "The worker stopped cleanly." in proc.stdout, shown[-3000:]
    assert not LocalBroker(home=home).is_running(), "the demo left its broker running"

    out = [line.strip() for line in proc.stdout.splitlines()]
    expected = quick_start_demo_lines()
    assert len(expected) >= 5, expected
    found: list[str] = []
    at = 0
    for want in expected:
        pattern = line_pattern(want)
        while at < len(out) and not pattern.fullmatch(out[at]):
            at += 1
        assert at < len(out), (
            f"the quick start's line {want!r} is not in the demo's output "
            + (f"(after {found[-1]!r})" if found else "")
            + f":\n{proc.stdout}"
        )
        found.append(out[at])
        at += 1

    # what the patterns cannot say: the rows' flakes rise, the flatten names the chain hash
    # of the three rows (the store page's formula), and the history row carries it at the newest
    # op's flake
    rows = [re.fullmatch(rf"chilts/({FLAKE})/(\w+) = (.*)", r) for r in found[:3]]
    assert all(rows), found[:3]
    flakes = [m.group(1) for m in rows if m]
    assert flakes == sorted(flakes) and len(set(flakes)) == 3, flakes
    chain = ""
    for m in rows:
        assert m is not None
        flake, op, change_json = m.groups()
        chain = reference.chain_hash(chain, "chilts", flake, op, change_json)
    flatten, history = found[3], found[4]
    assert flatten.endswith(f"hash={chain}"), (flatten, chain)
    assert history.startswith(f"chilts/{flakes[-1]}/history = {chain}:3:"), history
