"""Conversions between LSP types and codevm's API data: positions, symbols, hovers."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from lsprotocol import types as t

from codevm.api import SymbolDetail, SymbolInfo

SYMBOL_KINDS = {
    "function": t.SymbolKind.Function, "method": t.SymbolKind.Method, "class": t.SymbolKind.Class,
    "interface": t.SymbolKind.Interface, "enum": t.SymbolKind.Enum, "module": t.SymbolKind.Module,
    "struct": t.SymbolKind.Struct, "constant": t.SymbolKind.Constant,
}


def uri_to_path(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path))


def line_range(start: int, end: int) -> t.Range:
    """Whole lines `start`..`end` (1-based) as an LSP range."""
    return t.Range(t.Position(max(start - 1, 0), 0), t.Position(max(end - 1, 0), 10_000))


def symbol_kind(kind: str) -> t.SymbolKind:
    return SYMBOL_KINDS.get(kind, t.SymbolKind.Variable)


def document_symbols(outline: list[SymbolInfo]) -> list[t.DocumentSymbol]:
    """A file's outline (outer before inner) as a tree of document symbols."""
    roots: list[t.DocumentSymbol] = []
    stack: list[tuple[t.DocumentSymbol, int]] = []
    for d in outline:
        sym = t.DocumentSymbol(name=d.name, kind=symbol_kind(d.kind),
                               range=line_range(d.start_line, d.end_line),
                               selection_range=line_range(d.start_line, d.start_line),
                               detail=d.signature or None, children=[])
        while stack and stack[-1][1] < d.end_line:
            stack.pop()
        (stack[-1][0].children if stack else roots).append(sym)  # type: ignore[union-attr]
        stack.append((sym, d.end_line))
    return roots


def hover_markdown(detail: SymbolDetail) -> str:
    """A symbol's signature, docstring, place and notes, in Markdown."""
    d = detail.definition
    parts = [f"```\n{detail.signature or d.qualified_name}\n```"]
    if detail.docstring:
        parts.append(detail.docstring)
    parts.append(f"*{d.path}:{d.start_line}-{d.end_line}*")
    if detail.notes:
        parts.append("**Notes**\n" + "\n".join(
            f"- {n.text}{' *(stale: the code changed)*' if n.stale else ''} (#{n.id}, {n.source})"
            for n in detail.notes))
    return "\n\n".join(parts)


def selected_text(lines: list[str], r: t.Range) -> str:
    """The text of a document that a range covers."""
    chosen = list(lines[r.start.line: r.end.line + 1])
    if chosen:
        if r.end.line != r.start.line:
            chosen[-1] = chosen[-1][: r.end.character]
            chosen[0] = chosen[0][r.start.character:]
        else:
            chosen[-1] = chosen[-1][r.start.character: r.end.character]
    return "".join(chosen).strip()
