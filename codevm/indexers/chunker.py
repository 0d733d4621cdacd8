"""One file's text -> symbol-aligned chunks, symbol definitions and references.

Chunks follow the code's structure: a function or method is one chunk; a class keeps its
header, fields and the signatures of its methods, while each method is a chunk of its
own; module-level code between definitions is grouped. A symbol over the token cap is
split at its children's boundaries and every part carries the enclosing signature as a
header. Tiny neighbours at the same level are merged. Markdown is split by headings and any
other text by line windows.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from tree_sitter import Node, Parser, Query, QueryCursor
from tree_sitter_language_pack import get_language, get_parser

from codevm.indexers.identifiers import IDENTIFIER
from codevm.indexers.languages import CONTAINER_KINDS, LANGUAGES, METHOD_OWNER_KINDS, LanguageSpec


def estimate_tokens(text: str) -> int:
    """A chunk's size in the index's own unit (four characters a token): what
    `max_chunk_tokens` counts. Not the model's count: memory/budget.py estimates that."""
    return (len(text) + 3) // 4


@dataclass
class Chunk:
    kind: str
    name: str
    qualified_name: str
    start_line: int  # 1-based, inclusive
    end_line: int
    text: str
    signature: str = ""
    docstring: str = ""
    symbols: list[str] = field(default_factory=list)  # names of all definitions inside

    @property
    def tokens(self) -> int:
        return estimate_tokens(self.text)


@dataclass
class Definition:
    kind: str
    name: str
    qualified_name: str
    start_line: int  # 0-based rows while extracting
    end_line: int
    signature: str
    docstring: str
    node: Node
    children: list[Definition] = field(default_factory=list)


@dataclass
class Extraction:
    chunks: list[Chunk]
    # (name, qualified_name, kind, start_line, end_line, signature), lines 1-based
    symbols: list[tuple[str, str, str, int, int, str]]
    # (name, kind, line, caller qualified name)
    refs: list[tuple[str, str, int, str]]


@cache
def _parser_and_query(language: str) -> tuple[Parser, Query, LanguageSpec]:
    spec = LANGUAGES[language]
    name: Any = spec.name  # one of the pack's grammar names (a Literal of ~170)
    return get_parser(name), Query(get_language(name), spec.query), spec


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


_NAME_SPLIT = re.compile(r"::|[.:\\]|->")
_BRACKETS = re.compile(r"<[^<>]*>|\([^()]*\)|\[[^\[\]]*\]")


def _clean_name(raw: str) -> list[str]:
    """A captured name node's text -> its dotted parts ("Foo::bar" -> ["Foo", "bar"])."""
    text = raw
    for _ in range(3):
        new = _BRACKETS.sub("", text)
        if new == text:
            break
        text = new
    parts = [p.strip() for p in _NAME_SPLIT.split(text)]
    names = []
    for p in parts:
        m = IDENTIFIER.findall(p)
        if m:
            names.append(m[-1] if not p.startswith("~") else "~" + m[-1])
    return names or [" ".join(raw.split())[:80] or "?"]


def _c_declarator_name(node: Node) -> Node | None:
    """The name node inside a C/C++ declarator (through pointers, references, ...)."""
    current: Node | None = node
    for _ in range(8):
        if current is None:
            return None
        if current.type in ("identifier", "field_identifier", "qualified_identifier",
                            "destructor_name", "operator_name", "type_identifier"):
            return current
        inner = current.child_by_field_name("declarator")
        if inner is None:
            for child in current.named_children:
                if child.type in ("identifier", "field_identifier", "qualified_identifier",
                                  "destructor_name", "operator_name"):
                    return child
            return None
        current = inner
    return None


def _signature(node: Node, lines: list[str], start: int) -> str:
    body = node.child_by_field_name("body")
    end_row = body.start_point.row if body is not None else node.start_point.row
    end_row = max(start, min(end_row, start + 5))
    sig = " ".join(line.strip() for line in lines[node.start_point.row : end_row + 1])
    if body is not None and body.start_point.row == end_row:
        cut = body.start_point.column
        last = lines[end_row]
        sig = " ".join(
            [line.strip() for line in lines[node.start_point.row : end_row]] + [last[:cut].strip()]
        )
    return " ".join(sig.split())[:240].rstrip(" {:")


def _python_docstring(node: Node) -> str:
    body = node.child_by_field_name("body")
    if body is None or body.named_child_count == 0:
        return ""
    first = body.named_children[0]
    if first.type == "expression_statement" and first.named_child_count:
        first = first.named_children[0]
    if first.type == "string" and first.text is not None:
        doc = first.text.decode("utf-8", "replace").strip("\"'rbuRBU \n")
        return doc.strip()[:1000]
    return ""


def _leading_comments(node: Node, spec: LanguageSpec) -> tuple[int, str]:
    """Start row including the comments right above `node`, and their text."""
    start = node.start_point.row
    texts: list[str] = []
    prev = node.prev_named_sibling
    while prev is not None and prev.type in spec.comment_types and prev.end_point.row >= start - 1:
        start = prev.start_point.row
        if "comment" in prev.type and prev.text is not None:
            texts.append(prev.text.decode("utf-8", "replace"))
        prev = prev.prev_named_sibling
    doc = "\n".join(reversed(texts))
    doc = "\n".join(line.strip().lstrip("/#*!-").strip() for line in doc.splitlines()).strip()
    return start, doc[:1000]


class _FileChunker:
    def __init__(self, path: str, language: str, text: str, max_tokens: int, min_tokens: int):
        self.path = path
        self.language = language
        self.lines = text.split("\n")
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens

    def slice(self, start: int, end: int) -> str:
        return "\n".join(self.lines[start : end + 1])

    # -- definitions and references -------------------------------------------------
    def extract(self, data: bytes) -> Extraction:
        parser, query, spec = _parser_and_query(self.language)
        tree = parser.parse(data)
        matches = QueryCursor(query).matches(tree.root_node)
        defs: list[Definition] = []
        calls: list[tuple[str, int, str]] = []
        for _pattern, captures in matches:
            for cap_name, nodes in captures.items():
                if cap_name.startswith("definition."):
                    d = self._definition(cap_name[11:], nodes[0], captures, spec)
                    if d is not None:
                        defs.append(d)
                elif cap_name == "reference.call":
                    for name_node in captures.get("name", ()):
                        if name_node.text is None:
                            continue
                        name = name_node.text.decode("utf-8", "replace")
                        kind = "import" if name in spec.import_calls else "call"
                        calls.append((name, name_node.start_point.row, kind))
                elif cap_name == "reference.import":
                    node = nodes[0]
                    raw = node.text.decode("utf-8", "replace") if node.text else ""
                    for ident in dict.fromkeys(IDENTIFIER.findall(raw)):  # in order, every run
                        if ident not in ("import", "from", "as", "use", "using", "include",
                                         "static", "namespace", "crate", "super", "self"):
                            calls.append((ident, node.start_point.row, "import"))
        roots = self._nest(defs)
        symbols: list[tuple[str, str, str, int, int, str]] = []
        owner: list[str] = [""] * (len(self.lines) + 1)
        self._qualify(roots, "", None, symbols, owner)
        refs = [(n, k, row + 1, owner[row]) for n, row, k in calls]
        chunks = self._chunk_level(roots, 0, len(self.lines) - 1, None)
        return Extraction(chunks, symbols, refs)

    def _definition(self, kind: str, node: Node, captures: dict[str, list[Node]],
                    spec: LanguageSpec) -> Definition | None:
        name_nodes = captures.get("name")
        if name_nodes:
            name_node: Node | None = name_nodes[0]
            if kind == "function" and self.language in ("c", "cpp"):
                name_node = _c_declarator_name(name_nodes[0])
                if name_node is None:
                    return None
            raw = name_node.text.decode("utf-8", "replace") if name_node and name_node.text else "?"
        elif kind == "method" and node.type == "init_declaration":
            raw = "init"
        else:
            return None
        parts = _clean_name(raw)
        if kind == "function" and self.language == "cpp" and len(parts) > 1:
            kind = "method"  # defined out of its class: double Matrix::trace() { ... }
        if kind == "method" and "owner" in captures:  # Go receivers: (s *Server) -> Server
            owner_text = captures["owner"][0].text or b""
            idents = IDENTIFIER.findall(owner_text.decode("utf-8", "replace"))
            if idents:
                parts = [idents[-1]] + parts
        outer = node
        while outer.parent is not None and outer.parent.type in spec.wrapper_types:
            outer = outer.parent
        start, doc = _leading_comments(outer, spec)
        if self.language == "python":
            doc = _python_docstring(node) or doc
        return Definition(
            kind=kind,
            name=parts[-1],
            qualified_name=".".join(parts),
            start_line=start,
            end_line=outer.end_point.row if outer.end_point.column > 0 or outer.end_point.row == start
            else outer.end_point.row - 1,
            signature=_signature(node, self.lines, node.start_point.row),
            docstring=doc,
            node=node,
        )

    @staticmethod
    def _nest(defs: list[Definition]) -> list[Definition]:
        defs.sort(key=lambda d: (d.node.start_byte, -d.node.end_byte))
        roots: list[Definition] = []
        stack: list[Definition] = []
        seen: set[int] = set()
        for d in defs:
            key = d.node.id
            if key in seen:  # the same node captured by two patterns
                continue
            seen.add(key)
            while stack and d.node.start_byte >= stack[-1].node.end_byte:
                stack.pop()
            (stack[-1].children if stack else roots).append(d)
            stack.append(d)
        return roots

    def _qualify(self, defs: list[Definition], prefix: str, parent: Definition | None,
                 symbols: list[tuple[str, str, str, int, int, str]], owner: list[str]) -> None:
        for d in defs:
            if prefix:
                d.qualified_name = f"{prefix}.{d.qualified_name}"
            if d.kind == "function" and parent is not None and (
                    parent.kind in METHOD_OWNER_KINDS
                    or (parent.kind == "module" and self.language == "ruby")):
                d.kind = "method"
            owner[d.start_line : d.end_line + 1] = [d.qualified_name] * (d.end_line - d.start_line + 1)
            symbols.append((d.name, d.qualified_name, d.kind, d.start_line + 1, d.end_line + 1,
                            d.signature))
            self._qualify(d.children, d.qualified_name, d, symbols, owner)

    # -- chunking ----------------------------------------------------------------------
    def _chunk_level(self, defs: list[Definition], start: int, end: int,
                     parent: Definition | None) -> list[Chunk]:
        """Chunks for lines start..end holding the sibling definitions `defs`."""
        pieces: list[Chunk] = []
        cursor = start
        for d in defs:
            if d.start_line > cursor:
                pieces.extend(self._loose_lines(cursor, d.start_line - 1, parent))
            pieces.extend(self._definition_chunks(d))
            cursor = max(cursor, d.end_line + 1)
        if cursor <= end:
            pieces.extend(self._loose_lines(cursor, end, parent))
        return self._merge_tiny(pieces)

    def _loose_lines(self, start: int, end: int, parent: Definition | None) -> list[Chunk]:
        while start <= end and not self.lines[start].strip():
            start += 1
        while end >= start and not self.lines[end].strip():
            end -= 1
        if start > end:
            return []
        if parent is None:
            kind, name, qual = "module", self.path.rsplit("/", 1)[-1], ""
        else:
            kind, name, qual = parent.kind, parent.name, parent.qualified_name
        return self._windows(start, end, kind, name, qual, "")

    def _definition_chunks(self, d: Definition) -> list[Chunk]:
        if d.kind in CONTAINER_KINDS and d.children:
            return self._container_chunks(d)
        text = self.slice(d.start_line, d.end_line)
        names = [d.qualified_name] + [c.qualified_name for c in _walk(d.children)]
        if estimate_tokens(text) <= self.max_tokens:
            return [Chunk(d.kind, d.name, d.qualified_name, d.start_line + 1, d.end_line + 1,
                          text, d.signature, d.docstring, names)]
        parts = self._split_node(d.node, d.start_line, d.end_line, d.signature)
        for p in parts:
            p.kind, p.name, p.qualified_name, p.signature = d.kind, d.name, d.qualified_name, d.signature
            p.docstring = d.docstring if p is parts[0] else ""
            p.symbols = names
        return parts

    def _container_chunks(self, d: Definition) -> list[Chunk]:
        """The container's own lines (header, fields, member signatures) + member chunks."""
        kept: list[str] = []
        cursor = d.start_line
        for child in d.children:
            kept.extend(self.lines[cursor : child.start_line])
            sig_line = self.lines[child.node.start_point.row]
            indent = sig_line[: len(sig_line) - len(sig_line.lstrip())]
            kept.append(f"{indent}{child.signature} ...")
            cursor = max(cursor, child.end_line + 1)
        kept.extend(self.lines[cursor : d.end_line + 1])
        own = "\n".join(line for line in kept if line.strip())
        chunks: list[Chunk] = []
        header = Chunk(d.kind, d.name, d.qualified_name, d.start_line + 1, d.end_line + 1, own,
                       d.signature, d.docstring, [d.qualified_name])
        if header.tokens > self.max_tokens:
            own_lines = own.split("\n")
            budget = self.max_tokens * 4
            part: list[str] = []
            for line in own_lines:
                if part and sum(len(x) + 1 for x in part) + len(line) > budget:
                    chunks.append(Chunk(d.kind, d.name, d.qualified_name, d.start_line + 1,
                                        d.end_line + 1, "\n".join(part), d.signature,
                                        d.docstring if not chunks else "", [d.qualified_name]))
                    part = [d.signature + " ..."]
                part.append(line[:budget])
            chunks.append(Chunk(d.kind, d.name, d.qualified_name, d.start_line + 1, d.end_line + 1,
                                "\n".join(part), d.signature, "", [d.qualified_name]))
        else:
            chunks.append(header)
        members: list[Chunk] = []
        for child in d.children:
            members.extend(self._definition_chunks(child))
        return chunks + self._merge_tiny(members)

    def _split_node(self, node: Node, start: int, end: int, header: str) -> list[Chunk]:
        """Split an oversize node at its children's boundaries, each part headed."""
        body = node.child_by_field_name("body") or node
        children = [c for c in body.named_children if c.end_point.row >= start]
        if len(children) < 2 and body is not node:
            children = [c for c in node.named_children if c.end_point.row >= start]
        if len(children) < 2:
            return self._windows(start, end, "", "", "", header)
        head = f"{header} ..."
        budget = self.max_tokens - estimate_tokens(head)
        parts: list[Chunk] = []
        part_start = start
        part_end = start - 1
        for child in children:
            c_start, c_end = max(child.start_point.row, part_start), min(child.end_point.row, end)
            if c_end < c_start:
                continue
            size = estimate_tokens(self.slice(part_start, c_end))
            if size <= budget:
                part_end = c_end
                continue
            if part_end >= part_start:
                parts.append(self._part(part_start, part_end, head if parts else ""))
                part_start = part_end + 1
            if estimate_tokens(self.slice(part_start, c_end)) <= budget:
                part_end = c_end
            else:
                child_sig = " ".join(self.lines[child.start_point.row].split())[:160]
                parts.extend(self._split_node(child, part_start, c_end, f"{header}\n    {child_sig}"))
                part_start = c_end + 1
                part_end = c_end
        if part_start <= end:
            parts.append(self._part(part_start, end, head if parts else ""))
        return parts

    def _part(self, start: int, end: int, head: str) -> Chunk:
        text = self.slice(start, end)
        if head:
            text = f"{head}\n{text}"
        if estimate_tokens(text) > self.max_tokens:
            return Chunk("", "", "", start + 1, end + 1, text[: self.max_tokens * 4])
        return Chunk("", "", "", start + 1, end + 1, text)

    def _windows(self, start: int, end: int, kind: str, name: str, qual: str,
                 header: str) -> list[Chunk]:
        """Lines start..end in windows under the token cap (long lines are cut)."""
        head = f"{header} ...\n" if header else ""
        budget = (self.max_tokens - estimate_tokens(head)) * 4
        chunks: list[Chunk] = []
        cur_start, size = start, 0
        for row in range(start, end + 1):
            length = min(len(self.lines[row]), budget) + 1
            if size and size + length > budget:
                chunks.append(self._window_chunk(cur_start, row - 1, kind, name, qual, head, budget))
                cur_start, size = row, 0
            size += length
        chunks.append(self._window_chunk(cur_start, end, kind, name, qual, head, budget))
        return chunks

    def _window_chunk(self, start: int, end: int, kind: str, name: str, qual: str, head: str,
                      budget: int) -> Chunk:
        text = head + "\n".join(line[:budget] for line in self.lines[start : end + 1])
        return Chunk(kind, name, qual, start + 1, end + 1, text[: budget + len(head)])

    def _merge_tiny(self, pieces: list[Chunk]) -> list[Chunk]:
        """Merge tiny loose fragments (module code, sections) into their neighbours.

        Two definitions are never merged: a chunk names one symbol, so that search hits
        and citations stay exact.
        """
        out: list[Chunk] = []
        for i, piece in enumerate(pieces):
            prev = out[-1] if out else None
            # a loose fragment (a constant, a comment) belongs with what follows it
            follows = i + 1 < len(pieces) and not piece.symbols and prev is not None and prev.symbols
            if (
                prev is not None
                and not follows
                and (prev.tokens < self.min_tokens or piece.tokens < self.min_tokens)
                and not (prev.symbols and piece.symbols)
                and prev.tokens + piece.tokens <= self.max_tokens
                and piece.start_line > prev.end_line
            ):
                # keep the lines between them so the text stays a verbatim slice of the file
                gap = self.lines[prev.end_line : piece.start_line - 1]
                merged_text = "\n".join([prev.text, *gap, piece.text])
                primary = piece if piece.symbols else prev
                out[-1] = Chunk(
                    primary.kind, primary.name, primary.qualified_name, prev.start_line,
                    piece.end_line, merged_text, primary.signature, primary.docstring,
                    prev.symbols + piece.symbols,
                )
            else:
                out.append(piece)
        return out


def _walk(defs: list[Definition]) -> list[Definition]:
    out: list[Definition] = []
    for d in defs:
        out.append(d)
        out.extend(_walk(d.children))
    return out


_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _markdown_chunks(path: str, text: str, max_tokens: int, min_tokens: int) -> list[Chunk]:
    fc = _FileChunker(path, "markdown", text, max_tokens, min_tokens)
    sections: list[tuple[int, str]] = []  # (start row, heading path)
    stack: list[tuple[int, str]] = []
    in_fence = False
    for row, line in enumerate(fc.lines):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        m = None if in_fence else _HEADING.match(line)
        if m:
            level = len(m.group(1))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, m.group(2)))
            sections.append((row, " > ".join(t for _, t in stack)))
    if not sections or sections[0][0] > 0:
        sections.insert(0, (0, ""))
    chunks: list[Chunk] = []
    for i, (row, title) in enumerate(sections):
        end = sections[i + 1][0] - 1 if i + 1 < len(sections) else len(fc.lines) - 1
        while row <= end and not fc.lines[row].strip():
            row += 1
        if row > end:
            continue
        name = title.rsplit(" > ", 1)[-1] if title else path.rsplit("/", 1)[-1]
        # continuation windows of a long section repeat its heading path as a header
        parts = fc._windows(row, end, "section", name, title, title)
        if title:
            parts[0].text = parts[0].text[len(title) + 5 :]
        for c in parts:
            c.signature = title
        chunks.extend(parts)
    return fc._merge_tiny(chunks)


def extract(path: str, text: str, language: str, data: bytes | None = None,
            max_tokens: int = 384, min_tokens: int = 48) -> Extraction:
    """Chunks, symbols and references of one file's text."""
    if language == "markdown":
        return Extraction(_markdown_chunks(path, text, max_tokens, min_tokens), [], [])
    if language not in LANGUAGES:
        fc = _FileChunker(path, language, text, max_tokens, min_tokens)
        chunks = fc._loose_lines(0, len(fc.lines) - 1, None)
        for c in chunks:
            c.kind = "window"
        return Extraction(chunks, [], [])
    fc = _FileChunker(path, language, text, max_tokens, min_tokens)
    return fc.extract(data if data is not None else text.encode("utf-8"))


def chunk_names(chunk: Chunk) -> str:
    """The names a chunk defines, for its index text: every definition inside it (a class
    and its methods, a merged run of small functions), else its qualified name."""
    return " ".join(chunk.symbols) if chunk.symbols else chunk.qualified_name


__all__ = ["Chunk", "Extraction", "extract", "chunk_names", "content_hash",
           "estimate_tokens"]
