"""The house drawn from its imports: each part imports only the parts below it, and no
module imports one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import codevm

PACKAGE = Path(codevm.__file__).parent

# bottom to top; a part may import its own modules and those of any part below it
LAYERS = [
    # identifiers: the code-aware terms, which the database makes again when it rebuilds
    # the lexical index (a leaf: it imports nothing of codevm)
    {"codevm", "codevm.api", "codevm.errors", "codevm.config", "codevm.project", "codevm.lazy",
     "codevm.indexers.identifiers"},
    {"codevm.models", "codevm.db"},
    {"codevm.indexers"},
    {"codevm.retrieval"},
    {"codevm.memory"},
    {"codevm.engine", "codevm.render"},
    {"codevm.service"},
    {"codevm.lsp", "codevm.mcp_server", "codevm.cli", "codevm.quick", "codevm.__main__"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the codevm modules it imports (anywhere in it, deferred imports too)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("codevm"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("codevm"))
        graph[_module_name(path)] = found
    known = set(graph)
    return {m: {i for i in deps if i in known and i != m} for m, deps in graph.items()}


def _layer(module: str) -> int:
    for level, parts in enumerate(LAYERS):
        if module in parts or any(module.startswith(p + ".") for p in parts if p != "codevm"):
            return level
    raise AssertionError(f"{module} belongs to no part of the architecture: add it to LAYERS")


def _part(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_every_import_points_down_or_within_its_part() -> None:
    upward = [f"{m} imports {d}" for m, deps in _imports().items() for d in deps
              if _part(d) != _part(m) and _layer(d) > _layer(m)]
    assert upward == []


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = _imports()
    cycles = []
    for start in sorted(graph):
        # every module reachable from `start`, with the path that reached it
        paths = {start: [start]}
        todo = [start]
        while todo:
            node = todo.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    cycles.append(" -> ".join(paths[node] + [start]))
                elif nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    todo.append(nxt)
    assert cycles == []
