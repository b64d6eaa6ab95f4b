"""mkdocs hooks: the pages that are generated at build time, so they cannot drift.

- ``<!-- cli-reference -->`` becomes every ``dyno-stream`` command, read from the typer app;
- ``<!-- config-reference -->`` becomes every setting, read from the pydantic settings models
  (type, default, and the ``#:`` comment above the field in ``dyno_stream/config/settings.py``);
- ``{{ FMT [AGG] FILE.json:PATH [over PATH] }}`` becomes a figure read from
  ``bench/results/FILE.json``: PATH is keys and list indexes joined by ``/`` (``*`` takes
  every element), AGG one of min, max, median, FMT a format below. ``over PATH`` divides by
  a second figure of the same file. A path that is not in the file fails the build.

``tests/unit/test_docs.py`` loads this file to hold the pages to the results files.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import statistics
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

FIGURE = re.compile(
    r"\{\{\s*(?P<fmt>\w+)\s+(?:(?P<agg>min|max|median)\s+)?(?P<file>[\w.-]+\.json):"
    r"(?P<path>[^}]+?)(?:\s+over\s+(?P<over>[^}]+?))?\s*\}\}"
)

FORMATS: dict[str, Callable[[float], str]] = {
    "n": lambda v: f"{v:,.0f}",  # a count or a rate: 68,856
    "n1": lambda v: f"{v:,.1f}",
    "n2": lambda v: f"{v:,.2f}",
    "n3": lambda v: f"{v:,.3f}",
    "mib": lambda v: f"{v / 2**20:,.0f}",  # bytes as MiB
    "mb": lambda v: f"{v / 1e6:,.1f}",  # bytes as MB
    "ms": lambda v: f"{v * 1e3:,.0f}",  # seconds as milliseconds
    "us": lambda v: f"{v * 1e6:,.1f}",  # seconds as microseconds
    "us2": lambda v: f"{v * 1e6:,.2f}",
    "pct": lambda v: f"{v * 100:,.0f}",  # a ratio as a percentage
}


class FigureError(ValueError):
    """A figure the docs name that its results file does not hold."""


def _lookup(data: Any, path: str, where: str) -> Any:
    """The value at ``path`` (keys and indexes joined by ``/``; ``*`` maps over a list)."""
    parts = [p for p in path.strip().split("/") if p != ""]
    for i, part in enumerate(parts):
        if part == "*":
            rest = "/".join(parts[i + 1 :])
            items = data.values() if isinstance(data, dict) else data
            return [_lookup(x, rest, where) for x in items]
        if isinstance(data, list):
            try:
                data = data[int(part)]
            except (ValueError, IndexError) as exc:
                raise FigureError(f"{where}: no element {part!r} in {path!r}") from exc
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            raise FigureError(f"{where}: no key {part!r} in {path!r}")
    return data


def figure(match: re.Match[str], results: Path = RESULTS) -> str:
    """The text a ``{{ ... }}`` figure stands for."""
    where = f"{{{{ {match.group(0)[2:-2].strip()} }}}}"
    fmt = FORMATS.get(match.group("fmt"))
    if fmt is None:
        raise FigureError(
            f"{where}: unknown format {match.group('fmt')!r} (one of {list(FORMATS)})"
        )
    file = results / match.group("file")
    if not file.is_file():
        raise FigureError(f"{where}: no results file {file}")
    data = json.loads(file.read_text())
    value = _lookup(data, match.group("path"), where)
    agg = match.group("agg")
    if agg is not None:
        if not isinstance(value, list):
            raise FigureError(f"{where}: {agg} needs a list, the path holds {value!r}")
        value = {"min": min, "max": max, "median": statistics.median}[agg](value)
    if match.group("over") is not None:
        value = value / _lookup(data, match.group("over"), where)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FigureError(f"{where}: not a number: {value!r}")
    return fmt(value)


def render_figures(markdown: str, results: Path = RESULTS) -> str:
    return FIGURE.sub(lambda m: figure(m, results), markdown)


# -- the CLI reference ---------------------------------------------------------------------

HELP_ENV = {"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}


def _help(app: Any, args: list[str]) -> str:
    """What ``dyno-stream ARGS --help`` prints, as plain text."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [*args, "--help"], env=HELP_ENV, prog_name="dyno-stream")
    if result.exit_code != 0:
        raise RuntimeError(f"dyno-stream {' '.join(args)} --help exited {result.exit_code}")
    return "\n".join(line.rstrip() for line in result.output.strip("\n").splitlines())


def _commands(group: Any, args: list[str]) -> list[list[str]]:
    """Every command path under ``group``, in name order, groups before their commands."""
    out: list[list[str]] = []
    for name in sorted(getattr(group, "commands", {}) or {}):
        cmd = group.commands[name]
        if getattr(cmd, "hidden", False):
            continue
        out.append([*args, name])
        out += _commands(cmd, [*args, name])
    return out


def cli_reference() -> str:
    """Every command of ``dyno-stream`` with its ``--help``, from the typer app itself."""
    import typer.main

    from dyno_stream.cli import app

    group = typer.main.get_command(app)
    lines = ["## `dyno-stream`", "", "```text", _help(app, []), "```", ""]
    for path in _commands(group, []):
        level = "#" * (2 + len(path))
        lines += [f"{level} `dyno-stream {' '.join(path)}`", ""]
        lines += ["```text", _help(app, path), "```", ""]
    return "\n".join(lines)


# -- the configuration reference -----------------------------------------------------------


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _field_comments(source: str) -> dict[tuple[str, str], str]:
    """The ``#:`` comment lines above each field of each class, by (class, field)."""
    lines = source.splitlines()
    out: dict[tuple[str, str], str] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                comment: list[str] = []
                i = stmt.lineno - 2
                while i >= 0 and lines[i].strip().startswith("#:"):
                    comment.insert(0, lines[i].strip()[2:].strip())
                    i -= 1
                out[(node.name, stmt.target.id)] = " ".join(comment)
    return out


def _toml_comments(text: str) -> dict[tuple[str, str], str]:
    """The comment beside each setting in ``config/dyno-stream.toml``, by (section, name)."""
    out: dict[tuple[str, str], str] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.lstrip("# ").rstrip() if raw.startswith("# ") and "=" in raw else raw
        head = re.match(r"^\[([\w.]+)\]", line)
        if head:
            section = head.group(1)
            continue
        m = re.match(r"^(\w+)\s*=\s*[^#]*?#\s*(.+)$", line)
        if m:
            out[(section, m.group(1))] = m.group(2).strip()
    return out


def _annotation(ann: Any) -> str:
    if ann is None or ann is type(None):
        return "None"
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in typing.get_args(ann))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_annotation(a) for a in typing.get_args(ann))
    if origin is not None:
        args = ", ".join(_annotation(a) for a in typing.get_args(ann))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(ann, "__name__", str(ann))


def _default(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, Path):
        value = str(value)
    return f"`{json.dumps(value)}`" if not isinstance(value, dict) or value else "`{}`"


def config_reference() -> str:
    """Every setting of ``Settings``, section by section, from the models themselves."""
    from pydantic import BaseModel

    from dyno_stream import config

    comments = _field_comments(Path(inspect.getfile(config.settings)).read_text())
    toml_file = ROOT / "config" / "dyno-stream.toml"
    toml = _toml_comments(toml_file.read_text()) if toml_file.is_file() else {}
    lines: list[str] = []
    for section, field in config.Settings.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        lines += [f"## `[{section}]`", ""]
        doc = inspect.cleandoc(model.__doc__ or "")
        if doc and not doc.startswith(("Usage docs", "!!! abstract")):
            lines += [doc, ""]
        lines += ["| setting | environment | type | default | what |", "|---|---|---|---|---|"]
        for name, f in model.model_fields.items():
            what = (
                f.description
                or comments.get((model.__name__, name))
                or toml.get((section, name), "")
            )
            env = f"`DYNO_{section.upper()}__{name.upper()}`"
            lines.append(
                f"| `{name}` | {env} | {_cell(_annotation(f.annotation))} | {_default(f)} "
                f"| {_cell(what)} |"
            )
        lines.append("")
    return "\n".join(lines)


# -- mkdocs --------------------------------------------------------------------------------


def render_page(markdown: str) -> str:
    """A page's markdown with every generated part filled in."""
    if "<!-- cli-reference -->" in markdown:
        markdown = markdown.replace("<!-- cli-reference -->", cli_reference())
    if "<!-- config-reference -->" in markdown:
        markdown = markdown.replace("<!-- config-reference -->", config_reference())
    return render_figures(markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return render_page(markdown)
