"""Helpers the test modules share: running the ``dyno-stream`` command line as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dyno_stream.config import Settings
from dyno_stream.demo import settings_env

REPO = Path(__file__).resolve().parent.parent


def cli_env(s: Settings | None = None, **extra: str) -> dict[str, str]:
    """This process's environment without any DYNO_* setting, then ``s`` (HTTP off) and extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNO_")}
    if s is not None:
        env.update(settings_env(s))
        env["DYNO_WORKER__HTTP_PORT"] = "0"
    env.update(extra)
    return env


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``python -m dyno_stream ARGS`` in the repository, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "dyno_stream", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
