"""The packages' import graph has no cycle, TYPE_CHECKING imports and imports inside functions included:
a cycle is where a newcomer cannot tell which module comes first (issue 23, item 3)."""

from __future__ import annotations

import ast

from tests.conftest import ROOT


def _graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports (a `from a.b import c` counts a.b, and a.b.c when
    that is a module)."""
    modules: dict[str, set[str]] = {}
    for f in (ROOT / package).rglob("*.py"):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
                found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == package}
        modules[name] = found
    return {m: {d for d in deps if d in modules and d != m} for m, deps in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle, each listed once from its smallest module name."""
    found: list[list[str]] = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt == start:
                found.append(path)
            elif nxt > start and nxt not in path:
                walk(start, nxt, [*path, nxt])

    for m in sorted(graph):
        walk(m, m, [m])
    return found


def test_cycles_are_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_synth_or_sft() -> None:
    for package in ("synth", "sft"):
        found = cycles(_graph(package))
        assert not found, f"{package}: " + "; ".join(" -> ".join([*c, c[0]]) for c in found[:5])


def test_the_graph_sees_type_checking_and_function_imports() -> None:
    graph = _graph("synth")
    assert "synth.recipe" in graph["synth.curate.config"] or "synth.curate.checks" in graph["synth.curate.config"]
    assert "synth.io" in graph["synth.recipe"]  # imported inside dump_resolved
