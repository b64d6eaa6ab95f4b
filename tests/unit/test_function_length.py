"""No function is over 60 lines: one that long does several things, and a reader needs it in
parts with names. A function's length runs from its ``def`` line to its last line (decorators
left out, its docstring and comments in); nested functions count on their own as well.

Both bench/ and dyno_stream/ are held to it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 60


def long_functions(root: Path, limit: int = MAX_LINES) -> list[str]:
    """``path:line name (N lines)`` of every function under ``root`` over ``limit`` lines,
    longest first."""
    found: list[tuple[int, str]] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    where = f"{path.relative_to(root.parent)}:{node.lineno}"
                    found.append((lines, f"{where} {node.name} ({lines} lines)"))
    return [text for _, text in sorted(found, key=lambda f: -f[0])]


def test_no_function_in_bench_is_over_60_lines() -> None:
    long = long_functions(ROOT / "bench")
    assert not long, f"over {MAX_LINES} lines (split them into named parts): {long}"


def test_no_function_in_dyno_stream_is_over_60_lines() -> None:
    long = long_functions(ROOT / "dyno_stream")
    assert not long, f"over {MAX_LINES} lines (split them into named parts): {long}"


def test_a_function_of_61_lines_is_found_and_one_of_60_is_not(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    root.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(59))
    (root / "sixty.py").write_text(f"def sixty() -> None:\n{body}\n")
    (root / "sixty_one.py").write_text(
        f"class C:\n    @staticmethod\n    def sixty_one() -> None:\n{body}\n        pass\n"
        .replace("\n    x", "\n        x")
    )  # fmt: skip
    assert long_functions(root) == ["pkg/sixty_one.py:3 sixty_one (61 lines)"]
