"""Earlier releases, as CHANGELOG.md records them, installed to run beside the current code.

The project keeps no tags: each release is named by its commit on ``main`` in CHANGELOG.md
(a ``## <version> - <commit>`` heading). ``release_venv`` installs one into a virtualenv of
its own under ``~/.cache/dyno-stream/releases/<commit>`` (from ``git archive``, so the
worktree is untouched), once: a later run finds it ready.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHANGELOG = REPO / "CHANGELOG.md"

#: ``## 0.1.1 - 16984f2 (2026-11-30)``: a release heading; ``unreleased`` has no commit
_HEADING = re.compile(r"^## (\S+) - ([0-9a-f]{7,40})\b", re.MULTILINE)


@dataclass(frozen=True)
class Release:
    version: str
    commit: str  # as CHANGELOG.md gives it (7 or more hex digits)


def recorded_releases() -> list[Release]:
    """The releases CHANGELOG.md records, newest first."""
    return [Release(v, c) for v, c in _HEADING.findall(CHANGELOG.read_text())]


def full_commit(commit: str) -> str:
    """The 40-digit name of ``commit``; a clear failure when this clone lacks it."""
    out = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"commit {commit} (a release in CHANGELOG.md) is not in this clone: a shallow "
            f"clone lacks it; fetch the history with `git fetch --unshallow`"
        )
    return out.stdout.strip()


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dyno-stream" / "releases"


def release_venv(commit: str) -> Path:
    """The ``dyno-stream`` executable of ``commit``, installed in its own cached virtualenv."""
    full = full_commit(commit)
    home = cache_root() / full
    exe = home / "venv" / "bin" / "dyno-stream"
    stamp = home / ".installed"
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:  # two test runs at once build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and exe.is_file():
            return exe
        shutil.rmtree(home / "venv", ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix="dyno-release-") as tmp:
            src = Path(tmp) / "src"
            archive = Path(tmp) / "src.tar"
            subprocess.run(
                ["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), full],
                check=True,
            )
            with tarfile.open(archive) as tar:
                tar.extractall(src, filter="data")
            subprocess.run([sys.executable, "-m", "venv", str(home / "venv")], check=True)
            pip = home / "venv" / "bin" / "pip"
            # the package and its dependencies only: the release's dev tools are not needed
            subprocess.run(
                [str(pip), "install", "--quiet", "--disable-pip-version-check", str(src)],
                check=True,
            )
        stamp.write_text(full + "\n")
        return exe
