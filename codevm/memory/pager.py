"""The heuristic pager: which code to page in for a question, with no model involved.

For each question it gathers candidate pages from several signals, each with a
relevance: traceback frames and file paths named in the question, definitions of the
identifiers it names, search hits, and the callers and callees of the best hits. It then
fills its share of the budget, most relevant first, never paging the same code twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import duckdb

from codevm.indexers.languages import EXTENSIONS
from codevm.memory.context import Page, TokenEstimator
from codevm.memory.search import search
from codevm.memory.store import Store

_PY_FRAME = re.compile(r'File "([^"]+)", line (\d+)(?:, in ([\w<>.]+))?')
_JS_FRAME = re.compile(r"at (?:([\w$.<>]+) \()?([^\s()]+?):(\d+)(?::\d+)?\)?")
_PATH = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.[A-Za-z]{1,5})(?::(\d+))?(?![\w/])")
_CODE_IDENT = re.compile(
    r"\b(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*\b"  # dotted: module.func, Class.method
    r"|\b_*[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b"  # snake_case
    r"|\b[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+\b"  # CamelCase
    r"|\b[a-z]+[A-Z]\w*\b")  # camelCase

MAX_NAMED = 24  # identifiers and paths taken from one question
MAX_NEIGHBOURS = 4  # callers and callees per strong hit


@dataclass
class Candidate:
    chunk_id: int
    relevance: float
    reason: str


class HeuristicPager:
    def __init__(self, store: Store, estimator: TokenEstimator):
        self.store = store
        self.estimator = estimator

    # -- signals -------------------------------------------------------------------------
    def _chunk_at(self, con: duckdb.DuckDBPyConnection, path: str, line: int) -> int | None:
        row = con.execute(
            "SELECT id FROM chunks WHERE path = ? AND start_line <= ? AND end_line >= ? "
            "ORDER BY end_line - start_line LIMIT 1", [path, line, line]).fetchone()
        return row[0] if row else None

    def _resolve_path(self, con: duckdb.DuckDBPyConnection, named: str) -> str | None:
        named = named.replace("\\", "/").lstrip("./")
        row = con.execute(
            "SELECT path FROM files WHERE status = 'indexed' AND (path = $p OR path LIKE '%/' || $p) "
            "ORDER BY length(path) LIMIT 1", {"p": named}).fetchone()
        return row[0] if row else None

    def _frames(self, con: duckdb.DuckDBPyConnection, question: str) -> list[Candidate]:
        found: list[Candidate] = []
        frames = [(m.group(1), int(m.group(2))) for m in _PY_FRAME.finditer(question)]
        frames += [(m.group(2), int(m.group(3))) for m in _JS_FRAME.finditer(question)]
        # the innermost frame (last in Python tracebacks) matters most
        for depth, (named, line) in enumerate(reversed(frames[-MAX_NAMED:])):
            path = self._resolve_path(con, named)
            if path and (cid := self._chunk_at(con, path, line)) is not None:
                found.append(Candidate(cid, 1.0 - 0.03 * depth, f"traceback {path}:{line}"))
        return found

    def _named_paths(self, con: duckdb.DuckDBPyConnection, question: str) -> list[Candidate]:
        found: list[Candidate] = []
        for m in [m for m in _PATH.finditer(question) if _looks_like_path(m.group(1))][:MAX_NAMED]:
            path = self._resolve_path(con, m.group(1))
            if not path:
                continue
            if m.group(2) and (cid := self._chunk_at(con, path, int(m.group(2)))) is not None:
                found.append(Candidate(cid, 0.95, f"named {path}:{m.group(2)}"))
                continue
            # the file's chunks that the search ranked, else its first chunk
            hits = [h.id for h in search(con, _words(question), k=3, path_glob=path,
                                         terms=self.store.terms)] if _words(question) else []
            if not hits:
                row = con.execute("SELECT id FROM chunks WHERE path = ? ORDER BY ord LIMIT 1",
                                  [path]).fetchone()
                hits = [row[0]] if row else []
            found.extend(Candidate(cid, 0.75 - 0.05 * i, f"named file {path}")
                         for i, cid in enumerate(hits))
        return found

    def _definitions(self, con: duckdb.DuckDBPyConnection, question: str) -> list[Candidate]:
        names: list[str] = []
        for m in _CODE_IDENT.finditer(question):
            name = m.group(0)
            if name not in names and not _looks_like_path(name):
                names.append(name)
        found: list[Candidate] = []
        for name in names[:MAX_NAMED]:
            parts = name.split(".")
            # Class.method or module.func: the last one or two parts name the symbol
            keys = [".".join(parts[-2:]), parts[-1]] if len(parts) > 1 else [name]
            rows = con.execute(
                "SELECT path, start_line FROM symbols WHERE qualified_name = $a OR qualified_name = $b "
                "OR (name = $b AND $a = $b) ORDER BY qualified_name = $a DESC, path LIKE '%test%', path "
                "LIMIT 3", {"a": keys[0], "b": keys[-1]}).fetchall()
            for rank, (path, line) in enumerate(rows):
                if (cid := self._chunk_at(con, path, line)) is not None:
                    found.append(Candidate(cid, 0.85 - 0.1 * rank, f"definition of {name}"))
        return found

    def _neighbours(self, con: duckdb.DuckDBPyConnection, cid: int, relevance: float) -> list[Candidate]:
        row = con.execute("SELECT path, qualified_name, name FROM chunks WHERE id = ?", [cid]).fetchone()
        if not row or not row[1]:
            return []
        path, qualified, name = row
        found: list[Candidate] = []
        callees = con.execute(
            "SELECT DISTINCT r.name FROM refs r WHERE r.path = ? AND r.caller = ? AND r.kind = 'call' "
            "LIMIT 40", [path, qualified]).fetchall()
        if callees:
            defs = con.execute(
                "SELECT s.path, s.start_line, s.name FROM symbols s "
                "WHERE s.name IN (SELECT unnest(?::VARCHAR[])) AND s.kind IN ('function', 'method') "
                "ORDER BY s.path = ? DESC, s.path LIMIT ?",
                [[c[0] for c in callees], path, MAX_NEIGHBOURS]).fetchall()
            for p, line, callee in defs:
                if (nid := self._chunk_at(con, p, line)) is not None:
                    found.append(Candidate(nid, 0.5 * relevance, f"called by {qualified}"))
        callers = con.execute(
            "SELECT path, line FROM refs WHERE name = ? AND kind = 'call' AND NOT (path = ? AND caller = ?) "
            "ORDER BY path LIKE '%test%', path LIMIT ?", [name, path, qualified, MAX_NEIGHBOURS]).fetchall()
        for p, line in callers:
            if (nid := self._chunk_at(con, p, line)) is not None:
                found.append(Candidate(nid, 0.45 * relevance, f"calls {qualified}"))
        return found

    # -- selection -----------------------------------------------------------------------
    def candidates(self, question: str, k_search: int = 30) -> list[Candidate]:
        """Candidate pages, most relevant first (`k_search` search hits among them)."""
        con = self.store.cursor()
        found = self._frames(con, question)
        found += self._definitions(con, question)
        hits = search(con, question, k=k_search, terms=self.store.terms) if question.strip() else []
        found += self._named_paths(con, question)
        if hits:
            top = hits[0].score or 1.0
            found += [Candidate(h.id, 0.8 * max(h.score, 0.0) / top, "search hit") for h in hits]
        strongest = sorted(found, key=lambda c: -c.relevance)[:3]
        for c in strongest:
            found += self._neighbours(con, c.chunk_id, c.relevance)
        best: dict[int, Candidate] = {}
        for c in found:
            if c.chunk_id not in best or c.relevance > best[c.chunk_id].relevance:
                best[c.chunk_id] = c
        return sorted(best.values(), key=lambda c: -c.relevance)

    def pages(self, candidates: list[Candidate], budget: int, have: set[str] | None = None,
              estimator: TokenEstimator | None = None) -> list[Page]:
        """Pages for the most relevant candidates that fit in `budget` tokens, counted by
        `estimator` (the asking context's calibrated one; by default the pager's)."""
        count = (estimator or self.estimator).count
        if not candidates:
            return []
        con = self.store.cursor()
        ids = ", ".join(str(int(c.chunk_id)) for c in candidates)
        rows = {r[0]: r for r in con.execute(
            f"SELECT id, path, start_line, end_line, text, qualified_name FROM chunks WHERE id IN ({ids})"
        ).fetchall()}
        chosen: list[Page] = []
        used = 0
        have = have or set()
        for c in candidates:
            row = rows.get(c.chunk_id)
            if row is None or f"chunk:{c.chunk_id}" in have:
                continue
            page = Page(f"chunk:{row[0]}", row[1], row[2], row[3], row[4], 0, row[5] or "",
                        relevance=round(c.relevance, 3), reason=c.reason)
            page.tokens = count(page.render())
            if used + page.tokens > budget:
                continue  # a smaller page further down may still fit
            if any(p.path == page.path and p.start_line <= page.start_line and page.end_line <= p.end_line
                   for p in chosen):
                continue
            chosen.append(page)
            used += page.tokens
        return chosen

    def prefetch(self, question: str, budget: int, have: set[str] | None = None,
                 estimator: TokenEstimator | None = None) -> list[Page]:
        # enough search hits to fill the budget (chunks average ~250 tokens)
        return self.pages(self.candidates(question, k_search=max(30, budget // 150)), budget, have,
                          estimator)


_TEXT_EXTENSIONS = {".md", ".rst", ".txt", ".toml", ".yaml", ".yml", ".json", ".cfg", ".ini"}


def _looks_like_path(name: str) -> bool:
    """src/app.py or app.py, but not Circle.scale (a dotted name)."""
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return "/" in name or suffix in EXTENSIONS or suffix in _TEXT_EXTENSIONS


def _words(question: str) -> str:
    return " ".join(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", question)[:200])
