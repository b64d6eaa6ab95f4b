"""The documents hold to what the software does and to what was measured.

Every measured figure in ``docs/`` is written as ``{{ FMT FILE.json:PATH }}`` and filled in
from ``bench/results/`` at build time by ``docs/hooks.py``; these tests check that each one
resolves, that no measured figure is written by hand, that no document speaks of the
project's development history, that the README stays short, and that module docstrings stay
within 15 lines.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
README = ROOT / "README.md"
BENCHMARKS = DOCS / "benchmarks.md"

README_MAX_LINES = 250
DOCSTRING_MAX_LINES = 15

#: A rate, a latency percentile or a speed-up written by hand: measured figures of this kind
#: come from a results file, on any page.
MEASURED = re.compile(
    r"\d[\d,]*(?:\.\d+)?\s*(?:ops/s|items/s|rows/s|events/s|ops per|items per)"
    r"|\bp(?:50|99)\b(?:\s*/\s*(?:p50|p99|max)\b)*\s*(?:of\s+|[:=]\s*)?\d"
    r"|\b\d+(?:\.\d+)?x\b"
)
#: On the benchmarks page any figure with a unit is a measurement (setups are given in words
#: or in code, and their numbers come from the results file too).
WITH_UNIT = re.compile(
    r"(?<![\w.\-/=])\d[\d,]*(?:\.\d+)?\s*"
    r"(?:s|ms|us|MiB|MB|GiB|KiB|bytes|%|cores?|core-seconds|seconds?|x)(?![\w/])"
)
#: Words about the project's own past: documents say what it does and what was measured.
HISTORY = re.compile(
    r"\bissues? \d+|\b(?:this|last|previous|earlier|next) round\b|\bthe code before\b"
    r"|\bbefore this (?:change|round)\b|\bthis session\b|\bend of the session\b"
    r"|\bnot re-run\b|\bas before\b",
    re.IGNORECASE,
)


def load_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = load_hooks()


def _prose(text: str) -> str:
    """The text with figures, fenced blocks, inline code and link targets taken out."""
    text = hooks.FIGURE.sub("FIGURE", text)
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.MULTILINE | re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "CODE", text)
    return re.sub(r"\]\([^)]*\)", "]", text)


def _hits(pattern: re.Pattern[str], path: Path) -> list[str]:
    """Each match of ``pattern`` in the page's prose, but for goals ("goal 1.7x", "goal:
    under 2 s"), which are targets, not measurements."""
    out = []
    for n, line in enumerate(_prose(path.read_text()).splitlines(), 1):
        for m in pattern.finditer(line):
            if "goal" not in line[max(0, m.start() - 25) : m.start()].lower():
                out.append(f"{path.relative_to(ROOT)}:{n}: {m.group(0)!r} in {line.strip()!r}")
    return out


def test_the_docs_have_pages_and_the_benchmarks_page_reads_its_figures_from_results() -> None:
    assert BENCHMARKS in PAGES
    assert len(hooks.FIGURE.findall(BENCHMARKS.read_text())) > 50


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_every_figure_a_page_names_is_in_its_results_file(page: Path) -> None:
    rendered = hooks.render_figures(page.read_text())
    assert "{{" not in rendered, f"{page}: a figure the hook did not read: {rendered!r}"


def test_a_figure_missing_from_its_results_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"runs": [{"ops_per_s": 68855.6}, {"ops_per_s": 70000}]}')
    assert hooks.render_figures("{{ n x.json:runs/0/ops_per_s }} ops/s", tmp_path) == "68,856 ops/s"
    assert hooks.render_figures("{{ n max x.json:runs/*/ops_per_s }}", tmp_path) == "70,000"
    for bad in ("{{ n x.json:runs/2/ops_per_s }}", "{{ n x.json:rus/0 }}", "{{ n y.json:a }}"):
        with pytest.raises(hooks.FigureError):
            hooks.render_figures(bad, tmp_path)


def test_no_page_writes_a_measured_figure_by_hand() -> None:
    hits = [h for page in [*PAGES, README] for h in _hits(MEASURED, page)]
    hits += _hits(WITH_UNIT, BENCHMARKS)
    hint = "figures not read from bench/results (write {{ FMT FILE.json:PATH }}):"
    assert not hits, "\n".join([hint, *hits])


def test_a_figure_written_by_hand_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("One worker: 68,856 ops/s, {{ n compare.json:dyno/one/ops_per_s }} ops/s.\n")
    page = page.rename(ROOT / "docs" / "_probe_test_docs.md")
    try:
        assert len(_hits(MEASURED, page)) == 1
        page.write_text("p99 162 ms; 3.98x; peak 402 MiB; `memory_mb=256`; 1,000,000 ops\n")
        assert len(_hits(MEASURED, page)) == 2
        assert len(_hits(WITH_UNIT, page)) == 3  # 162 ms, 3.98x, 402 MiB
    finally:
        page.unlink()


def test_no_document_speaks_of_the_projects_history() -> None:
    hits = [h for page in [*PAGES, README] for h in _hits(HISTORY, page)]
    assert not hits, "\n".join(hits)


def test_the_readme_is_short_and_points_into_the_docs() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, (
        f"README.md has {len(text.splitlines())} lines; at most {README_MAX_LINES}: "
        "move the rest into docs/"
    )
    assert "make demo" in text and "make test" in text and "docs/" in text
    assert "partitioner" in text


def _module_docstring_lines(path: Path) -> int:
    body = ast.parse(path.read_text()).body
    first = body[0] if body else None
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)):
        return 0
    if not isinstance(first.value.value, str):
        return 0
    return (first.end_lineno or first.lineno) - first.lineno + 1


def test_module_docstrings_are_at_most_15_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in sorted((ROOT / "dyno_stream").rglob("*.py"))
        if (n := _module_docstring_lines(p)) > DOCSTRING_MAX_LINES
    }
    assert not long, f"over {DOCSTRING_MAX_LINES} lines (move the rest to docs/design/): {long}"


def test_a_16_line_docstring_is_counted_as_16(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('"""' + "\n".join(f"line {i}" for i in range(15)) + '\n"""\nx = 1\n')
    assert _module_docstring_lines(module) == 16


#: Our own issue numbers in code; another project's (librdkafka's, Kafka's) name it first.
OWN_ISSUE = re.compile(r"(?<!librdkafka )(?<!Kafka )(?<!confluent-kafka )\bissues? #?\d+", re.I)
SOURCE_DIRS = ("dyno_stream", "bench", "tests")


def test_no_source_file_names_the_issue_it_came_from() -> None:
    """Docstrings and comments say why the code is so, which stays true; which issue asked
    for it is the history the commits keep."""
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for folder in SOURCE_DIRS
        for path in sorted((ROOT / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if OWN_ISSUE.search(line) and path.name != "test_docs.py"
    ]
    assert not hits, "\n".join(hits)


def test_our_issue_numbers_are_found_and_another_projects_are_not() -> None:
    assert OWN_ISSUE.search("Deleting for real (issue 15): restores")
    assert OWN_ISSUE.search("see issues 13 and 14")
    assert not OWN_ISSUE.search("the admin client crashes (librdkafka issue 5040)")
