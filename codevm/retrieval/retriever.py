"""The retriever: each signal's ranking of a query, and their fusion.

- lexical: BM25 over code-aware terms, exact symbol names boosted (lexical.py);
- named: what a question names outright, resolved exactly (named.py);
- graph: a personalised PageRank around the best lexical and named hits (graph.py);
- vector: cosine similarity of dense vectors (vectors.py), when an embedder is set.

fusion.py weighs them into one ranking.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

from codevm.api import SearchHit
from codevm.db.lexical import LexicalIndex
from codevm.retrieval.fusion import FLOOR_RANK, SIGNAL_DEPTH, SIGNALS, TEXT_KINDS, Ranked, Scored, fused_ranking
from codevm.retrieval.graph import GRAPH_MIN_WORDS, GRAPH_SEEDS, graph_signal
from codevm.retrieval.lexical import QueryTerms, check_query, lexical, make_hits
from codevm.retrieval.named import named_signal
from codevm.retrieval.sql import BY_IDS, chunk_filters
from codevm.retrieval.vectors import Vectors


def vector_signal(vectors: Vectors | None, con: duckdb.DuckDBPyConnection, query: str, depth: int,
                  language: str | None, path_glob: str | None, kind: str | None) -> Ranked:
    """Chunks by cosine similarity to the query (raw cosines; see `fuse`)."""
    ranked = vectors.rank(con, query, max(depth, FLOOR_RANK), language, path_glob, kind) if vectors else []
    return Ranked([Scored(cid, score, "similar meaning") for cid, score in ranked])


class Retriever:
    def __init__(self, cursor: Callable[[], duckdb.DuckDBPyConnection], index: LexicalIndex,
                 weights: dict[str, float] | None = None, vectors: Vectors | None = None):
        self.cursor = cursor
        self.index = index
        self.weights = weights or {name: 1.0 for name in SIGNALS}
        self.vectors = vectors

    def signals(self, query: str, language: str | None = None, path_glob: str | None = None,
                kind: str | None = None, depth: int = SIGNAL_DEPTH) -> tuple[QueryTerms, dict[str, Ranked]]:
        """Each signal's ranking of up to `depth` chunks. The search filters apply to the
        lexical and vector rankings; the others also rank code outside them (see `_fused`)."""
        con = self.cursor()
        q, ranked = lexical(con, self.index, query, depth, language, path_glob, kind)
        out = {"lexical": Ranked(ranked[:depth])}
        out["named"] = named = named_signal(con, self.index, query)
        seeds: dict[int, float] = {}
        for items in (out["lexical"].items[:GRAPH_SEEDS], named.items[:GRAPH_SEEDS]):
            for rank, item in enumerate(items):
                seeds[item.chunk_id] = seeds.get(item.chunk_id, 0.0) + 1.0 / (rank + 1)
        # a question or an issue (not a few words typed in a search box) gets the graph
        wanted = self.weights.get("graph", 0) > 0 and q.n_idents >= GRAPH_MIN_WORDS
        # like every signal, the graph ranks `depth` chunks (the offline tuner sees the same)
        out["graph"] = Ranked(graph_signal(con, self.index, seeds).items[:depth]) if wanted else Ranked([])
        out["vector"] = (vector_signal(self.vectors, con, query, depth, language, path_glob, kind)
                         if self.weights.get("vector", 0) > 0 else Ranked([]))
        return q, out

    def fuse(self, signals: dict[str, Ranked]) -> tuple[list[Scored], dict[int, str]]:
        """The signals' `fused_ranking`, and the paths of the chunks they rank (read for it)."""
        ids = {item.chunk_id for ranked in signals.values() for item in ranked.items}
        if not ids:
            return [], {}
        known = self.index.chunks.get(ids)
        text = {cid for cid, (_, kind) in known.items() if kind in TEXT_KINDS}
        paths = {cid: path for cid, (path, _) in known.items()}
        return fused_ranking(signals, self.weights, text, paths), paths

    def _fused(self, query: str, k: int, language: str | None, path_glob: str | None,
               kind: str | None) -> tuple[QueryTerms, list[Scored], dict[int, str]]:
        check_query(query, k)
        q, signals = self.signals(query, language, path_glob, kind, signal_depth(k))
        fused, paths = self.fuse(signals)
        if language or path_glob or kind:
            fused = _only(self.cursor(), fused, language, path_glob, kind)
        return q, fused, paths

    def retrieve(self, query: str, k: int = 10, language: str | None = None, path_glob: str | None = None,
                 kind: str | None = None) -> tuple[list[Scored], dict[int, str]]:
        """The fused ranking, best first, and the chunks' paths."""
        _, fused, paths = self._fused(query, k, language, path_glob, kind)
        return fused[:k], paths

    def search(self, query: str, k: int = 10, language: str | None = None,
               path_glob: str | None = None, kind: str | None = None) -> list[SearchHit]:
        q, fused, _ = self._fused(query, k, language, path_glob, kind)
        return make_hits(self.cursor(), fused, q, k)


def signal_depth(k: int) -> int:
    """How deep each signal ranks for the top `k` of the fusion."""
    return min(1000, max(3 * k, 60))


def _only(con: duckdb.DuckDBPyConnection, fused: list[Scored], language: str | None,
          path_glob: str | None, kind: str | None) -> list[Scored]:
    """The chunks of a fused ranking that pass the search filters."""
    if not fused:
        return fused
    where, params = chunk_filters(language, path_glob, kind)
    keep = {r[0] for r in con.execute(f"SELECT id FROM chunks c {BY_IDS} WHERE {where}",
                                      {**params, "ids": [item.chunk_id for item in fused]}).fetchall()}
    return [item for item in fused if item.chunk_id in keep]
