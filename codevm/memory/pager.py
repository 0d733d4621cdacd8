"""The heuristic pager: which code to page in for a question, with no model involved.

For each question it takes the fused ranking of the retrieval signals (retrieval.py):
search hits, traceback frames, paths and definitions the question names, and the
reference graph around the best of them; a candidate gains a share of its file's best
score. It then fills its share of the budget, most relevant first, never paging the same
code twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from codevm.memory.context import Page, TokenEstimator
from codevm.memory.retrieval import Retriever
from codevm.memory.store import Store


FILE_PRIOR = 0.3  # share of its file's best score that a candidate adds to its own


@dataclass
class Candidate:
    chunk_id: int
    relevance: float
    reason: str


class HeuristicPager:
    def __init__(self, store: Store, retriever: Retriever, estimator: TokenEstimator):
        self.store = store
        self.retriever = retriever
        self.estimator = estimator

    def candidates(self, question: str, k_search: int = 30) -> list[Candidate]:
        """Candidate pages, most relevant first: the fused ranking of every retrieval
        signal (search hits, what the question names, the reference graph around them)."""
        if not question.strip():
            return []
        fused = self.retriever.retrieve(question, k=min(1000, 2 * k_search))
        if not fused:
            return []
        # code in the file that matches best is likelier than an equal hit elsewhere
        ids = ", ".join(str(int(cid)) for _, cid, _ in fused)
        paths = dict(self.store.cursor().execute(
            f"SELECT id, path FROM chunks WHERE id IN ({ids})").fetchall())
        best: dict[str, float] = {}
        for score, cid, _ in fused:
            best[paths.get(cid, "")] = max(best.get(paths.get(cid, ""), 0.0), score)
        ranked = sorted(((score + FILE_PRIOR * best[paths.get(cid, "")], cid, reason)
                         for score, cid, reason in fused), key=lambda r: -r[0])
        top = ranked[0][0] or 1.0
        return [Candidate(cid, score / top, reason) for score, cid, reason in ranked]

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
