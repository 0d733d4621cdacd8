"""Features of a candidate chunk for a learned ranker: what the signals say of it, of its
file and of the chunk itself. The same function makes them for training (bench/ranker.py,
from the signals' rankings kept for mined pairs) and for ranking.

A candidate is any chunk that a signal ranks. Its features:
- per signal (lexical, named, graph, vector): its score over the signal's best, the
  reciprocal of its rank, whether the signal ranks it at all;
- the hand-weighted fusion's score over its best, and the reciprocal of its rank there;
- its file: the best fused score of the file over the top one, the file's rank among
  files, how many of the file's chunks are candidates, the file's summed lexical score;
- the chunk: kind, test or text file, size in tokens and lines (log), the length of its
  name and how deeply it is nested, how many candidates share its symbol (split parts).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from codevm.retrieval.fusion import SIGNALS, TEXT_KINDS, Ranked, fused_ranking
from codevm.retrieval.lexical import TEST_PATH

if TYPE_CHECKING:
    import numpy as np
else:
    from codevm.lazy import numpy as np

KINDS = ("function", "method", "class", "module", "window", "section")
DOC_PATH = re.compile(r"(^|/)(docs?|examples?)/|\.(md|rst|txt)$")


@dataclass
class ChunkInfo:
    path: str
    symbol: str
    kind: str
    tokens: int
    lines: int


def feature_names() -> list[str]:
    names = []
    for s in SIGNALS:
        names += [f"{s}_score", f"{s}_rrank", f"{s}_has"]
    names += ["fused_score", "fused_rrank", "file_best", "file_rrank", "file_chunks", "file_lexical",
              *[f"kind_{k}" for k in KINDS], "kind_other", "test_path", "doc_path", "log_tokens",
              "log_lines", "name_length", "name_depth", "same_symbol"]
    return names


def features(signals: dict[str, Ranked], chunks: dict[int, ChunkInfo],
             weights: dict[str, float], reasons: dict[int, str] | None = None) -> tuple[list[int], list[list[float]]]:
    """The candidates (every chunk a signal ranks that `chunks` describes) and a row of
    `feature_names()` for each, in the order of the hand-weighted fusion (whose reason for
    each goes into `reasons` when given)."""
    paths = {cid: info.path for cid, info in chunks.items()}
    text = {cid for cid, info in chunks.items() if info.kind in TEXT_KINDS}
    fused = [item for item in fused_ranking(signals, weights, text, paths) if item.chunk_id in chunks]
    if not fused:
        return [], []
    per_signal: dict[str, dict[int, tuple[float, int]]] = {}
    for name in SIGNALS:
        items = signals.get(name, Ranked([])).items
        top = max((item.score for item in items), default=1.0) or 1.0
        per_signal[name] = {item.chunk_id: (max(item.score, 0.0) / top, rank)
                            for rank, item in enumerate(items)}
    top_fused = fused[0].score or 1.0
    file_best: dict[str, float] = {}
    file_rank: dict[str, int] = {}
    file_count: dict[str, int] = defaultdict(int)
    file_lexical: dict[str, float] = defaultdict(float)
    symbol_count: dict[tuple[str, str], int] = defaultdict(int)
    for item in fused:
        info = chunks[item.chunk_id]
        if info.path not in file_best:
            file_best[info.path] = item.score / top_fused
            file_rank[info.path] = len(file_rank)
        file_count[info.path] += 1
        file_lexical[info.path] += per_signal["lexical"].get(item.chunk_id, (0.0, 0))[0]
        symbol_count[(info.path, info.symbol)] += 1
    ids, rows = [], []
    for rank, item in enumerate(fused):
        info = chunks[item.chunk_id]
        row: list[float] = []
        for name in SIGNALS:
            score, r = per_signal[name].get(item.chunk_id, (0.0, -1))
            row += [score, 1.0 / (1 + r) if r >= 0 else 0.0, 1.0 if r >= 0 else 0.0]
        last = info.symbol.rsplit(".", 1)[-1]
        row += [item.score / top_fused, 1.0 / (1 + rank), file_best[info.path], 1.0 / (1 + file_rank[info.path]),
                math.log1p(file_count[info.path]), file_lexical[info.path],
                *[1.0 if info.kind == k else 0.0 for k in KINDS], 0.0 if info.kind in KINDS else 1.0,
                1.0 if TEST_PATH.search(info.path) else 0.0, 1.0 if DOC_PATH.search(info.path) else 0.0,
                math.log1p(info.tokens), math.log1p(info.lines), float(len(last)),
                float(info.symbol.count(".")) if info.symbol else -1.0,
                float(symbol_count[(info.path, info.symbol)]) if info.symbol else 0.0]
        ids.append(item.chunk_id)
        rows.append(row)
        if reasons is not None:
            reasons[item.chunk_id] = item.reason
    return ids, rows


MODEL_FILE = Path(__file__).with_name("ranker_model.json")


class Model:
    """A tree ensemble (LightGBM's, exported by bench/ranker.py to plain JSON) evaluated
    with numpy: no LightGBM at run time. A row's score is the sum of its leaf in each tree."""

    def __init__(self, data: dict):
        if data.get("features") != feature_names():
            raise ValueError("the ranker model was trained on other features")
        self._trees = data["trees"]
        # numpy's arrays, made for the first score (then replaced in one assignment): a
        # command that ranks nothing (a no-change `codevm index`) does not import numpy
        self._arrays: tuple[np.ndarray, ...] | None = None

    def _build(self) -> tuple[np.ndarray, ...]:
        trees = self._trees
        # every tree padded to the longest, so that all are walked at once, a level a step
        width = max(len(t[0]) for t in trees)
        leaves = max(len(t[4]) for t in trees)
        features = np.zeros((len(trees), width), dtype=np.int64)
        thresholds = np.zeros((len(trees), width))
        lefts = np.zeros((len(trees), width), dtype=np.int64)
        rights = np.zeros((len(trees), width), dtype=np.int64)
        values = np.zeros((len(trees), leaves))
        for i, (feature, threshold, left, right, value) in enumerate(trees):
            n = len(feature)
            features[i, :n], thresholds[i, :n] = feature, threshold
            lefts[i, :n], rights[i, :n] = left, right
            values[i, :len(value)] = value
        self._arrays = (features, thresholds, lefts, rights, values)
        return self._arrays

    @classmethod
    def load(cls, path: Path) -> Model:
        return cls(json.loads(path.read_text()))

    def score(self, x: np.ndarray) -> np.ndarray:
        """Scores of the rows of `x` (candidates x features), higher is better."""
        if not len(x):
            return np.zeros(0)
        feature, threshold, lefts, rights, value = self._arrays or self._build()
        trees = np.arange(len(feature))[:, None]  # trees x 1
        rows = np.arange(len(x))[None, :]  # 1 x rows
        node = np.zeros((len(feature), len(x)), dtype=np.int64)  # >= 0: a split; < 0: leaf ~node
        active = node >= 0
        while active.any():
            at = np.where(active, node, 0)
            left = x[rows, feature[trees, at]] <= threshold[trees, at]
            node = np.where(active, np.where(left, lefts[trees, at], rights[trees, at]), node)
            active = node >= 0
        return value[trees, ~node].sum(axis=0)


def _flatten(root: dict) -> list[list]:
    """One tree of `dump_model()` as [feature, threshold, left, right, leaf values]."""
    feature: list[int] = []
    threshold: list[float] = []
    left: list[int] = []
    right: list[int] = []
    value: list[float] = []

    def walk(node: dict) -> int:
        if "leaf_value" in node:
            value.append(float(node["leaf_value"]))
            return ~(len(value) - 1)
        if node.get("decision_type", "<=") != "<=":
            raise ValueError(f"unsupported split {node.get('decision_type')}")
        index = len(feature)
        feature.append(int(node["split_feature"]))
        threshold.append(float(node["threshold"]))
        left.append(0)
        right.append(0)
        left[index] = walk(node["left_child"])
        right[index] = walk(node["right_child"])
        return index

    root_index = walk(root)
    if root_index < 0:  # a tree of one leaf
        return [[0], [float("inf")], [root_index], [root_index], value]
    return [feature, threshold, left, right, value]


def export(dump: dict) -> dict:
    """LightGBM's `dump_model()` as arrays per tree: split feature, threshold, left and
    right child (a leaf as ~its index), leaf values. Numerical `<=` splits only."""
    return {"features": feature_names(), "trees": [_flatten(info["tree_structure"]) for info in dump["tree_info"]]}
