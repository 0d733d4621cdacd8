"""SWE-bench Lite paging: does the heuristic pager put the gold code in the working set?
Prints one JSON object.

For each instance the repository is checked out at its base commit and indexed (as in
bench/localization.py, sharing its cache); the issue text is the question. At budgets of
2k, 4k, 8k and 16k tokens for the working set it reports the share of instances whose
gold files (a chunk of each) and gold functions (each one's chunk; `imports` = a
module-level chunk or the first chunk of the file) are in the working set, for the heuristic
pager with the fusion of every retrieval signal (`pager`, `ranker = "fusion"`), for the
learned pager that `codevm ask` uses by default (`learned`, the shipped model) and, in the
same run, for each signal alone filling the same budget (`lexical` is plain search). `edited` counts
the functions that each fix edits (bench/gold.py), over the instances that edit one.

Each row keeps the signals' rankings and the size of each chunk's page, and the working
sets are made from them with the pager's own functions (pager.fill, pager.with_file_prior),
so that the figures follow the current weights without another run; each row records at
how many budgets that differs from the live pager (`kept_rankings_differ_from_live`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from index_speed import latency_summary  # noqa: E402
from localization import Bench, bench_arguments, run_instances, selected  # noqa: E402

from codevm.config import Settings  # noqa: E402
from codevm.engine import Engine  # noqa: E402
from codevm.memory.budget import candidates_for as search_depth  # noqa: E402
from codevm.memory.context import Page  # noqa: E402
from codevm.memory.pager import FILE_PRIOR, Candidate, HeuristicPager, blended, fill, with_file_prior  # noqa: E402
from codevm.retrieval.fusion import (  # noqa: E402
    SIGNALS,
    TEXT_KINDS,
    Ranked,
    Scored,
    fused_ranking,
    weights,  # noqa: E402
)
from codevm.retrieval.ranker import MODEL_FILE, ChunkInfo, Model, features  # noqa: E402
from codevm.retrieval.retriever import signal_depth  # noqa: E402

BUDGETS = (2000, 4000, 8000, 16000)
ALONE_DEPTH = 300  # chunks of each signal alone that fill a budget (of the deepest kept)


def covered(pages: list[Page], kinds: dict[str, str], instance: dict,
            holds: dict[tuple[str, int, int], list[str]] | None = None) -> dict[str, bool | None]:
    """Whether the working set holds the gold files, the gold functions and the edited
    functions (None: the fix edits no function that exists). A whole page (a long
    definition, a class) holds the symbols of `holds[(its key, first line, last line)]`
    too: a class paged in whole holds its methods (not its first part alone)."""
    paths = {p.path for p in pages}
    have = set()
    for p in pages:
        have.add(f"{p.path}::{p.symbol}")
        if p.verbatim:
            have.update(f"{p.path}::{symbol}" for symbol in (holds or {}).get((p.key, p.start_line, p.end_line), ()))
        if kinds.get(p.key) == "module" or p.start_line == 1:
            have.add(f"{p.path}::imports")
    edited = instance["edited_functions"]
    return {"file": all(g in paths for g in instance["gold_files"]),
            "function": all(g in have for g in instance["gold_functions"]),
            "edited": all(g in have for g in edited) if edited else None}


class Kept:
    """An instance's signal rankings and the pages of the chunks in them, kept in its row,
    so that the pager's working sets can be made again under any weights."""

    def __init__(self, row: dict):
        # the signals as deep as each budget ranks them (a ranking's top is not always a
        # deeper one's: ties, and tests demoted after the cut)
        self.signals = {int(depth): {name: Ranked([Scored(int(cid), score, name) for cid, score in items])
                                     for name, items in signals.items()}
                        for depth, signals in row["signals"].items()}
        self.pages: dict[int, Page] = {}
        self.kinds: dict[str, str] = {}
        for cid, (path, symbol, kind, start, end, tokens, lines) in row["chunks"].items():
            # the text is not kept, only its number of lines (Page.verbatim)
            self.pages[int(cid)] = Page(f"chunk:{cid}", path, start, end, "\n" * (lines - 1), tokens, symbol)
            self.kinds[f"chunk:{cid}"] = kind
        self.text = {cid for cid, page in self.pages.items() if self.kinds[page.key] in TEXT_KINDS}
        # HeuristicPager.prefetch's whole pages: of each part of a long definition (and a
        # class's outline), and of each method's class (when two of its methods are paged)
        self.holds: dict[tuple[str, int, int], list[str]] = {}
        self.wholes = self._whole_pages(row["wholes"])
        self.classes = self._whole_pages(row["classes"])

    def _whole_pages(self, kept: dict[str, list]) -> dict[int, Page]:
        out = {}
        for cid, (key, symbol, start, end, tokens, lines, holds) in kept.items():
            out[int(cid)] = Page(key, self.pages[int(cid)].path, start, end, "\n" * (lines - 1), tokens, symbol)
            self.holds[(key, start, end)] = holds
        return out

    def working_set(self, candidates: list[Candidate], budget: int) -> list[Page]:
        """What HeuristicPager.prefetch makes of `candidates`: the fill, then the fill again
        with the whole definitions of the parts it took, and the class of two or more
        methods it took."""
        first = {int(p.key.partition(":")[2]) for p in fill(candidates, self.pages, budget)}
        wholes = {cid: self.wholes[cid] for cid in first if cid in self.wholes}
        classes: dict[str, list[int]] = {}
        for cid in sorted(first & self.classes.keys()):
            classes.setdefault(self.classes[cid].key, []).append(cid)
        for methods in classes.values():
            for cid in methods if len(methods) > 1 else ():
                wholes.setdefault(cid, self.classes[cid])
        return fill(candidates, self.pages, budget, wholes=wholes)

    def covered(self, pages: list[Page], instance: dict) -> dict[str, bool | None]:
        return covered(pages, self.kinds, instance, self.holds)

    def pager(self, budget: int, w: dict[str, float], prior: float = FILE_PRIOR) -> list[Page]:
        """What HeuristicPager.prefetch pages in: the fusion of each signal's top
        `signal_depth` chunks, its best `2 x search_depth`, file prior, filled to budget."""
        k = min(1000, 2 * search_depth(budget))
        paths = {cid: p.path for cid, p in self.pages.items()}
        fused = fused_ranking(self.signals[signal_depth(k)], w, self.text, paths)[:k]
        return self.working_set(with_file_prior(fused, paths, prior), budget)

    def chunk_info(self) -> dict[int, ChunkInfo]:
        """What the learned ranker reads of each chunk (codevm/retrieval/ranker.py)."""
        return {cid: ChunkInfo(p.path, p.symbol, self.kinds[p.key], p.tokens, p.text.count("\n") + 1)
                for cid, p in self.pages.items()}

    def learned(self, budget: int, w: dict[str, float], model: Model) -> list[Page]:
        """What the learned pager (ranker = "learned") pages in: HeuristicPager.learned's
        order of the signals' candidates, as deep as it ranks them for `budget`."""
        import numpy as np

        k = min(1000, 2 * search_depth(budget))
        chunks = self.chunk_info()
        ids, x = features(self.signals[signal_depth(k)], chunks, w)
        if not ids:
            return []
        scores = list(model.score(np.array(x, dtype=np.float64)))
        return self.working_set(blended(ids, x, scores, {cid: chunks[cid].path for cid in ids}, k), budget)

    def alone(self, name: str, budget: int) -> list[Page]:
        """One signal's ranking alone filling the budget."""
        items = self.signals[max(self.signals)][name].items[:ALONE_DEPTH]
        return fill([Candidate(cid, score, name) for cid, score, _ in items], self.pages, budget)


def kept_signals(engine: Engine, instance: dict, budgets: tuple[int, ...] = BUDGETS) -> dict:
    """An instance's row of the signals' rankings, as deep as each budget ranks them, and
    the pages of the chunks in them (what `Kept` reads)."""
    question = instance["query"]
    depths = sorted({signal_depth(min(1000, 2 * search_depth(b))) for b in budgets})
    by_depth = {d: engine.retriever.signals(question, depth=d)[1] for d in depths}
    ids = {cid for signals in by_depth.values() for ranked in signals.values() for cid, _, _ in ranked.items}
    pages = engine.pager.page_map(ids)
    kinds = dict(engine.store.cursor().execute(
        f"SELECT id, kind FROM chunks WHERE id IN ({', '.join(map(str, ids)) or 'NULL'})").fetchall())
    wholes = engine.pager.whole_pages(pages)
    classes = engine.pager.class_pages(ids)
    holds = held_symbols(engine, list(wholes.values()) + list(classes.values()))
    return {
        "id": instance["id"],
        "signals": {str(d): {name: [[cid, score] for cid, score, _ in ranked.items]
                             for name, ranked in signals.items()} for d, signals in by_depth.items()},
        "chunks": {str(cid): [p.path, p.symbol, kinds[cid], p.start_line, p.end_line, p.tokens,
                              p.text.count("\n") + 1]
                   for cid, p in pages.items()},
        "wholes": {str(cid): whole_row(p, holds) for cid, p in wholes.items()},
        "classes": {str(cid): whole_row(p, holds) for cid, p in classes.items()}}


def whole_row(page: Page, holds: dict[tuple[str, int, int], list[str]]) -> list:
    return [page.key, page.symbol, page.start_line, page.end_line, page.tokens, page.text.count("\n") + 1,
            holds.get((page.path, page.start_line, page.end_line), [])]


def held_symbols(engine: Engine, pages: list[Page]) -> dict[tuple[str, int, int], list[str]]:
    """(path, start, end) of each page -> the symbols of the chunks within its lines."""
    spans = sorted({(p.path, p.start_line, p.end_line) for p in pages})
    if not spans:
        return {}
    out: dict[tuple[str, int, int], list[str]] = {}
    for path, start, end, symbol in engine.store.cursor().execute(
            "SELECT DISTINCT s.path, s.start_line, s.end_line, c.qualified_name FROM "
            "(SELECT unnest(?::VARCHAR[]) AS path, unnest(?::INTEGER[]) AS start_line, "
            "unnest(?::INTEGER[]) AS end_line) s JOIN chunks c ON c.path = s.path "
            "AND c.start_line >= s.start_line AND c.end_line <= s.end_line AND c.qualified_name <> '' "
            "ORDER BY 1, 2, 3, 4", [[p for p, _, _ in spans], [a for _, a, _ in spans],
                                    [b for _, _, b in spans]]).fetchall():
        out.setdefault((path, start, end), []).append(symbol)
    return out


def evaluate(engine: Engine, instance: dict) -> dict:
    """Keeps the signals (as deep as each budget ranks them) and their chunks' pages;
    checks that the kept rankings make the pager's own working sets."""
    question = instance["query"]
    row = kept_signals(engine, instance)
    kept = Kept(row)
    differ = 0
    # the fusion's pager (ranker = "fusion"; bench/ranker.py measures the learned order),
    # with no relevance floor, as the kept rankings make it
    fusion = HeuristicPager(engine.store, engine.retriever, engine.pager.estimator, read=engine.pager.read)
    for budget in BUDGETS:
        started = time.perf_counter()
        live = fusion.prefetch(question, budget, floor=0.0)
        if budget == 8000:
            row["pager_ms"] = round((time.perf_counter() - started) * 1000, 1)
        differ += [p.key for p in live] != [p.key for p in kept.pager(budget, engine.retriever.weights)]
    row["kept_differs"] = differ  # budgets whose kept working set is not the live one
    if engine.pager.model is not None:  # and the learned pager's (ranker = "learned") at 8k
        live = engine.pager.prefetch(question, 8000, floor=0.0)
        kept_set = kept.learned(8000, engine.retriever.weights, engine.pager.model)
        row["learned_differs"] = int([p.key for p in live] != [p.key for p in kept_set])
    return row


PAGING = Bench(
    "paging-signals", lambda inst, engine: evaluate(engine, inst),
    lambda row: f"kept rankings differ from the live pager at {row['kept_differs']} budgets"
                + (", and from the learned one at 8k" if row.get("learned_differs") else ""),
    lambda row: "chunks" in row and "classes" in row)


def summary(results: list[dict], instances: dict[str, dict], w: dict[str, float]) -> dict[str, object]:
    """Shares of instances with their gold in the working set, under weights `w`; `edited`
    (the functions that the fix edits, bench/gold.py) over the instances that edit one."""
    found: dict[str, list[bool]] = {}
    model = Model.load(MODEL_FILE)  # the learned pager's (the default); `pager` is the fusion's
    for row in results:
        kept = Kept(row)
        inst = instances[row["id"]]
        for budget in BUDGETS:
            runs = [("pager", kept.pager(budget, w)), ("learned", kept.learned(budget, w, model))] + [
                (n, kept.alone(n, budget)) for n in SIGNALS]
            for name, pages in runs:
                for what, ok in kept.covered(pages, inst).items():
                    if ok is not None:
                        found.setdefault(f"{name}_{what}_{budget}", []).append(ok)
    out: dict[str, object] = {"instances": len(results), "weights": w,
                              "instances_with_edited_functions": sum(
                                  1 for r in results if instances[r["id"]]["edited_functions"]),
                              "kept_rankings_differ_from_live": sum(r["kept_differs"] for r in results),
                              "learned_kept_differs_from_live_8k": sum(r.get("learned_differs", 0) for r in results)}
    out.update({key: round(sum(oks) / len(oks), 4) for key, oks in found.items()})
    if results:
        out.update({f"pager_{k}": v for k, v in latency_summary([r["pager_ms"] for r in results]).items()})
    return out


def main() -> None:
    args = bench_arguments(__doc__ or "")
    results, missing, _ = run_instances(args, [PAGING])
    out = summary(results[PAGING.name], {i["id"]: i for i in selected(args)}, weights(Settings()))
    print(json.dumps({**out, "missing_repositories": missing}))


if __name__ == "__main__":
    main()
