"""Retrieval: several ranked signals over the index, fused into one ranking.

- lexical: BM25 over code-aware terms, exact symbol names boosted (search.py);
- named: what a question names outright, resolved exactly against the index: traceback
  frames (file, line), file paths and modules, and the definitions of identifiers it
  writes like code (dotted, CamelCase, snake_case), the rarer the name the higher;
- graph: a personalised PageRank over the reference graph around the best lexical and
  named hits: callees, callers, the enclosing class and sibling methods;
- vector: cosine similarity of dense vectors (embeddings.py), when an embedder is set.

Fusion is a weighted sum of each signal's scores scaled to its best (CombSUM with max
normalisation): score(c) = sum_s w_s * score_s(c) / max score_s. Reciprocal-rank fusion
was measured too (bench/fusion.py): it throws away how far ahead a clear winner is, and
scored lower on SWE-bench Lite (file Acc@1 and function Acc@10 both). Then each file's
best chunk gains the file's evidence, a share of the scores of its next best chunks, so
that a file where several chunks match comes before one with a single hit as strong.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import duckdb

from codevm.api import SearchHit
from codevm.indexers.languages import EXTENSIONS
from codevm.memory.embeddings import Vectors
from codevm.memory.search import BY_IDS, QueryTerms, check_query, chunk_filters, lexical, make_hits
from codevm.memory.store import TermDictionary

SIGNALS = ("lexical", "named", "graph", "vector")
# chunks of files without a grammar (docs, prose, configuration, translations): their
# fused score is scaled by the weight "text", so code comes first when both match
TEXT_KINDS = ("window", "section")
SIGNAL_DEPTH = 200  # chunks each signal ranks
# a file's evidence: its 2nd..8th best fused scores, each worth 0.8 of the one before
EVIDENCE_CHUNKS = 8
EVIDENCE_DECAY = 0.8

_PY_FRAME = re.compile(r'File "([^"]+)", line (\d+)(?:, in ([\w<>.]+))?')
_JS_FRAME = re.compile(r"at (?:([\w$.<>]+) \()?([^\s()]+?):(\d+)(?::\d+)?\)?")
_PATH = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.[A-Za-z]{1,5})(?::(\d+))?(?![\w/])")
_CODE_IDENT = re.compile(
    r"\b(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*\b"  # dotted: module.func, Class.method
    r"|\b_*[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b"  # snake_case
    r"|\b[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+\b"  # CamelCase
    r"|\b[a-z]+[A-Z]\w*\b")  # camelCase
_DOTTED = re.compile(r"\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+\b")
_BACKTICK_NAME = re.compile(r"`((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*)(?:\([^`]*\))?`")
# "SomeError: message" on a line of its own (a traceback's last line, a quoted error)
_ERROR_LINE = re.compile(r"^[ \t>]*(?:[\w.]+\.)?\w*(?:Error|Exception|Warning)\b:[ \t]*(.{8,300})$",
                         re.MULTILINE)
# the parts of a message that a program fills in: quoted values, numbers, <objects>
_VARIABLE = re.compile(r"'[^']*'|\"[^\"]*\"|<[^>]*>|\b0x[0-9a-fA-F]+\b|\b\d+(?:\.\d+)?\b")
_TEXT_EXTENSIONS = {".md", ".rst", ".txt", ".toml", ".yaml", ".yml", ".json", ".cfg", ".ini"}

MAX_NAMED = 24  # identifiers and paths taken from one question
MAX_DEFINITIONS = 6  # a name defined more often than this is too generic to resolve
MAX_MESSAGES = 3  # error message fragments looked up in the code
GRAPH_SEEDS = 12
MAX_FANOUT = 8  # callees of one name / callers of one chunk followed
RESTART = 0.5  # personalised PageRank: the chance to jump back to a seed
ITERATIONS = 12
HOP_FRONTIER = 60  # nodes the second hop expands
GRAPH_MIN_WORDS = 8  # shorter queries are searches: the graph costs more than it brings
EDGE_WEIGHTS = {"callee": 1.0, "caller": 0.7, "class": 0.6, "sibling": 0.3}
# the vector signal counts each chunk by how far its cosine is above the one ranked here:
# raw cosines of a small model crowd into a narrow band that max-normalisation would
# leave almost flat. A fixed rank keeps scores the same however deep a search ranks.
FLOOR_RANK = 50


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
    """The project file a path from a question means: the one sharing the longest tail
    of folders with it (a traceback's /usr/lib/.../site-packages/pkg/mod.py is pkg/mod.py)."""
    parts = [p for p in named.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if not parts:
        return None
    rows = con.execute(
        "SELECT path FROM files WHERE status = 'indexed' AND (path = $p OR path LIKE '%/' || $p)",
        {"p": parts[-1]}).fetchall()

    def shared(path: str) -> int:
        theirs = path.split("/")
        n = 0
        while n < min(len(theirs), len(parts)) and theirs[-1 - n] == parts[-1 - n]:
            n += 1
        return n

    best = max(rows, key=lambda r: (shared(r[0]), -len(r[0])), default=None)
    return best[0] if best else None


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
    named_files: list[str] = []
    for m in [m for m in _PATH.finditer(question) if looks_like_path(m.group(1))][:MAX_NAMED]:
        path = _resolve_path(con, m.group(1))
        if not path:
            continue
        if m.group(2) and (cid := chunk_at(con, path, int(m.group(2)))) is not None:
            found.append((cid, 0.95, f"named {path}:{m.group(2)}"))
            continue
        named_files.append(path)
    for path in named_files:
        found.extend(_file_chunks(con, path, words, terms, 0.75, f"named file {path}"))
    # modules named by their dotted import path (django.db.models.query)
    for path in _module_files(con, question):
        if path not in named_files:
            found.extend(_file_chunks(con, path, words, terms, 0.7, f"module {path}"))
    found.extend(_error_messages(con, question))
    found.extend(_definitions(con, question))
    best: dict[int, tuple[int, float, str]] = {}
    for item in found:
        if item[0] not in best or item[1] > best[item[0]][1]:
            best[item[0]] = item
    return Ranked(sorted(best.values(), key=lambda r: (-r[1], r[0])))


def _file_chunks(con: duckdb.DuckDBPyConnection, path: str, words: str, terms: TermDictionary | None,
                 score: float, reason: str) -> list[tuple[int, float, str]]:
    """The chunks of a named file that the question's words match best, else its first."""
    _, ranked = lexical(con, words, 3, path_glob=path, terms=terms) if words else (None, [])
    ids = [cid for _, cid in ranked[:3]]
    if not ids:
        row = con.execute("SELECT id FROM chunks WHERE path = ? ORDER BY ord LIMIT 1",
                          [path]).fetchone()
        ids = [row[0]] if row else []
    return [(cid, score - 0.05 * i, reason) for i, cid in enumerate(ids)]


def _module_files(con: duckdb.DuckDBPyConnection, question: str) -> list[str]:
    """Project files of the Python modules a question names by dotted path: for a.b.c.d,
    the longest of a/b/c/d.py, a/b/c/d/__init__.py, a/b/c.py ... that is a file of the
    project (at its root or under a source folder)."""
    wanted: dict[str, tuple[int, int]] = {}  # candidate path -> (order, parts)
    dotted = [m.group(0) for m in _DOTTED.finditer(question) if not looks_like_path(m.group(0))]
    for order, name in enumerate(dict.fromkeys(dotted)):
        parts = name.split(".")
        for n in range(len(parts), 1, -1):
            stem = "/".join(parts[:n])
            wanted.setdefault(stem + ".py", (order, n))
            wanted.setdefault(stem + "/__init__.py", (order, n))
        if len(wanted) > 4 * MAX_NAMED:
            break
    if not wanted:
        return []
    rows = con.execute(
        "SELECT c.cand, f.path FROM files f JOIN (SELECT unnest($c) AS cand) c "
        "ON f.path = c.cand OR ends_with(f.path, '/' || c.cand) WHERE f.status = 'indexed'",
        {"c": list(wanted)}).fetchall()
    best: dict[int, tuple[int, str]] = {}  # per name: the longest module path that exists
    for cand, path in rows:
        order, n = wanted[cand]
        if order not in best or n > best[order][0] or (n == best[order][0] and len(path) < len(best[order][1])):
            best[order] = (n, path)
    return list(dict.fromkeys(path for _, (_, path) in sorted(best.items())))


def _error_messages(con: duckdb.DuckDBPyConnection, question: str) -> list[tuple[int, float, str]]:
    """Chunks holding the constant text of an error message the question quotes
    (`ValueError: Unknown format code 'd' for object`: 'Unknown format code')."""
    fragments: list[str] = []
    for m in _ERROR_LINE.finditer(question):
        for part in _VARIABLE.split(m.group(1)):
            part = part.strip(" .,:;!?-")
            if len(part) >= 12 and " " in part:
                fragments.append(part)
    found: list[tuple[int, float, str]] = []
    for fragment in sorted(dict.fromkeys(fragments), key=len, reverse=True)[:MAX_MESSAGES]:
        rows = con.execute("SELECT id FROM chunks WHERE contains(text, ?) LIMIT ?",
                           [fragment, MAX_DEFINITIONS + 1]).fetchall()
        if 0 < len(rows) <= MAX_DEFINITIONS:  # more: too common a phrase to point anywhere
            found.extend((r[0], 0.85 / len(rows) ** 0.5, "holds the error message") for r in rows)
    return found


def _definitions(con: duckdb.DuckDBPyConnection, question: str) -> list[tuple[int, float, str]]:
    """Chunks defining the identifiers a question writes like code; a rare name (one
    definition) ranks above a common one, a dotted name above a bare one."""
    names: list[str] = []
    # names written like code, and any name quoted as code (`sort`, `Model.save()`)
    quoted = [m.group(1) for m in _BACKTICK_NAME.finditer(question)]
    for name in [m.group(0) for m in _CODE_IDENT.finditer(question)] + quoted:
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
    # names inlined: the indexes on chunks.name and chunks.qualified_name answer (a
    # parameter list would scan the table)
    quoted = _quoted(set(keys))
    rows = con.execute(
        f"SELECT id, name, qualified_name, path FROM chunks WHERE qualified_name IN ({quoted}) "
        f"AND kind IN ('function', 'method', 'class') UNION "
        f"SELECT id, name, qualified_name, path FROM chunks WHERE name IN ({quoted}) "
        f"AND kind IN ('function', 'method', 'class')").fetchall()
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
def _quoted(values: set[str] | list[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in sorted(values)) or "NULL"


def _neighbours(con: duckdb.DuckDBPyConnection, ids: list[int]) -> dict[int, list[tuple[int, str]]]:
    """Edges from each chunk of `ids`: its callees' definitions, its callers, its class
    and its sibling methods (in the same file). Each lookup scans `refs` once (a few ms
    on the standard library): the signal is for questions, not for every keystroke."""
    edges: dict[int, list[tuple[int, str]]] = defaultdict(list)
    if not ids:
        return edges
    nodes = con.execute(
        "SELECT id, path, name, qualified_name, kind FROM chunks WHERE id IN ("
        + ", ".join(str(int(i)) for i in ids) + ")").fetchall()
    by_def = {(path, qual): cid for cid, path, _, qual, _ in nodes if qual}
    by_name: dict[str, list[int]] = defaultdict(list)
    for cid, _, name, _, _ in nodes:
        if name:
            by_name[name].append(cid)
    # callees: calls made inside each chunk's definition, resolved by name (same file first)
    calls: dict[int, set[str]] = defaultdict(set)
    if by_def:
        for path, caller, name in con.execute(
                "SELECT path, caller, name FROM refs WHERE caller IN ("
                + _quoted({q for _, q in by_def}) + ") AND kind = 'call'").fetchall():
            if (src := by_def.get((path, caller))) is not None:
                calls[src].add(name)
    callee_names = set().union(*calls.values()) if calls else set()
    defs: dict[str, list[tuple[int, str]]] = defaultdict(list)
    if callee_names:
        for cid, name, path in con.execute(
                "SELECT id, name, path FROM chunks WHERE name IN (" + _quoted(callee_names)
                + ") AND kind IN ('function', 'method', 'class')").fetchall():
            defs[name].append((cid, path))
    paths = {cid: path for cid, path, _, _, _ in nodes}
    for src, names in calls.items():
        for name in names:
            found = defs.get(name, [])
            local = [d for d, p in found if p == paths[src]]
            chosen = local or ([d for d, _ in found] if len(found) <= MAX_FANOUT else [])
            edges[src].extend((d, "callee") for d in chosen if d != src)
    # callers: the chunks that hold calls to each chunk's name (not too common a name)
    sites: dict[str, list[tuple[str, int]]] = defaultdict(list)
    if by_name:
        for name, path, line in con.execute(
                "SELECT name, path, line FROM refs WHERE name IN (" + _quoted(set(by_name))
                + ") AND kind = 'call'").fetchall():
            sites[name].append((path, line))
    sites = {n: s for n, s in sites.items() if len(s) <= MAX_FANOUT * 4}
    owners = {cid: qual.split(".")[0] for cid, _, _, qual, kind in nodes if kind == "method"}
    files = {p for s in sites.values() for p, _ in s} | {paths[c] for c in owners}
    spans: dict[str, list[tuple[int, int, int, str, str]]] = defaultdict(list)
    if files:
        for cid, path, start, end, qual, kind in con.execute(
                "SELECT id, path, start_line, end_line, qualified_name, kind FROM chunks WHERE path IN ("
                + _quoted(files) + ")").fetchall():
            spans[path].append((start, end, cid, qual or "", kind))
    for name, where in sites.items():
        for path, line in where:
            inner = [s for s in spans.get(path, []) if s[0] <= line <= s[1]]
            if not inner:
                continue
            caller = min(inner, key=lambda s: s[1] - s[0])[2]
            for dst in by_name[name]:
                if caller != dst:
                    edges[dst].append((caller, "caller"))
    # the enclosing class and sibling methods, in the same file
    for src, owner in owners.items():
        siblings = 0
        for _, _, cid, qual, kind in spans.get(paths[src], []):
            if cid == src:
                continue
            if qual == owner and kind == "class":
                edges[src].append((cid, "class"))
            elif qual.startswith(owner + ".") and siblings < MAX_FANOUT:
                siblings += 1
                edges[src].append((cid, "sibling"))
    return edges


def graph_signal(con: duckdb.DuckDBPyConnection, seeds: dict[int, float]) -> Ranked:
    """Personalised PageRank over the two-hop reference graph around `seeds` (id -> weight)."""
    if not seeds:
        return Ranked([])
    graph: dict[int, dict[int, float]] = defaultdict(dict)
    frontier = list(seeds)
    seen = set(frontier)
    for _hop in range(2):
        reach: dict[int, float] = defaultdict(float)
        for src, outs in _neighbours(con, frontier).items():
            for dst, kind in outs:
                w = EDGE_WEIGHTS[kind]
                # a walk goes both ways along a reference
                graph[src][dst] = max(graph[src].get(dst, 0.0), w)
                graph[dst][src] = max(graph[dst].get(src, 0.0), w)
                if dst not in seen:
                    reach[dst] += w * seeds.get(src, 1.0)
        # the second hop starts from the nodes the seeds reach most strongly
        frontier = sorted(reach, key=lambda n: (-reach[n], n))[:HOP_FRONTIER]
        seen.update(reach)
    total = sum(seeds.values()) or 1.0
    restart = {n: w / total for n, w in seeds.items()}
    out_weight = {n: sum(outs.values()) for n, outs in graph.items()}
    rank = dict(restart)
    for _ in range(ITERATIONS):
        nxt_rank: dict[int, float] = defaultdict(float)
        for node, mass in rank.items():
            outs = graph.get(node)
            if not outs:
                nxt_rank[node] += (1 - RESTART) * mass
                continue
            share = (1 - RESTART) * mass / out_weight[node]
            for dst, w in outs.items():
                nxt_rank[dst] += share * w
        for node, w in restart.items():
            nxt_rank[node] += RESTART * w
        rank = nxt_rank
    # rounded, and ties by id: the same question ranks the same way every time
    return Ranked(sorted(((n, round(s, 12), "related to the best hits") for n, s in rank.items()),
                         key=lambda r: (-r[1], r[0])))


# -- fusion -------------------------------------------------------------------------------
def fuse(signals: dict[str, Ranked], weights: dict[str, float],
         text: frozenset[int] | set[int] = frozenset()) -> list[tuple[float, int, str]]:
    """Weighted sum of max-normalised scores: (score, chunk id, why), best first; the
    chunks in `text` (of TEXT_KINDS) count for `weights["text"]` of their sum."""
    scores: dict[int, float] = defaultdict(float)
    why: dict[int, tuple[float, str, str]] = {}
    # the most specific reason is told: what the question names, else the strongest signal
    for name, ranked in sorted(signals.items(), key=lambda s: s[0] != "named"):
        w = weights.get(name, 0.0)
        if w <= 0 or not ranked.items:
            continue
        items = ranked.items
        if name == "vector" and len(items) >= FLOOR_RANK:
            floor = items[FLOOR_RANK - 1][1]
            items = [(cid, score - floor, reason) for cid, score, reason in items[: FLOOR_RANK - 1]]
        top = max(score for _, score, _ in items) or 1.0
        for cid, score, reason in items:
            share = w * max(score, 0.0) / top
            scores[cid] += share
            if cid not in why or (why[cid][2] != "named" and share > why[cid][0]):
                why[cid] = (share, reason, name)
    scale = max(weights.get("text", 1.0), 0.0)  # a negative weight would turn ranks over
    if scale != 1.0:
        for cid in text:
            if cid in scores:
                scores[cid] *= scale
    return sorted(((s, cid, why[cid][1]) for cid, s in scores.items()), key=lambda r: (-r[0], r[1]))


def with_file_evidence(fused: list[tuple[float, int, str]], paths: dict[int, str],
                       weight: float) -> list[tuple[float, int, str]]:
    """A fused ranking where each file's best chunk gains `weight` x the file's evidence:
    the decayed sum of the scores of its 2nd..EVIDENCE_CHUNKS-th best chunks. A file where
    many chunks match rises above one with a single hit as strong; the other chunks keep
    their own scores (boosting them too crowds a working set with one file)."""
    if weight <= 0 or not fused:
        return fused
    scores: dict[str, list[float]] = defaultdict(list)
    for score, cid, _ in fused:  # best first
        scores[paths.get(cid) or f"#{cid}"].append(score)
    out = []
    for score, cid, why in fused:
        ranked = scores.pop(paths.get(cid) or f"#{cid}", None)
        if ranked:  # the file's best chunk (the first of the file met)
            score += weight * sum(s * EVIDENCE_DECAY ** i for i, s in enumerate(ranked[1:EVIDENCE_CHUNKS]))
        out.append((score, cid, why))
    return sorted(out, key=lambda r: (-r[0], r[1]))


def fused_ranking(signals: dict[str, Ranked], weights: dict[str, float], text: set[int] | frozenset[int],
                  paths: dict[int, str]) -> list[tuple[float, int, str]]:
    """What search ranks: the signals fused, text chunks scaled, files' evidence added."""
    return with_file_evidence(fuse(signals, weights, text), paths, weights.get("file", 0.0))


def vector_signal(vectors: Vectors | None, con: duckdb.DuckDBPyConnection, query: str, depth: int,
                  language: str | None, path_glob: str | None, kind: str | None) -> Ranked:
    """Chunks by cosine similarity to the query (raw cosines; see `fuse`)."""
    ranked = vectors.rank(con, query, max(depth, FLOOR_RANK), language, path_glob, kind) if vectors else []
    return Ranked([(cid, score, "similar meaning") for cid, score in ranked])


class Retriever:
    def __init__(self, con_factory, terms: TermDictionary, weights: dict[str, float] | None = None,
                 vectors: Vectors | None = None):
        self.cursor = con_factory
        self.terms = terms
        self.weights = weights or {name: 1.0 for name in SIGNALS}
        self.vectors = vectors

    def signals(self, query: str, language: str | None = None, path_glob: str | None = None,
                kind: str | None = None, depth: int = SIGNAL_DEPTH) -> tuple[QueryTerms, dict[str, Ranked]]:
        """Each signal's ranking of up to `depth` chunks. The search filters apply to the
        lexical and vector rankings; the others also rank code outside them (see `_fused`)."""
        con = self.cursor()
        q, ranked = lexical(con, query, depth, language, path_glob, kind, self.terms)
        out = {"lexical": Ranked([(cid, score, "search hit") for score, cid in ranked[:depth]])}
        out["named"] = named = named_signal(con, query, self.terms)
        seeds: dict[int, float] = {}
        for items in (out["lexical"].items[:GRAPH_SEEDS], named.items[:GRAPH_SEEDS]):
            for rank, (cid, _, _) in enumerate(items):
                seeds[cid] = seeds.get(cid, 0.0) + 1.0 / (rank + 1)
        # a question or an issue (not a few words typed in a search box) gets the graph
        wanted = self.weights.get("graph", 0) > 0 and q.n_idents >= GRAPH_MIN_WORDS
        # like every signal, the graph ranks `depth` chunks (the offline tuner sees the same)
        out["graph"] = Ranked(graph_signal(con, seeds).items[:depth]) if wanted else Ranked([])
        out["vector"] = (vector_signal(self.vectors, con, query, depth, language, path_glob, kind)
                         if self.weights.get("vector", 0) > 0 else Ranked([]))
        return q, out

    def fuse(self, signals: dict[str, Ranked]) -> tuple[list[tuple[float, int, str]], dict[int, str]]:
        """The signals' `fused_ranking`, and the paths of the chunks they rank (read for it)."""
        ids = {cid for ranked in signals.values() for cid, _, _ in ranked.items}
        if not ids:
            return [], {}
        rows = self.cursor().execute(f"SELECT id, path, kind FROM chunks c {BY_IDS}",
                                     {"ids": list(ids)}).fetchall()
        text = {cid for cid, _, kind in rows if kind in TEXT_KINDS}
        paths = {cid: path for cid, path, _ in rows}
        return fused_ranking(signals, self.weights, text, paths), paths

    def _fused(self, query: str, k: int, language: str | None, path_glob: str | None,
               kind: str | None) -> tuple[QueryTerms, list[tuple[float, int, str]], dict[int, str]]:
        check_query(query, k)
        q, signals = self.signals(query, language, path_glob, kind, signal_depth(k))
        fused, paths = self.fuse(signals)
        if language or path_glob or kind:
            fused = _only(self.cursor(), fused, language, path_glob, kind)
        return q, fused, paths

    def retrieve(self, query: str, k: int = 10, language: str | None = None, path_glob: str | None = None,
                 kind: str | None = None) -> tuple[list[tuple[float, int, str]], dict[int, str]]:
        """The fused ranking, (score, chunk id, why) best first, and the chunks' paths."""
        _, fused, paths = self._fused(query, k, language, path_glob, kind)
        return fused[:k], paths

    def search(self, query: str, k: int = 10, language: str | None = None,
               path_glob: str | None = None, kind: str | None = None) -> list[SearchHit]:
        q, fused, _ = self._fused(query, k, language, path_glob, kind)
        return make_hits(self.cursor(), [(s, cid) for s, cid, _ in fused], q, k)


def signal_depth(k: int) -> int:
    """How deep each signal ranks for the top `k` of the fusion."""
    return min(1000, max(3 * k, 60))


def _only(con: duckdb.DuckDBPyConnection, fused: list[tuple[float, int, str]], language: str | None,
          path_glob: str | None, kind: str | None) -> list[tuple[float, int, str]]:
    """The chunks of a fused ranking that pass the search filters."""
    if not fused:
        return fused
    where, params = chunk_filters(language, path_glob, kind)
    keep = {r[0] for r in con.execute(f"SELECT id FROM chunks c {BY_IDS} WHERE {where}",
                                      {**params, "ids": [cid for _, cid, _ in fused]}).fetchall()}
    return [item for item in fused if item[1] in keep]
