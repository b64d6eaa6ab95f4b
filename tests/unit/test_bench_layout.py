"""The bench scripts share code only through bench/harness/: no script imports another (each
is a program, not a library), and none edits ``sys.path`` to find one."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def script_imports(bench: Path) -> list[str]:
    """``file: script`` for each import of a bench script (a file run as ``__main__``) by a
    bench file, and ``file: sys.path`` for each file that touches ``sys.path``; sorted."""
    scripts = {p.stem for p in bench.glob("*.py") if "__main__" in p.read_text()}
    found = []
    for path in sorted(bench.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        where = str(path.relative_to(bench))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module.split(".")[0]]
            found += [f"{where}: {name}" for name in names if name in scripts]
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "path"
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
            ):
                found.append(f"{where}: sys.path")
    return sorted(found)


def test_no_bench_script_imports_another_or_edits_sys_path() -> None:
    found = script_imports(ROOT / "bench")
    assert not found, f"share it through bench/harness/ instead: {found}"


def test_a_script_importing_another_is_found(tmp_path: Path) -> None:
    (tmp_path / "bench_a.py").write_text("X = 1\nif __name__ == '__main__':\n    print(X)\n")
    (tmp_path / "shared.py").write_text("Y = 1\n")  # a library beside the scripts: allowed
    (tmp_path / "bench_b.py").write_text("import sys\nsys.path.insert(0, '.')\nimport bench_a\n")
    (tmp_path / "bench_c.py").write_text("from bench_a import X\nfrom shared import Y\n")
    assert script_imports(tmp_path) == [
        "bench_b.py: bench_a",
        "bench_b.py: sys.path",
        "bench_c.py: bench_a",
    ]
