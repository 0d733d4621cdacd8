"""The heuristic pager: which code to page in for a question, with no model involved.

For each question it takes the rankings of the retrieval signals (codevm/retrieval):
search hits, traceback frames, paths and definitions the question names, and the
reference graph around the best of them. With the learned ranker (the default) the
candidates are ordered by the sum of its rank and the fusion's (`blend`); otherwise by the
fusion, where a candidate gains a share of its file's best score. It then fills its share
of the budget, most relevant first, never paging the same code twice and leaving out
candidates far below the best one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from codevm.db.store import Store
from codevm.errors import CodevmError
from codevm.memory.budget import TokenEstimator, candidates_for
from codevm.memory.context import Page
from codevm.retrieval.fusion import Scored
from codevm.retrieval.graph import MAX_CALLERS
from codevm.retrieval.lexical import TEST_PATH
from codevm.retrieval.named import code_names
from codevm.retrieval.ranker import ChunkInfo, Model, feature_names, features
from codevm.retrieval.retriever import Retriever, signal_depth
from codevm.retrieval.sql import BY_IDS
from codevm.retrieval.symbols import definition_parts, file_lines

FILE_PRIOR = 0.3  # share of its file's best score that a candidate adds to its own
# a candidate scoring under this share of the best one is not paged in before the model asks:
# on 24 questions about flask and requests (bench/answers.py) the pages under it held 1% of the
# identifiers the reference answers name, and took 10% of the working set (and of the time the
# model spends reading it)
RELEVANCE_FLOOR = 0.3
FEATURES = feature_names()
# the whole of a long definition (split into parts when indexed) is paged in for any of its
# parts, and a class whole for its outline, if it takes at most this share of the budget
# (times the candidate's relevance: less relevant wholes crowded out other pages): on
# SWE-bench Lite a part (often 10-20 lines) was what the 8k working set held of the function
# the fix edits in about 1 question in 14, and an outline and some methods of the class
WHOLE_SHARE = 0.3
CLASS_LOOKUP = 8  # chunks named like a method's class read to find the class
# "where is save_session called?", "who calls `parse`?", "callers of Flask.route", in a
# question (a long text, an issue report, says "called" in passing)
ASKS_FOR_CALLERS = re.compile(r"\b(?:where|who|what|which)\b[^.?!]*\b(?:call|calls|called|invoked|invokes)\b"
                              r"|\bcallers?\b|\bcall sites?\b", re.IGNORECASE)
CALLER_QUESTION_WORDS = 40
ABOUT_TESTS = re.compile(r"\b(?:tests?|testing|fixtures?|specs?)\b", re.IGNORECASE)
CALLER_NAMES = 2  # the names of a question whose callers are paged in first
CALLER_PAGES = 4  # callers of each paged in first
BLEND_SCALE = 10.0  # ranks (summed) below the best at which the learned order's relevance halves


@dataclass
class Candidate:
    chunk_id: int
    relevance: float
    reason: str


def with_file_prior(fused: list[Scored], paths: dict[int, str],
                    prior: float = FILE_PRIOR) -> list[Candidate]:
    """Candidates from a fused ranking: each gains `prior` of its file's best score
    (code in the file that matches best is likelier than an equal hit elsewhere)."""
    if not fused:
        return []
    best: dict[str, float] = {}
    for cid, score, _ in fused:
        best[paths.get(cid, "")] = max(best.get(paths.get(cid, ""), 0.0), score)
    ranked = sorted(((score + prior * best[paths.get(cid, "")], cid, reason)
                     for cid, score, reason in fused), key=lambda r: -r[0])
    top = ranked[0][0] or 1.0
    return [Candidate(cid, score / top, reason) for score, cid, reason in ranked]


def fill(candidates: list[Candidate], pages: dict[int, Page], budget: int,
         have: set[str] | None = None, wholes: dict[int, Page] | None = None) -> list[Page]:
    """The pages of the most relevant candidates that fit in `budget` tokens (a smaller
    page further down may still fit), skipping what is in `have` or whose lines a chosen
    page already holds. A candidate with a page in `wholes` (one part of a long definition,
    a small class's outline, or one of its methods) brings the whole definition instead, in
    place of what of it was chosen before, when that fits and takes at most WHOLE_SHARE of
    the budget times the relevance of the candidates it would stand for, summed (the best
    candidate may take 30% whole; one a third as relevant, 10%; two methods of a class as
    relevant as a third each, 20%)."""
    chosen: list[Page] = []
    used = 0
    have = have or set()
    wholes = wholes or {}
    support: dict[str, float] = {}  # a whole's relevance: the sum of its candidates' (at most 1)
    for c in candidates:
        if (w := wholes.get(c.chunk_id)) is not None:
            support[w.key] = min(1.0, support.get(w.key, 0.0) + c.relevance)
    for c in candidates:
        page = pages.get(c.chunk_id)
        if page is None:
            continue
        whole = wholes.get(c.chunk_id)
        if whole is not None and whole.key not in have and \
                whole.tokens <= max(page.tokens, WHOLE_SHARE * support.get(whole.key, c.relevance) * budget):
            inside = [p for p in chosen if p.path == whole.path and whole.start_line <= p.start_line
                      and p.end_line <= whole.end_line]
            freed = sum(p.tokens for p in inside)
            if used - freed + whole.tokens <= budget:
                chosen = [p for p in chosen if not any(p is q for q in inside)]
                relevance = max([c.relevance] + [p.relevance for p in inside])
                chosen.append(replace(whole, relevance=round(relevance, 3), reason=c.reason))
                used += whole.tokens - freed
                continue
        if page.key in have or used + page.tokens > budget:
            continue
        if any(p.path == page.path and p.start_line <= page.start_line and page.end_line <= p.end_line
               and p.verbatim for p in chosen):
            continue
        chosen.append(replace(page, relevance=round(c.relevance, 3), reason=c.reason))
        used += page.tokens
    return joined(chosen)


def joined(pages: list[Page]) -> list[Page]:
    """`pages` with the parts of one definition that follow each other in its file made one
    page (at the place of the first, as relevant as the best): the function reads in one
    piece, without the signature repeated over each part after the first."""
    out: list[tuple[int, Page]] = []  # (place of its first part in `pages`, page)
    for place, page in sorted(enumerate(pages), key=lambda p: (p[1].path, p[1].start_line)):
        if out:
            first, last = out[-1]
            if last.path == page.path and last.symbol == page.symbol and page.symbol and \
                    last.end_line + 1 == page.start_line and last.verbatim and page.verbatim:
                out[-1] = (min(first, place), replace(
                    last, end_line=page.end_line,
                    text="\n".join([last.text, *(file_lines(page.text, page.start_line, page.end_line) or [])]),
                    tokens=last.tokens + page.tokens, relevance=max(last.relevance, page.relevance)))
                continue
        out.append((place, page))
    return pages if len(out) == len(pages) else [p for _, p in sorted(out, key=lambda p: p[0])]


def blended(cids: list[int], rows: list[list[float]], scores: list[float], paths: dict[int, str],
            k: int, reasons: dict[int, str] | None = None) -> list[Candidate]:
    """The top `k` candidates of `blend`, each as relevant as 1 / (1 + (its rank sum - the
    best one) / BLEND_SCALE)."""
    order = blend(cids, rows, scores, paths)[:k]
    best = order[0][1] if order else 0
    return [Candidate(cid, round(1.0 / (1.0 + (total - best) / BLEND_SCALE), 4), (reasons or {}).get(cid, ""))
            for cid, total in order]


def blend(cids: list[int], rows: list[list[float]], scores: list[float],
          paths: dict[int, str]) -> list[tuple[int, int]]:
    """(chunk id, rank sum), best first: each candidate's rank by the learned ranker's
    `scores` plus its rank in the hand-weighted fusion with the file prior."""
    rank = {cid: r for r, (_, cid) in enumerate(sorted(zip(scores, cids, strict=True), key=lambda p: (-p[0], p[1])))}
    at = FEATURES.index("fused_score")
    hand = with_file_prior([Scored(cid, row[at], "") for cid, row in zip(cids, rows, strict=True)], paths)
    for r, c in enumerate(hand):
        rank[c.chunk_id] += r
    return sorted(rank.items(), key=lambda p: (p[1], p[0]))


class HeuristicPager:
    def __init__(self, store: Store, retriever: Retriever, estimator: TokenEstimator,
                 model: Model | None = None, read: Callable[[str, int, int], str] | None = None):
        self.store = store
        self.retriever = retriever
        self.estimator = estimator
        self.model = model  # the learned ranker; None: the hand-weighted fusion
        self.read = read  # (path, start line, end line) -> the file's lines on disk

    def candidates(self, question: str, k_search: int = 30) -> list[Candidate]:
        """Candidate pages, most relevant first: every retrieval signal's ranking (search
        hits, what the question names, the reference graph around them), ordered by the
        learned ranker, or fused by hand with the file prior."""
        return self._ranked(question, k_search)[0]

    def _ranked(self, question: str, k_search: int) -> tuple[list[Candidate], dict[int, Page]]:
        """The candidates, and the pages already read for them (the learned ranker reads
        every candidate's page; the fusion none)."""
        if not question.strip():
            return [], {}
        if self.model is not None:
            ranked, read = self.learned(question, min(1000, 2 * k_search))
        else:
            fused, paths = self.retriever.retrieve(question, k=min(1000, 2 * k_search))
            ranked, read = with_file_prior(fused, paths), {}
        return self.callers_first(question, ranked), read

    def callers_first(self, question: str, ranked: list[Candidate]) -> list[Candidate]:
        """For a question about who calls something ("where is `save_session` called?"),
        the chunks that call the first names it writes like code, ahead of the rest: the
        signals find the definition the question names, and its callers only when they
        share its words."""
        if len(question.split()) > CALLER_QUESTION_WORDS or not ASKS_FOR_CALLERS.search(question):
            return ranked
        names = [n.rsplit(".", 1)[-1] for n in code_names(question)][:CALLER_NAMES]
        lexical = self.store.lexical
        held = lexical.holders("calls", names, MAX_CALLERS)
        tests = bool(ABOUT_TESTS.search(question))
        first: dict[int, str] = {}
        for name in names:
            where = lexical.chunks.get(held.get(name, []))
            # the project's own callers before its tests', or for a question about tests, after
            callers = sorted(where, key=lambda cid: (bool(TEST_PATH.search(where[cid][0])) != tests, cid))
            for cid in callers[:CALLER_PAGES]:
                first.setdefault(cid, f"calls {name}")
        if not first:
            return ranked
        return ([Candidate(cid, 1.0, reason) for cid, reason in first.items()]
                + [c for c in ranked if c.chunk_id not in first])

    def learned(self, question: str, k: int) -> tuple[list[Candidate], dict[int, Page]]:
        """The top `k` of the signals' candidates in the order of the sum of two ranks:
        the learned ranker's (codevm/retrieval/ranker.py, trained by bench/ranker.py) and
        the hand-weighted fusion's with the file prior, and the page of each candidate.
        (On held-out mined pairs and on SWE-bench Lite the sum found the edited function in
        the top 10 more often than either alone, and filled the 8k working set at least as
        well.) Relevance is 1 / (1 + (rank sum - the best one) / BLEND_SCALE)."""
        import numpy as np

        assert self.model is not None
        _, signals = self.retriever.signals(question, depth=signal_depth(k))
        ids = {item.chunk_id for ranked in signals.values() for item in ranked.items}
        if not ids:
            return [], {}
        pages = self.page_map(ids)  # its tokens, as the ranker was trained with
        kinds = dict(self.store.cursor().execute(f"SELECT id, kind FROM chunks c {BY_IDS}",
                                                 {"ids": list(ids)}).fetchall())
        chunks = {cid: ChunkInfo(p.path, p.symbol, kinds.get(cid, ""), p.tokens, p.text.count("\n") + 1)
                  for cid, p in pages.items()}
        reasons: dict[int, str] = {}
        cids, rows = features(signals, chunks, self.retriever.weights, reasons)
        if not cids:
            return [], {}
        scores = self.model.score(np.array(rows, dtype=np.float64))
        return blended(cids, rows, list(scores), {cid: chunks[cid].path for cid in cids}, k, reasons), pages

    def _on_disk(self, outline: Page) -> str | None:
        """The lines an outline page spans, from the file, if the outline's first line is
        the file's there and its other lines (bar its members' signatures) follow in order."""
        if self.read is None:
            return None
        try:
            lines = self.read(outline.path, outline.start_line, outline.end_line).split("\n")
        except (CodevmError, OSError):
            return None
        own = [line.rstrip() for line in outline.text.split("\n") if line.strip()]
        if len(lines) != outline.end_line - outline.start_line + 1 or not own or lines[0].rstrip() != own[0]:
            return None
        at = 0
        for line in own:
            if line.endswith(" ..."):  # a member's signature, shown in full in the file
                continue
            found = next((i for i in range(at, len(lines)) if lines[i].rstrip() == line), None)
            if found is None:
                return None
            at = found + 1
        return "\n".join(lines)

    def page_map(self, chunk_ids: Iterable[int], estimator: TokenEstimator | None = None) -> dict[int, Page]:
        """A page for each chunk, its tokens counted by `estimator` (the asking context's
        calibrated one; by default the pager's)."""
        count = (estimator or self.estimator).count
        ids = list(chunk_ids)
        if not ids:
            return {}
        pages = {}
        for cid, path, start, end, text, symbol in self.store.cursor().execute(
                f"SELECT id, path, start_line, end_line, text, qualified_name FROM chunks c {BY_IDS}",
                {"ids": ids}).fetchall():
            page = Page(f"chunk:{cid}", path, start, end, text, 0, symbol or "")
            page.tokens = count(page.render())
            pages[cid] = page
        return pages

    def pages(self, candidates: list[Candidate], budget: int, have: set[str] | None = None,
              estimator: TokenEstimator | None = None) -> list[Page]:
        """Pages for the most relevant candidates that fit in `budget` tokens."""
        if not candidates:
            return []
        return fill(candidates, self.page_map([c.chunk_id for c in candidates], estimator), budget, have)

    def prefetch(self, question: str, budget: int, have: set[str] | None = None,
                 estimator: TokenEstimator | None = None, floor: float = RELEVANCE_FLOOR) -> list[Page]:
        """The working set for a question before the model sees it: the most relevant pages
        that fit in `budget`, none scoring under `floor` of the best one."""
        ranked, read = self._ranked(question, candidates_for(budget))
        candidates = [c for c in ranked if c.relevance >= floor]
        if not read:
            pages = self.page_map([c.chunk_id for c in candidates], estimator)
        else:  # the pages the learned ranker read: counted again only for another estimator
            pages = {c.chunk_id: read[c.chunk_id] for c in candidates if c.chunk_id in read}
            pages.update(self.page_map([c.chunk_id for c in candidates if c.chunk_id not in read]))  # callers
            if estimator is not None:
                pages = {cid: replace(p, tokens=estimator.count(p.render())) for cid, p in pages.items()}
        # the whole definitions of the parts that would be paged in without them, and the
        # class of methods that would be paged in together
        first = {int(p.key.partition(":")[2]) for p in fill(candidates, pages, budget, have)}
        wholes = self.whole_pages({cid: p for cid, p in pages.items() if cid in first}, estimator)
        for cid, whole in self.class_pages(first, estimator).items():
            wholes.setdefault(cid, whole)
        return fill(candidates, pages, budget, have, wholes)

    def class_pages(self, chunk_ids: Iterable[int], estimator: TokenEstimator | None = None) -> dict[int, Page]:
        """method chunk id -> the page of its whole class, for the methods of `chunk_ids`
        that share their class (in one file) with another of them: two or more methods of
        a class read better as the class, with what they share (its attributes, its other
        methods), when it is small enough for the fill to take it. SWE-bench Lite's fixes
        that add a method to a class edit the class, whose methods the pager had paged in
        one by one (sympy-12171: four of MCodePrinter's, 23 of its 74 lines)."""
        ids = sorted(set(chunk_ids))
        if len(ids) < 2:
            return {}
        groups: dict[tuple[str, str], list[int]] = {}
        for cid, path, qualified in self.store.cursor().execute(
                f"SELECT id, path, qualified_name FROM chunks c {BY_IDS} WHERE kind = 'method' "
                "AND qualified_name LIKE '%.%'", {"ids": ids}).fetchall():
            groups.setdefault((path, qualified.split(".")[0]), []).append(cid)
        lexical = self.store.lexical
        owners: dict[int, list[int]] = {}  # class chunk id -> its methods among `chunk_ids`
        for (path, owner), methods in sorted(groups.items()):
            if len(methods) < 2:
                continue
            classes = [cid for cid, (_, kind) in sorted(lexical.chunks.get(
                lexical.in_file(path, "defines", [owner], CLASS_LOOKUP)).items()) if kind == "class"]
            if len(classes) == 1:  # not none, nor two classes of that name in one file
                owners[classes[0]] = methods
        if not owners:
            return {}
        pages = self.page_map(owners, estimator)
        wholes = {cid: p for cid, p in pages.items() if p.verbatim}
        wholes.update(self.whole_pages({cid: p for cid, p in pages.items() if not p.verbatim}, estimator))
        return {method: whole for cid, whole in wholes.items() if whole.verbatim for method in owners[cid]}

    def whole_pages(self, pages: dict[int, Page], estimator: TokenEstimator | None = None) -> dict[int, Page]:
        """chunk id -> the page of the whole definition it is one part of (for the chunks
        that are parts of a long one), its lines as the file has them (each part after the
        first carries the definition's signature as a header, left out here); for a class's
        outline, the class as the file on disk has it, if the file still holds the outline's
        lines there (the fill keeps it for small classes)."""
        count = (estimator or self.estimator).count
        out: dict[int, Page] = {}
        for cid, page in pages.items():
            if not page.verbatim and (text := self._on_disk(page)) is not None:
                whole = replace(page, text=text)
                whole.tokens = count(whole.render())
                out[cid] = whole
        for cid, parts in definition_parts(self.store.cursor(), self.store.lexical, list(pages)).items():
            own = [file_lines(part.text, part.start_line, part.end_line) for part in parts]
            if any(lines is None for lines in own):  # a part cut to the size cap: no whole to show
                continue
            page = pages[cid]
            whole = Page(f"chunk:{parts[0].chunk_id}", page.path, parts[0].start_line, parts[-1].end_line,
                         "\n".join(line for lines in own for line in lines or []), 0, page.symbol)
            whole.tokens = count(whole.render())
            out[cid] = whole
        return out
