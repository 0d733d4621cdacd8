"""Retrieval: several ranked signals over the index, fused by reciprocal rank.

- lexical: BM25 over code-aware terms, exact symbol names boosted (search.py);
- named: what a question names outright, resolved exactly against the index: traceback
  frames (file, line), file paths and modules, and the definitions of identifiers it
  writes like code (dotted, CamelCase, snake_case), the rarer the name the higher;
- graph: a personalised PageRank over the reference graph around the best lexical and
  named hits: callees, callers, the enclosing class and sibling methods.

Fusion is weighted reciprocal-rank fusion, score(c) = sum_s w_s / (K + rank_s(c)), so
each signal counts by where it ranks a chunk, not by its incomparable raw scores.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import duckdb

from codevm.api import SearchHit
from codevm.indexers.languages import EXTENSIONS
from codevm.memory.search import QueryTerms, analyse_query, check_query, chunk_filters, lexical, make_hits
from codevm.memory.store import TermDictionary

FUSION_K = 60
SIGNALS = ("lexical", "named", "graph")
SIGNAL_DEPTH = 200  # chunks each signal ranks

_PY_FRAME = re.compile(r'File "([^"]+)", line (\d+)(?:, in ([\w<>.]+))?')
_JS_FRAME = re.compile(r"at (?:([\w$.<>]+) \()?([^\s()]+?):(\d+)(?::\d+)?\)?")
_PATH = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.[A-Za-z]{1,5})(?::(\d+))?(?![\w/])")
_CODE_IDENT = re.compile(
    r"\b(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*\b"  # dotted: module.func, Class.method
    r"|\b_*[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b"  # snake_case
    r"|\b[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+\b"  # CamelCase
    r"|\b[a-z]+[A-Z]\w*\b")  # camelCase
_TEXT_EXTENSIONS = {".md", ".rst", ".txt", ".toml", ".yaml", ".yml", ".json", ".cfg", ".ini"}

MAX_NAMED = 24  # identifiers and paths taken from one question
MAX_DEFINITIONS = 6  # a name defined more often than this is too generic to resolve
GRAPH_SEEDS = 12
MAX_FANOUT = 8  # callees of one name / callers of one chunk followed
RESTART = 0.5  # personalised PageRank: the chance to jump back to a seed
ITERATIONS = 12
EDGE_WEIGHTS = {"callee": 1.0, "caller": 0.7, "class": 0.6, "sibling": 0.3}


@dataclass
class Ranked:
    """One signal's ranking: (chunk id, score, why), best first."""

    items: list[tuple[int, float, str]]


def looks_like_path(name: str) -> bool:
    """src/app.py or app.py, but not Circle.scale (a dotted name)."""
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return "/" in name or suffix in EXTENSIONS or suffix in _TEXT_EXTENSIONS


def _words(question: str) -> str:
    return " ".join(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", question)[:200])


def chunk_at(con: duckdb.DuckDBPyConnection, path: str, line: int) -> int | None:
    row = con.execute(
        "SELECT id FROM chunks WHERE path = ? AND start_line <= ? AND end_line >= ? "
        "ORDER BY end_line - start_line LIMIT 1", [path, line, line]).fetchone()
    return row[0] if row else None


def _resolve_path(con: duckdb.DuckDBPyConnection, named: str) -> str | None:
    named = named.replace("\\", "/").lstrip("./")
    row = con.execute(
        "SELECT path FROM files WHERE status = 'indexed' AND (path = $p OR path LIKE '%/' || $p) "
        "ORDER BY length(path) LIMIT 1", {"p": named}).fetchone()
    return row[0] if row else None


# -- named: what the question names outright ---------------------------------------------
def named_signal(con: duckdb.DuckDBPyConnection, question: str,
                 terms: TermDictionary | None = None) -> Ranked:
    found: list[tuple[int, float, str]] = []
    # traceback frames: the innermost (last in Python tracebacks) first
    frames = [(m.group(1), int(m.group(2))) for m in _PY_FRAME.finditer(question)]
    frames += [(m.group(2), int(m.group(3))) for m in _JS_FRAME.finditer(question)]
    for depth, (named, line) in enumerate(reversed(frames[-MAX_NAMED:])):
        path = _resolve_path(con, named)
        if path and (cid := chunk_at(con, path, line)) is not None:
            found.append((cid, 1.0 - 0.03 * depth, f"traceback {path}:{line}"))
    # paths named in the text (with a line, that line's chunk)
    words = _words(question)
    for m in [m for m in _PATH.finditer(question) if looks_like_path(m.group(1))][:MAX_NAMED]:
        path = _resolve_path(con, m.group(1))
        if not path:
            continue
        if m.group(2) and (cid := chunk_at(con, path, int(m.group(2)))) is not None:
            found.append((cid, 0.95, f"named {path}:{m.group(2)}"))
            continue
        # the file's chunks that the question's words match best, else its first chunk
        _, ranked = lexical(con, words, 3, path_glob=path, terms=terms) if words else (None, [])
        ids = [cid for _, cid in ranked[:3]]
        if not ids:
            row = con.execute("SELECT id FROM chunks WHERE path = ? ORDER BY ord LIMIT 1",
                              [path]).fetchone()
            ids = [row[0]] if row else []
        found.extend((cid, 0.75 - 0.05 * i, f"named file {path}") for i, cid in enumerate(ids))
    found.extend(_definitions(con, question))
    best: dict[int, tuple[int, float, str]] = {}
    for item in found:
        if item[0] not in best or item[1] > best[item[0]][1]:
            best[item[0]] = item
    return Ranked(sorted(best.values(), key=lambda r: -r[1]))


def _definitions(con: duckdb.DuckDBPyConnection, question: str) -> list[tuple[int, float, str]]:
    """Chunks defining the identifiers a question writes like code; a rare name (one
    definition) ranks above a common one, a dotted name above a bare one."""
    names: list[str] = []
    for m in _CODE_IDENT.finditer(question):
        name = m.group(0)
        if name not in names and not looks_like_path(name):
            names.append(name)
    names = names[:MAX_NAMED]
    if not names:
        return []
    keys: dict[str, str] = {}  # qualified or bare key -> the name as written
    for name in names:
        parts = name.split(".")
        keys.setdefault(".".join(parts[-2:]), name)  # Class.method, module.func
        keys.setdefault(parts[-1], name)
    rows = con.execute(
        "SELECT id, name, qualified_name, path FROM chunks WHERE kind IN "
        "('function', 'method', 'class') AND (qualified_name IN (SELECT unnest($k)) "
        "OR name IN (SELECT unnest($k)))", {"k": list(keys)}).fetchall()
    by_key: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for cid, name, qualified, path in rows:
        key = qualified if qualified in keys else name
        by_key[key].append((cid, qualified, path))
    found = []
    for key, defs in by_key.items():
        distinct = {(q, p) for _, q, p in defs}
        if len(distinct) > MAX_DEFINITIONS:
            continue
        order = names.index(keys[key])
        score = (0.9 if "." in key else 0.8) / len(distinct) ** 0.5 - 0.01 * order
        for cid, qualified, path in defs:
            prior = 0.5 if "test" in path else 1.0
            found.append((cid, score * prior, f"definition of {keys[key]}"))
    return found


# -- graph: a personalised PageRank around the seeds --------------------------------------
def _neighbours(con: duckdb.DuckDBPyConnection, ids: list[int]) -> dict[int, list[tuple[int, str]]]:
    """Edges from each chunk of `ids`: its callees' definitions, its callers, its class
    and its sibling methods (in the same file)."""
    edges: dict[int, list[tuple[int, str]]] = defaultdict(list)
    if not ids:
        return edges
    id_list = ", ".join(str(int(i)) for i in ids)
    # callees: calls made inside the chunk's definition, resolved by name
    rows = con.execute(f"""
        WITH f AS (SELECT id, path, qualified_name FROM chunks
                   WHERE id IN ({id_list}) AND qualified_name <> ''),
        called AS (SELECT DISTINCT f.id AS src, f.path, r.name FROM f
                   JOIN refs r ON r.path = f.path AND r.caller = f.qualified_name AND r.kind = 'call')
        SELECT called.src, called.name, c.id, c.path = called.path FROM called
        JOIN chunks c ON c.name = called.name AND c.kind IN ('function', 'method', 'class')
    """).fetchall()
    targets: dict[tuple[int, str], list[tuple[int, bool]]] = defaultdict(list)
    for src, name, dst, same_file in rows:
        targets[(src, name)].append((dst, same_file))
    for (src, _), dsts in targets.items():
        local = [d for d, same in dsts if same]
        chosen = local or ([d for d, _ in dsts] if len(dsts) <= MAX_FANOUT else [])
        edges[src].extend((d, "callee") for d in chosen if d != src)
    # callers: the chunks holding calls to the chunk's name
    rows = con.execute(f"""
        WITH f AS (SELECT id, name FROM chunks WHERE id IN ({id_list}) AND name <> ''),
        sites AS (SELECT f.id AS dst, r.path, r.line FROM f JOIN refs r ON r.name = f.name AND r.kind = 'call'),
        counted AS (SELECT *, count(*) OVER (PARTITION BY dst) AS n FROM sites)
        SELECT counted.dst, c.id FROM counted JOIN chunks c ON c.path = counted.path
            AND c.start_line <= counted.line AND c.end_line >= counted.line
        WHERE counted.n <= {MAX_FANOUT * 4}
    """).fetchall()
    for dst, caller in rows:
        if caller != dst:
            edges[dst].append((caller, "caller"))
    # the enclosing class and sibling methods, in the same file
    rows = con.execute(f"""
        WITH f AS (SELECT id, path, split_part(qualified_name, '.', 1) AS owner FROM chunks
                   WHERE id IN ({id_list}) AND kind = 'method')
        SELECT f.id, c.id, c.kind FROM f JOIN chunks c ON c.path = f.path
            AND (c.qualified_name = f.owner OR c.qualified_name LIKE f.owner || '.%')
    """).fetchall()
    siblings: dict[int, int] = defaultdict(int)
    for src, dst, kind in rows:
        if dst == src:
            continue
        if kind == "class":
            edges[src].append((dst, "class"))
        elif siblings[src] < MAX_FANOUT:
            siblings[src] += 1
            edges[src].append((dst, "sibling"))
    return edges


def graph_signal(con: duckdb.DuckDBPyConnection, seeds: dict[int, float]) -> Ranked:
    """Personalised PageRank over the two-hop reference graph around `seeds` (id -> weight)."""
    if not seeds:
        return Ranked([])
    graph: dict[int, list[tuple[int, str]]] = defaultdict(list)
    frontier = list(seeds)
    seen = set(frontier)
    for _hop in range(2):
        edges = _neighbours(con, frontier)
        nxt = []
        for src, outs in edges.items():
            for dst, kind in outs:
                graph[src].append((dst, kind))
                graph[dst].append((src, kind))  # a walk goes both ways along a reference
                if dst not in seen:
                    seen.add(dst)
                    nxt.append(dst)
        frontier = nxt[:400]
    total = sum(seeds.values()) or 1.0
    restart = {n: w / total for n, w in seeds.items()}
    rank = dict(restart)
    for _ in range(ITERATIONS):
        nxt_rank: dict[int, float] = defaultdict(float)
        for node, mass in rank.items():
            outs = graph.get(node)
            if not outs:
                nxt_rank[node] += (1 - RESTART) * mass
                continue
            weight = sum(EDGE_WEIGHTS[k] for _, k in outs)
            for dst, kind in outs:
                nxt_rank[dst] += (1 - RESTART) * mass * EDGE_WEIGHTS[kind] / weight
        for node, w in restart.items():
            nxt_rank[node] += RESTART * w
        rank = nxt_rank
    return Ranked(sorted(((n, s, "related to the best hits") for n, s in rank.items()),
                         key=lambda r: -r[1]))


# -- fusion -------------------------------------------------------------------------------
def fuse(signals: dict[str, Ranked], weights: dict[str, float],
         depth: int = SIGNAL_DEPTH) -> list[tuple[float, int, str]]:
    """Weighted reciprocal-rank fusion: (score, chunk id, why), best first."""
    scores: dict[int, float] = defaultdict(float)
    why: dict[int, tuple[float, str]] = {}
    # on a tie, the most specific reason is told: what the question names, then the rest
    for name, ranked in sorted(signals.items(), key=lambda s: s[0] != "named"):
        w = weights.get(name, 0.0)
        if w <= 0:
            continue
        for rank, (cid, _, reason) in enumerate(ranked.items[:depth]):
            share = w / (FUSION_K + rank + 1)
            scores[cid] += share
            if cid not in why or share > why[cid][0]:
                why[cid] = (share, reason)
    return sorted(((s, cid, why[cid][1]) for cid, s in scores.items()), key=lambda r: (-r[0], r[1]))


class Retriever:
    def __init__(self, con_factory, terms: TermDictionary, weights: dict[str, float] | None = None):
        self.cursor = con_factory
        self.terms = terms
        self.weights = weights or {name: 1.0 for name in SIGNALS}

    def signals(self, query: str, language: str | None = None, path_glob: str | None = None,
                kind: str | None = None) -> tuple[QueryTerms, dict[str, Ranked]]:
        con = self.cursor()
        q, ranked = lexical(con, query, SIGNAL_DEPTH, language, path_glob, kind, self.terms)
        out = {"lexical": Ranked([(cid, score, "search hit") for score, cid in ranked[:SIGNAL_DEPTH]])}
        named = named_signal(con, query, self.terms) if not q.short or q.names else Ranked([])
        if language or path_glob or kind:
            named = _only(con, named, language, path_glob, kind)
        out["named"] = named
        seeds: dict[int, float] = {}
        for items in (out["lexical"].items[:GRAPH_SEEDS], named.items[:GRAPH_SEEDS]):
            for rank, (cid, _, _) in enumerate(items):
                seeds[cid] = seeds.get(cid, 0.0) + 1.0 / (rank + 1)
        graph = graph_signal(con, seeds) if self.weights.get("graph", 0) > 0 else Ranked([])
        if language or path_glob or kind:
            graph = _only(con, graph, language, path_glob, kind)
        out["graph"] = graph
        return q, out

    def retrieve(self, query: str, k: int = 10, language: str | None = None,
                 path_glob: str | None = None, kind: str | None = None) -> list[tuple[float, int, str]]:
        check_query(query, k)
        _, signals = self.signals(query, language, path_glob, kind)
        return fuse(signals, self.weights)[:k]

    def search(self, query: str, k: int = 10, language: str | None = None,
               path_glob: str | None = None, kind: str | None = None) -> list[SearchHit]:
        check_query(query, k)
        q, signals = self.signals(query, language, path_glob, kind)
        fused = fuse(signals, self.weights)
        return make_hits(self.cursor(), [(s, cid) for s, cid, _ in fused], q, k)


def _only(con: duckdb.DuckDBPyConnection, ranked: Ranked, language: str | None,
          path_glob: str | None, kind: str | None) -> Ranked:
    """The items of a ranking that pass the search filters."""
    if not ranked.items:
        return ranked
    where, params = chunk_filters(language, path_glob, kind)
    ids = ", ".join(str(int(cid)) for cid, _, _ in ranked.items)
    keep = {r[0] for r in con.execute(f"SELECT id FROM chunks c WHERE id IN ({ids}) AND {where}",
                                      params).fetchall()}
    return Ranked([item for item in ranked.items if item[0] in keep])


__all__ = ["SIGNALS", "Ranked", "Retriever", "analyse_query", "fuse", "graph_signal",
           "looks_like_path", "named_signal"]
