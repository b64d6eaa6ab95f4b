"""No two modules of dyno_stream import each other, directly or round a circle: a circle
means neither can be read (or tested) without the other, and the layer contracts of
import-linter see only imports between packages, not those inside one. Imports under
``TYPE_CHECKING`` and inside functions count: they tie the modules as much."""

from __future__ import annotations

from collections.abc import Mapping, Set

import grimp


def circles(imports: Mapping[str, Set[str]]) -> list[list[str]]:
    """The groups of modules that import each other round a circle (Tarjan's strongly
    connected components of more than one module), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(imports.get(module, ())):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                top = stack.pop()
                group.append(top)
                if top == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(imports):
        if module not in index:
            visit(module)
    return sorted(found)


def test_no_module_of_dyno_stream_is_in_an_import_circle() -> None:
    graph = grimp.build_graph("dyno_stream")
    imports = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    assert circles(imports) == [], "modules that import each other: move what both need apart"


def test_a_circle_of_three_is_found_and_a_chain_is_not() -> None:
    imports = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"d"}}
    assert circles(imports) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": {"c"}}) == []
