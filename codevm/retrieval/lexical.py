"""Code-aware lexical search: BM25 in the tantivy index (codevm/db/lexical.py), exact
symbols first.

Identifiers in the query are kept whole and split like the indexed code; field weights
(names, paths, docstrings) were applied to term frequencies at indexing time.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

import duckdb

from codevm.api import SearchHit
from codevm.db.lexical import DEFINITION_KINDS, LexicalIndex
from codevm.errors import InvalidArgument
from codevm.indexers.identifiers import IDENTIFIER, IDENTIFIER_PATTERN, STOPWORDS, expand_identifier, stem
from codevm.retrieval.fusion import Scored
from codevm.retrieval.sql import by_ids, chunk_filters

MAX_QUERY_TERMS = 256
# Test code matches a question's words as well as the code under test does (it calls the
# same names), but a question about behaviour is about the implementation: test files get
# this factor unless the query is about tests or names a symbol outright. On SWE-bench
# Lite it moves file Acc@5 from 63% to 67% and function Acc@10 from 34% to 40%.
# Test files by the conventions of Python, Go, C (tests/, test_x.py, x_test.go), of
# JavaScript and TypeScript (__tests__/, x.test.ts, x.spec.js: vuejs/core keeps 248 such
# files beside its code), Ruby (spec/, x_spec.rb), Java/Kotlin/C# (src/test/, FooTest.java,
# Foo.Tests/). `_spec` is a test only in Ruby: u-boot's high_speed_env_spec.c is not one.
TEST_PATH = re.compile(
    r"(^|/)(tests?|testing|__tests__|__mocks__|specs?)/|\.Tests?/|(^|/)test_[^/]*$|_tests?\.[a-z]+$"
    r"|_spec\.rb$|\.(test|spec)\.[cm]?[jt]sx?(\.snap)?$|(^|/)conftest\.py$|[a-z0-9]Tests?\.(java|kt|cs|scala|swift)$")
TEST_PRIOR = 0.5
# Code a project keeps of others' (vendored libraries, minified or versioned copies of
# JavaScript libraries, translation catalogs) matches a long question's words by the
# hundred but is seldom what it asks about: it gets this factor too (on SWE-bench Lite no
# edited file is one; sphinx's 40 catalogs sphinx/locale/*/LC_MESSAGES/sphinx.js, its
# jquery-3.5.1.js and matplotlib's extern/agg24-svn took a fifth of some 8k working sets).
# vendor/, node_modules/ and bower_components/ are never indexed (discovery leaves them out).
VENDORED_PATH = re.compile(
    r"(^|/)(extern|externals|vendors?|_vendor(ed)?|third[-_]?party|3rd[-_]?party|LC_MESSAGES)/"
    r"|\.min\.(js|css)$|[-.]v?[0-9]+\.[0-9]+(\.[0-9]+)?\.(js|css)$", re.IGNORECASE)
VENDORED_PRIOR = 0.5
_CODE_LIKE = re.compile(r"[a-z][A-Z]|_|[A-Za-z][0-9]|^[A-Z][a-z]+[A-Z]")
# starts only where a name starts: unanchored, a 16k-character word took 6 s (each of its
# positions scanned the rest); now the cost is linear in the query's length
_DOTTED = re.compile(rf"(?<![\w.]){IDENTIFIER_PATTERN}(?:\.{IDENTIFIER_PATTERN})+")




@dataclass
class QueryTerms:
    terms: dict[str, float]  # term -> query weight
    names: set[str]  # identifiers and dotted names, for exact symbol matches
    short: bool  # a few identifiers: exact symbol matches go first
    about_tests: bool = False  # the query asks about tests: no prior against test files
    n_idents: int = 0  # words and identifiers in the query
    compounds: list[str] = field(default_factory=list)  # names its plain words spell (compound_names)


# A query in plain words may spell a name: "add directive" is `add_directive`. Up to this
# many words, neighbouring words (one may lie between) are joined into the names they
# would make; a definition of one goes first, before names equal to a single word
# (`Tags.add`, `Catalog.add`), which otherwise won "add directive" outright.
COMPOUND_MAX_WORDS = 12


def compound_names(idents: list[str]) -> list[str]:
    """The names that neighbouring plain words of a query spell (two, or three in a row;
    one word may lie between two; or all of them, stopwords too: "get user by id"),
    snake_case, camelCase and PascalCase: "how to add a new directive" -> add_new, addNew,
    ..., add_directive, addDirective, AddDirective, ..."""
    if len(idents) > COMPOUND_MAX_WORDS:
        return []
    words = [w for w in idents if w.isalpha() and w.islower() and w not in STOPWORDS]
    runs = [idents] if 1 < len(idents) <= 6 and all(w.isalpha() and w.islower() for w in idents) else []
    runs += [words[i : i + 2] for i in range(len(words) - 1)]
    runs += [[words[i], words[i + 2]] for i in range(len(words) - 2)]
    runs += [words[i : i + 3] for i in range(len(words) - 2)]
    out: dict[str, None] = {}
    for run in runs:
        for last in dict.fromkeys((run[-1], stem(run[-1]))):  # "add directives": add_directive too
            parts = [*run[:-1], last]
            out["_".join(parts)] = None
            out[parts[0] + "".join(p.capitalize() for p in parts[1:])] = None
            out["".join(p.capitalize() for p in parts)] = None
    return list(out)


def analyse_query(query: str) -> QueryTerms:
    idents = IDENTIFIER.findall(query)
    counts: dict[str, float] = defaultdict(float)
    for ident in idents:
        expanded = expand_identifier(ident)
        for i, term in enumerate(expanded):
            # an identifier written like code (snake_case, camelCase) weighs more whole
            counts[term] += 2.0 if i == 0 and _CODE_LIKE.search(ident) else 1.0
    # a question's words that are stopwords name nothing (`to` found `Var.to` first)
    names = {i for i in idents if len(i) > 1 and (len(idents) == 1 or i.lower() not in STOPWORDS)}
    names.update(_DOTTED.findall(query))
    terms = dict(sorted(counts.items(), key=lambda tc: -tc[1])[:MAX_QUERY_TERMS])
    # repeated words matter, but sub-linearly
    weights = {t: 1.0 + 0.5 * (c - 1) ** 0.5 if c > 1 else 1.0 for t, c in terms.items()}
    # a long text (an issue, a traceback) mentions tests in passing; a short query means it
    about_tests = len(idents) <= 30 and any(t in weights for t in ("test", "testing", "fixture", "spec"))
    return QueryTerms(weights, names, short=len(idents) <= 3, about_tests=about_tests,
                      n_idents=len(idents), compounds=compound_names(idents))


# Exact names are looked up in the lexical index's `names` field (each chunk's name and
# qualified name): a term each, where a DuckDB IN-list of a question's words scanned the
# table once it held more than a few. A name defined more than MAX_EXACT times keeps the
# same ones every time (the lowest ids).
MAX_EXACT = 200
# A name that more chunks than this are named (`get`, `save`, `__init__`) points nowhere in
# a question: none of them gets the exact-name boost there (a query of a few words still
# finds them first). It lifted half the best hit's score under every `save` a question
# mentioned. On SWE-bench Lite, paired on the same indexes: file Acc@5 237 -> 244,
# function Acc@10 137 -> 146, edited functions 166 -> 172, file Acc@1 163 -> 157.
GENERIC_NAME = 30

_ROWS = "SELECT id, path, start_line, end_line, qualified_name, kind, language, signature, text FROM chunks c "


def check_query(query: str, k: int) -> None:
    if not query or not query.strip():
        raise InvalidArgument("the search query is empty")
    if k < 1 or k > 1000:
        raise InvalidArgument(f"k must be between 1 and 1000, got {k}")


def lexical(con: duckdb.DuckDBPyConnection, index: LexicalIndex, query: str, k: int = 10,
            language: str | None = None, path_glob: str | None = None,
            kind: str | None = None) -> tuple[QueryTerms, list[Scored]]:
    """BM25 with exact symbol matches boosted, best first."""
    check_query(query, k)
    q = analyse_query(query)
    if not q.terms:
        return q, []
    limit = max(k * 4, 50)
    paths = None
    if path_glob:  # the files it matches (fewer than their chunks), for tantivy's filter
        where, params = chunk_filters(None, path_glob, None)
        paths = [r[0] for r in con.execute(
            f"SELECT path FROM files c WHERE status = 'indexed' AND {where}", params).fetchall()]
    scored = index.search(q.terms, limit, language, kind, paths)
    exact: set[int] = set()
    if q.names:
        names = q.names if q.short else [n for n, c in index.name_counts(q.names).items() if c <= GENERIC_NAME]
        exact = set(index.named(names, MAX_EXACT, language, kind, paths))
    spelled = set(index.named(q.compounds, MAX_EXACT, language, kind, paths)) if q.compounds else set()
    if not scored and not exact and not spelled:
        return q, []
    top = max((r[1] for r in scored), default=1.0) or 1.0
    scores = dict(scored)
    ranked: list[Scored] = []
    for cid in scores.keys() | exact | spelled:
        score = scores.get(cid, 0.0)
        if cid in spelled:  # the name the words spell: first (see COMPOUND_MAX_WORDS)
            score = score + top * (20 if q.short else 1.0)
        elif cid in exact:
            # exact symbol matches first for identifier queries (unless the words spell a
            # name: then one word's name is a weak hint); a strong boost otherwise
            score = score + (top * 10 if q.short and not spelled else top * 0.5)
        ranked.append(Scored(cid, score, "search hit"))
    ranked.sort(key=_best_first)
    if not q.short:
        ranked = _path_priors(index, ranked[:limit], tests=not q.about_tests)
    return q, ranked


def make_hits(con: duckdb.DuckDBPyConnection, ranked: list[Scored], q: QueryTerms,
              k: int) -> list[SearchHit]:
    """The top `k` of a ranking, best first, as hits with snippets: one hit per definition
    (a long function is split into parts; its best-ranked part stands for it)."""
    if not ranked:
        return []
    rows: dict[int, tuple] = {}
    window = 0
    while True:
        # a window of the ranking, widened to whole ties (they are broken by path and line);
        # wider when parts of one definition folded and left fewer than k
        window = _through_ties(ranked, max(window * 2, k + 5))
        wanted = [item.chunk_id for item in ranked[:window] if item.chunk_id not in rows]
        if wanted:
            where, params = by_ids(wanted)
            rows.update((r[0], r) for r in con.execute(_ROWS + where, params).fetchall())
        score = {item.chunk_id: item.score for item in ranked[:window]}
        chosen = _one_per_definition(sorted((r for cid, r in rows.items() if cid in score),
                                            key=lambda r: (-score[r[0]], r[1], r[2])), k)
        if len(chosen) >= k or window >= len(ranked) or window >= MAX_HIT_WINDOW:
            break
    return [SearchHit(cid, path, start, end, qual or "", knd, lang, round(score[cid], 4),
                      _snippet(text or "", start, end, q.terms), sig or "")
            for cid, path, start, end, qual, knd, lang, sig, text in chosen]


MAX_HIT_WINDOW = 1000  # chunks of a ranking read at most to find k distinct hits


def _through_ties(ranked: list[Scored], n: int) -> int:
    """`n`, or more so as not to cut a run of equal scores."""
    if n >= len(ranked):
        return len(ranked)
    edge = ranked[n - 1].score
    while n < len(ranked) and ranked[n].score >= edge:
        n += 1
    return n


def _one_per_definition(rows: list[tuple], k: int) -> list[tuple]:
    """The first `k` rows, a definition's later parts left out (rows: id, path, start,
    end, qualified name, kind, ...)."""
    seen: set[tuple[str, str]] = set()
    chosen = []
    for row in rows:
        path, qual, knd = row[1], row[4], row[5]
        if qual and knd in DEFINITION_KINDS:
            if (path, qual) in seen:
                continue
            seen.add((path, qual))
        chosen.append(row)
        if len(chosen) == k:
            break
    return chosen


def _best_first(item: Scored) -> tuple[float, int]:
    return -item.score, item.chunk_id


def _path_priors(index: LexicalIndex, ranked: list[Scored], tests: bool) -> list[Scored]:
    """`ranked` with vendored code's scores (and test code's, if `tests`) lowered."""
    known = index.chunks.get(item.chunk_id for item in ranked)
    out = []
    for item in ranked:
        path = known.get(item.chunk_id, ("",))[0]
        factor = (TEST_PRIOR if tests and TEST_PATH.search(path) else 1.0) * \
            (VENDORED_PRIOR if VENDORED_PATH.search(path) else 1.0)
        out.append(item._replace(score=item.score * factor) if factor != 1.0 else item)
    out.sort(key=_best_first)
    return out


def _snippet(text: str, start_line: int, end_line: int, terms: dict[str, float],
             width: int = 3) -> str:
    """The few lines of a chunk that hold the most query terms (numbered when verbatim)."""
    lines = text.split("\n")
    best, best_row = -1.0, 0
    for row, line in enumerate(lines):
        score = 0.0
        for ident in IDENTIFIER.findall(line):
            for term in expand_identifier(ident):
                score += terms.get(term, 0.0)
        if score > best:
            best, best_row = score, row
    lo = max(0, min(best_row - 1, len(lines) - width))
    # split symbols and class outlines are not a verbatim slice of the file: no numbers
    verbatim = len(lines) == end_line - start_line + 1
    return "\n".join(
        f"{start_line + row}: {lines[row][:200]}" if verbatim else lines[row][:200]
        for row in range(lo, min(len(lines), lo + width))
    )
