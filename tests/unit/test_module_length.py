"""No module of dyno_stream/ is over 500 lines: one that long holds several concerns, and a
reader looking for one of them should find it in a module named for it. A module's length is
its count of lines, docstrings and comments in."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 500


def long_modules(root: Path, limit: int = MAX_LINES) -> list[str]:
    """``path (N lines)`` of every module under ``root`` over ``limit`` lines, longest first."""
    found: list[tuple[int, str]] = []
    for path in sorted(root.rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > limit:
            found.append((lines, f"{path.relative_to(root.parent)} ({lines} lines)"))
    return [text for _, text in sorted(found, key=lambda f: -f[0])]


def test_no_module_in_dyno_stream_is_over_500_lines() -> None:
    long = long_modules(ROOT / "dyno_stream")
    assert not long, f"over {MAX_LINES} lines (move a cohesive part to a module): {long}"


def test_a_module_of_501_lines_is_found_and_one_of_500_is_not(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "five_hundred.py").write_text("x = 1\n" * 500)
    (root / "sub" / "five_hundred_one.py").write_text("x = 1\n" * 500 + "# one more")
    assert long_modules(root) == ["pkg/sub/five_hundred_one.py (501 lines)"]
