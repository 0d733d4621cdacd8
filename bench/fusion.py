"""Fusion weights tuned offline on SWE-bench Lite. Prints one JSON object.

Reads the per-signal rankings that `bench/localization.py` kept for every instance
(`<cache>/localization-signals.jsonl`) and scores the reciprocal-rank fusion under a grid
of weights, without touching an index: the weights that `codevm` ships come from here.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from localization import accuracy, ranks  # noqa: E402

from codevm.memory.retrieval import FUSION_K, SIGNALS  # noqa: E402


def fused_items(items: dict[str, list], weights: dict[str, float], k: int) -> list:
    scores: dict[tuple, float] = {}
    rows: dict[tuple, list] = {}
    for name in SIGNALS:
        w = weights.get(name, 0.0)
        if w <= 0:
            continue
        for rank, item in enumerate(items.get(name, [])):
            key = (item[0], item[1], item[2], item[3])
            scores[key] = scores.get(key, 0.0) + w / (k + rank + 1)
            rows[key] = item
    return [[*key, s] for key, s in sorted(scores.items(), key=lambda kv: -kv[1])]


def score(rows: list[dict], data: dict[str, dict], weights: dict[str, float], k: int) -> dict:
    out = []
    for row in rows:
        gold = data[row["id"]]
        ranked = ranks(fused_items(row["items"], weights, k), gold["gold_files"], gold["gold_functions"])
        out.append({**ranked, "has_functions": row["has_functions"]})
    return accuracy(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "bench" / "swebench_lite.jsonl")
    args = parser.parse_args()
    data = {d["id"]: d for d in map(json.loads, args.data.read_text().splitlines()) if d}
    latest: dict[str, dict] = {}
    for line in (args.cache / "localization-signals.jsonl").read_text().splitlines():
        row = json.loads(line)
        latest[row["id"]] = row
    rows = list(latest.values())
    grid = [0.0, 0.25, 0.5, 1.0, 2.0]
    results = []
    for wl, wn, wg in itertools.product(grid, grid, grid):
        if wl == wn == wg == 0:
            continue
        for k in (10, 30, FUSION_K):
            weights = {"lexical": wl, "named": wn, "graph": wg}
            acc = score(rows, data, weights, k)
            # the objective: file Acc@5 and function Acc@10 together
            results.append((acc["file_acc@5"] + acc["function_acc@10"], weights, k, acc))
    results.sort(key=lambda r: -r[0])
    print(json.dumps({"instances": len(rows),
                      "best": [{"weights": w, "k": k, **acc} for _, w, k, acc in results[:8]]}))


if __name__ == "__main__":
    main()
