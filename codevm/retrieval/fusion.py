"""Fusion: one ranking from several signals' rankings.

Fusion is a weighted sum of each signal's scores scaled to its best (CombSUM with max
normalisation): score(c) = sum_s w_s * score_s(c) / max score_s. Reciprocal-rank fusion
was measured too (bench/fusion.py): it throws away how far ahead a clear winner is, and
scored lower on SWE-bench Lite (file Acc@1 and function Acc@10 both). Then each file's
best chunk gains the file's evidence, a share of the scores of its next best chunks, so
that a file where several chunks match comes before one with a single hit as strong.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import NamedTuple

from codevm.config import Settings

SIGNALS = ("lexical", "named", "graph", "vector")
# chunks of files without a grammar (docs, prose, configuration, translations): their
# fused score is scaled by the weight "text", so code comes first when both match
TEXT_KINDS = ("window", "section")
SIGNAL_DEPTH = 200  # chunks each signal ranks
# a file's evidence: its 2nd..8th best fused scores, each worth 0.8 of the one before
EVIDENCE_CHUNKS = 8
EVIDENCE_DECAY = 0.8
# the vector signal counts each chunk by how far its cosine is above the one ranked here:
# raw cosines of a small model crowd into a narrow band that max-normalisation would
# leave almost flat. A fixed rank keeps scores the same however deep a search ranks.
FLOOR_RANK = 50


class Scored(NamedTuple):
    """One ranked chunk, in every ranking (a signal's, the fusion's): why it is there."""

    chunk_id: int
    score: float
    reason: str


@dataclass
class Ranked:
    """One signal's ranking, best first."""

    items: list[Scored]


def weights(settings: Settings) -> dict[str, float]:
    """The fusion's weights from the settings."""
    return {"lexical": settings.weight_lexical, "named": settings.weight_named,
            "graph": settings.weight_graph, "vector": settings.weight_vector,
            "text": settings.weight_text, "file": settings.weight_file}


def _best_first(items: list[Scored]) -> list[Scored]:
    # ties by chunk id: the same query ranks the same way every time
    return sorted(items, key=lambda r: (-r.score, r.chunk_id))


def fuse(signals: dict[str, Ranked], weights: dict[str, float],
         text: frozenset[int] | set[int] = frozenset()) -> list[Scored]:
    """Weighted sum of max-normalised scores, best first; the chunks in `text` (of
    TEXT_KINDS) count for `weights["text"]` of their sum."""
    scores: dict[int, float] = defaultdict(float)
    why: dict[int, tuple[float, str, str]] = {}
    # the most specific reason is told: what the question names, else the strongest signal
    for name, ranked in sorted(signals.items(), key=lambda s: s[0] != "named"):
        w = weights.get(name, 0.0)
        if w <= 0 or not ranked.items:
            continue
        items = ranked.items
        if name == "vector" and len(items) >= FLOOR_RANK:
            floor = items[FLOOR_RANK - 1].score
            items = [Scored(cid, score - floor, reason) for cid, score, reason in items[: FLOOR_RANK - 1]]
        top = max(item.score for item in items) or 1.0
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
    return _best_first([Scored(cid, s, why[cid][1]) for cid, s in scores.items()])


def with_file_evidence(fused: list[Scored], paths: dict[int, str], weight: float) -> list[Scored]:
    """A fused ranking where each file's best chunk gains `weight` x the file's evidence:
    the decayed sum of the scores of its 2nd..EVIDENCE_CHUNKS-th best chunks. A file where
    many chunks match rises above one with a single hit as strong; the other chunks keep
    their own scores (boosting them too crowds a working set with one file)."""
    if weight <= 0 or not fused:
        return fused
    scores: dict[str, list[float]] = defaultdict(list)
    for cid, score, _ in fused:  # best first
        scores[paths.get(cid) or f"#{cid}"].append(score)
    out = []
    for cid, score, why in fused:
        ranked = scores.pop(paths.get(cid) or f"#{cid}", None)
        if ranked:  # the file's best chunk (the first of the file met)
            score += weight * sum(s * EVIDENCE_DECAY ** i for i, s in enumerate(ranked[1:EVIDENCE_CHUNKS]))
        out.append(Scored(cid, score, why))
    return _best_first(out)


def fused_ranking(signals: dict[str, Ranked], weights: dict[str, float], text: set[int] | frozenset[int],
                  paths: dict[int, str]) -> list[Scored]:
    """What search ranks: the signals fused, text chunks scaled, files' evidence added."""
    return with_file_evidence(fuse(signals, weights, text), paths, weights.get("file", 0.0))
