"""Symbol queries: definitions by name, a file's outline, references, chunk locations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import duckdb

from codevm.api import RefInfo, SymbolInfo
from codevm.db.lexical import DEFINITION_KINDS, LexicalIndex
from codevm.errors import InvalidArgument
from codevm.retrieval.sql import by_ids

_COLUMNS = "name, qualified_name, kind, path, start_line, end_line, signature, language"


MAX_PARTS = 200  # chunks of one file sharing a definition's name, read to find its parts


class Part(NamedTuple):
    """One chunk of a definition: a long one is split into parts, in order (`ord`)."""
    chunk_id: int
    start_line: int
    end_line: int
    text: str


def file_lines(text: str, start: int, end: int) -> list[str] | None:
    """The lines start..end of a chunk's `text` as the file has them: without the header a
    part of a long definition after the first carries (its signature); None for a chunk
    cut to the size cap, which lacks some of them."""
    lines = text.split("\n")
    header = len(lines) - (end - start + 1)
    return lines[header:] if header >= 0 else None


def definition_parts(con: duckdb.DuckDBPyConnection, lexical: LexicalIndex,
                     chunk_ids: list[int], with_text: bool = True) -> dict[int, list[Part]]:
    """chunk id -> every part, in order, of the definition that chunk is one part of (for
    the chunks that are parts of a split definition: a function, method or class). The
    file's chunks of each name come from a term lookup (a scan of chunks by path cost 4 ms
    a chunk on u-boot), then are read by id (their text too when `with_text`)."""
    if not chunk_ids:
        return {}
    where, params = by_ids(chunk_ids)
    asked = {cid: (path, qual, kind, ord_) for cid, path, qual, kind, ord_ in con.execute(
        f"SELECT id, path, qualified_name, kind, ord FROM chunks c {where}", params).fetchall()
        if qual and kind in DEFINITION_KINDS}
    same = lexical.in_files("names", sorted({(p, q) for p, q, _, _ in asked.values()}), MAX_PARTS)
    if not same:
        return {}
    where, params = by_ids(same)
    column = "text" if with_text else "''"
    runs: dict[tuple[str, str, str], dict[int, Part]] = {}
    for cid, path, qual, kind, ord_, start, end, text in con.execute(
            f"SELECT id, path, qualified_name, kind, ord, start_line, end_line, {column} FROM chunks c {where}",
            params).fetchall():
        runs.setdefault((path, qual, kind), {})[ord_] = Part(cid, start, end, text)
    out = {}
    for cid, (path, qual, kind, ord_) in asked.items():
        parts = runs.get((path, qual, kind), {})
        if ord_ not in parts:
            continue
        first = last = ord_
        while first - 1 in parts:  # the parts next to it: one definition split in order
            first -= 1
        while last + 1 in parts:
            last += 1
        if last > first:
            out[cid] = [parts[o] for o in range(first, last + 1)]
    return out


class Symbols:
    def __init__(self, cursor: Callable[[], duckdb.DuckDBPyConnection], lexical: LexicalIndex):
        self.cursor = cursor
        self.lexical = lexical

    def defined(self, name: str, limit: int = 50) -> list[SymbolInfo]:
        """Where `name` (a name or a qualified name like Class.method) is defined."""
        match = "name = $n OR qualified_name = $n OR qualified_name LIKE '%.' || $n"

        def rows(where: str, **extra: str) -> list[SymbolInfo]:
            return [SymbolInfo(*r) for r in self.cursor().execute(
                f"""SELECT {_COLUMNS} FROM symbols WHERE {where}
                   ORDER BY qualified_name = $n DESC, path LIKE '%test%', path, start_line
                   LIMIT $limit""", {"n": name, "limit": limit, **extra}).fetchall()]

        # a match's name is the last part of `name`, and filtering on it first halves the scan
        # of u-boot's 123k symbols (20 -> 10 ms; an OR with the LIKE reads them all)
        found = rows(f"name = $last AND ({match})", last=name.rsplit(".", 1)[-1])
        if not found and "." in name:  # a name with dots of its own (a heading "1.2 Setup")
            found = rows(match)
        return found

    def matching(self, query: str, limit: int = 200) -> list[SymbolInfo]:
        """Symbols whose name holds `query` (with a dot in it, whose qualified name does:
        `Model.sa`): exact, then prefix, then shortest; tests last. Names only otherwise, as
        editors match workspace symbols (and at half the cost on a big index)."""
        column = "qualified_name" if "." in query else "name"
        rows = self.cursor().execute(
            f"""SELECT {_COLUMNS} FROM symbols
               WHERE $q = '' OR lower({column}) LIKE '%' || lower($q) || '%'
               ORDER BY lower(name) = lower($q) DESC, lower(name) LIKE lower($q) || '%' DESC,
                        path LIKE '%test%', length(name), path
               LIMIT $limit""", {"q": query.strip(), "limit": max(1, min(limit, 1000))}).fetchall()
        return [SymbolInfo(*r) for r in rows]

    def outline(self, path: str) -> list[SymbolInfo]:
        """The symbols of one file, in order (outer before inner)."""
        rows = self.cursor().execute(
            f"SELECT {_COLUMNS} FROM symbols WHERE path = ? ORDER BY start_line, end_line DESC",
            [path]).fetchall()
        return [SymbolInfo(*r) for r in rows]

    def definitions(self, name: str, from_path: str = "", limit: int = 50) -> list[SymbolInfo]:
        """Definitions of `name` as seen from a file: its own first, then modules it imports."""
        con = self.cursor()
        imports = " ".join(r[0] for r in con.execute(
            "SELECT name FROM refs WHERE path = ? AND kind = 'import'", [from_path]).fetchall())
        rows = [SymbolInfo(*r) for r in con.execute(
            f"SELECT {_COLUMNS} FROM symbols WHERE name = ? OR qualified_name = ? LIMIT 500",
            [name, name]).fetchall()]
        rows.sort(key=lambda d: (d.path != from_path, Path(d.path).stem not in imports,
                                 "test" in d.path, d.path, d.start_line))
        return rows[:limit]

    def signature_and_docstring(self, d: SymbolInfo) -> tuple[str, str]:
        """The signature and docstring of a definition, from its smallest chunk."""
        row = self.cursor().execute(
            "SELECT signature, docstring FROM chunks WHERE path = ? AND start_line <= ? "
            "AND end_line >= ? AND (name = ? OR qualified_name = ?) "
            "ORDER BY end_line - start_line LIMIT 1",
            [d.path, d.start_line, d.start_line, d.name, d.qualified_name]).fetchone()
        return (row[0] if row else "") or d.signature, (row[1] if row else "") or ""

    def chunk_location(self, chunk_id: int, whole: bool = True) -> tuple[str, int, int]:
        """(path, start line, end line) of a chunk (a search hit's id); of the whole
        definition when the chunk is one part of a long one (search shows one hit for all
        its parts, so reading it reads them all)."""
        con = self.cursor()
        row = con.execute("SELECT path, start_line, end_line FROM chunks WHERE id = ?", [chunk_id]).fetchone()
        if row is None:
            raise InvalidArgument(f"no chunk with id {chunk_id}; ids come from search")
        path, start, end = row[:3]
        if whole:
            parts = definition_parts(con, self.lexical, [chunk_id], with_text=False).get(chunk_id)
            if parts:
                start, end = parts[0].start_line, parts[-1].end_line
        return path, start, end

    def chunk_text(self, chunk_id: int) -> str:
        """The text the index holds for a chunk (an editor's unsaved buffer's, if it sent one)."""
        row = self.cursor().execute("SELECT text FROM chunks WHERE id = ?", [chunk_id]).fetchone()
        if row is None:
            raise InvalidArgument(f"no chunk with id {chunk_id}; ids come from search")
        return str(row[0])

    def references(self, name: str, limit: int = 200) -> list[RefInfo]:
        """Who calls or imports `name` (the last part of a qualified name counts)."""
        short = name.rsplit(".", 1)[-1]
        rows = self.cursor().execute(
            """SELECT name, kind, path, line, caller, language FROM refs WHERE name = ?
               ORDER BY path, line LIMIT ?""", [short, limit]).fetchall()
        return [RefInfo(*r) for r in rows]
