"""`dyno-stream --version` names the release: the package version from pyproject.toml, which
CHANGELOG.md's newest entry records."""

from __future__ import annotations

import tomllib

from helpers import REPO, cli_env, run_cli
from releases import recorded_releases


def test_version_is_the_package_version_and_in_the_changelog() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    out = run_cli(cli_env(), "--version", timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"dyno-stream {version}"
    changelog = (REPO / "CHANGELOG.md").read_text()
    newest = changelog.split("\n## ", 1)[1].split("\n", 1)[0]
    assert newest.startswith(f"{version} - "), f"CHANGELOG.md's newest entry: {newest!r}"


def test_every_earlier_release_is_named_by_a_commit() -> None:
    """Releases are commits on main (no tags): each heading after the newest names one."""
    releases = recorded_releases()
    assert releases, "CHANGELOG.md records no earlier release by its commit"
    assert releases[0].commit.startswith("16984f2")
    assert all(len(r.commit) >= 7 for r in releases)
